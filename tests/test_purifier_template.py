"""The shipped purifier (trained on dlib's 150 px chips) serving ArcFace 112 px crops: `template=` resamples
to the face scale it was trained on and adds back only its change; `puface purify --template auto` picks
the layout by size and warns for sizes that match neither."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from puface.cli import main
from puface.io.images import read_image, write_image
from puface.models.layout import layout_warp
from puface.purifier import Purifier
from puface.purifier.model import template_scale
from puface.utils.images import image_to_tensor, tensor_to_image
from puface.utils.metrics import psnr


@pytest.fixture(scope="module")
def purifier():
    return Purifier.load()


@pytest.fixture(scope="module")
def crops112(johns_images):
    """8 johns chips resampled into the ArcFace 112 layout (the strip above the dlib chip is black)."""
    x = johns_images[2][::7][:8]
    theta = layout_warp("arcface112", "dlib150")  # the 112 frame's grid onto the dlib chip
    grid = F.affine_grid(theta.expand(len(x), 2, 3), [len(x), 3, 112, 112], align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.stack([image_to_tensor(tensor_to_image(v)) for v in y])  # 8-bit, as on disk


def test_template_scale_and_native_layout(purifier, crops112):
    assert template_scale("arcface112") == pytest.approx(1.494, abs=2e-3)
    assert template_scale("dlib150") == pytest.approx(1.0)
    assert purifier.template == "dlib150"
    x = crops112[:2]
    assert torch.equal(purifier.purify(x, template="dlib150"), purifier.purify(x))


def test_arcface_crops_keep_more_detail_when_the_layout_is_known(purifier, crops112):
    plain = psnr(purifier.purify(crops112), crops112).mean().item()
    told = psnr(purifier.purify(crops112, template="arcface112"), crops112).mean().item()
    assert told > plain + 2.0, (plain, told)  # LFW ArcFace crops: 35.9 -> 42.4 dB (docs/RESULTS.md)


def test_purify_cli_picks_the_template_by_size(purifier, crops112, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, c in enumerate(crops112[:3]):
        write_image(src / f"c{i}.png", tensor_to_image(c))
    write_image(src / "odd.png", tensor_to_image(F.interpolate(crops112[:1], size=(100, 100))[0]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["purify", str(src), str(tmp_path / "out"), "--no-progress", "--batch-size", "8"]) == 0
    assert "100x100 images match neither face template" in err.getvalue()
    want = purifier.purify(crops112[:3], template="arcface112")
    for i in range(3):
        assert np.array_equal(read_image(tmp_path / "out" / f"c{i}.png"), tensor_to_image(want[i]))


def test_purify_batch_is_the_cli_batch_function_without_ray(purifier, crops112, johns_images):
    """`puface.PurifyBatch` (what a Ray Data pipeline maps) on a dict batch: same pixels as `purify`, other
    columns untouched, mixed sizes as a list."""
    import puface

    fn = puface.PurifyBatch(purifier, device="cpu")
    chips = np.stack([tensor_to_image(v) for v in johns_images[2][:3]])
    out = fn({"image": chips, "label": np.array([1, 2, 3])})
    assert out["label"].tolist() == [1, 2, 3] and out["image"].dtype == np.uint8 and out["image"].shape == chips.shape
    want = purifier.purify(johns_images[2][:3])
    assert all(np.array_equal(out["image"][i], tensor_to_image(want[i])) for i in range(3))
    mixed = fn({"image": [chips[0], tensor_to_image(crops112[0])]})["image"]
    assert mixed[1].shape == (112, 112, 3)
    assert np.array_equal(mixed[1], tensor_to_image(purifier.purify(crops112[:1], template="arcface112")[0]))
