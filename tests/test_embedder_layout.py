"""Face-layout warp inside FaceEmbedder: SFace gets dlib chips resampled into its ArcFace layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from puface.align.geometry import arcface_template, dlib_template
from puface.models import create_embedder


@pytest.fixture(scope="module")
def sface():
    return create_embedder("sface")


def _dots(points: np.ndarray, size: int, radius: float = 2.0) -> torch.Tensor:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size), np.float32)
    for x, y in points:
        img = np.maximum(img, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * radius**2)))
    return torch.from_numpy(img)[None, None].repeat(1, 3, 1, 1)


def _peak(img: torch.Tensor, near: np.ndarray, win: int = 6) -> np.ndarray:
    a = img[0, 0].numpy()
    x0, y0 = int(round(near[0])), int(round(near[1]))
    ys, xs = np.mgrid[y0 - win : y0 + win + 1, x0 - win : x0 + win + 1]
    w = a[ys, xs]
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


@pytest.mark.parametrize("size", [150, 300])
def test_dlib_landmarks_land_on_the_arcface_template(sface, size):
    src = dlib_template(150, 0.25).points * (size / 150)
    dst = arcface_template(112).points
    warped = sface._warp(_dots(src, size, radius=2.0 * size / 150))
    assert warped.shape == (1, 3, 112, 112)
    for p in dst:
        assert np.abs(_peak(warped, p) - p).max() < 1.5, (p, _peak(warped, p))


def test_warp_is_differentiable_and_arcface_layout_is_plain_resize(johns_images):
    _, _, imgs = johns_images
    emb = create_embedder("sface")
    x = imgs[:2].clone().requires_grad_(True)
    emb(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    plain = create_embedder("sface", input_layout="arcface112")
    assert plain.input_warp is None
    x112 = F.interpolate(imgs[:2], size=(112, 112), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(plain(imgs[:2]), plain(x112), atol=1e-5)
    # the warp changes what the network sees, so the embeddings differ from the plain resize
    assert (emb(imgs[:2]) * plain(imgs[:2])).sum(1).max() < 0.99
