"""Alignment against the shared LFW data (skipped where ../shared/data is absent, e.g. in CI on a
clean clone): our chips vs the shared dlib chips, and paste-back on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")

from test_align_support import shared_data_dir  # noqa: E402

DATA = shared_data_dir()
pytestmark = pytest.mark.skipif(DATA is None, reason="../shared/data (LFW photos and chips) not present")


def _sample(n: int, seed: int = 0):
    photos = sorted((DATA / "lfw").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    return [photos[i] for i in sorted(rng.choice(len(photos), size=min(n, len(photos)), replace=False))]


def test_chips_match_the_shared_dlib_chips():
    """Same recipe as the shared chips (HOG upsampled once, CNN fallback, face closest to the
    centre, get_face_chip 150/0.25): the only difference left is their JPEG q95 encoding."""
    from puface.align import FaceAligner, FaceDetector

    al = FaceAligner(150, FaceDetector("hog+cnn", cnn_upsample=1), pick="center", min_face=0)
    diffs = []
    for p in _sample(40):
        ref = np.asarray(Image.open(DATA / "lfw-chips150" / p.parent.name / p.name).convert("RGB"), np.float64)
        pf = al.align(np.asarray(Image.open(p).convert("RGB")))
        assert pf.faces, f"no face in {p}"
        diffs.append(np.abs(pf.faces[0].chip - ref).mean())
    assert max(diffs) < 2.0, diffs  # JPEG q95 noise is about 1 grey level
    assert np.median(diffs) < 1.2


def test_paste_back_on_real_photos_touches_only_the_face_and_survives_realignment():
    from puface.align import FaceAligner, FaceDetector, extract_chip, feather_mask, paste_back
    from puface.align.geometry import apply_affine

    al = FaceAligner(150, FaceDetector("hog"), pick="center")
    inner = feather_mask(150, 8) == 1
    yy, xx = np.mgrid[0:150, 0:150]
    change = (10 * np.sin(xx / 5.0 + yy / 7.0))[..., None]
    for p in _sample(8, seed=1):
        img = np.asarray(Image.open(p).convert("RGB"))
        f = al.align(img).faces[0]
        cout = np.clip(f.chip + change, 0, 255)
        out = paste_back(img, [(f.transform, f.chip, cout)])
        assert out.shape == img.shape
        h, w = img.shape[:2]
        gy, gx = np.mgrid[0:h, 0:w].astype(float)
        pc = apply_affine(f.transform.image_to_chip, np.stack([gx.ravel(), gy.ravel()], 1)).reshape(h, w, 2)
        inside = (pc[..., 0] > 0) & (pc[..., 0] < 149) & (pc[..., 1] > 0) & (pc[..., 1] < 149)
        assert not ((out != img).any(-1) & ~inside).any()
        got = extract_chip(out, f.transform).astype(float) - f.chip
        want = (cout - f.chip)[inner]
        corr = (got[inner] * want).sum() / np.sqrt((got[inner] ** 2).sum() * (want**2).sum())
        assert corr > 0.9, (p, corr)
