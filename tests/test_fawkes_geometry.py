"""Fawkes v1.0.2's geometry: the budget measured on the padded 112 px square, the cloak upsampled back."""

from __future__ import annotations

import pytest
import torch

from puface.attacks.fawkes import MODES, Fawkes
from puface.attacks.fawkes_geometry import SquareView, make_view
from puface.utils.metrics import dssim
from puface.utils.errors import ConfigError

from test_fawkes import tiny_embedder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chips(small_chips):
    """4 johns chips at 64 px (fast), float [0, 1]."""
    return small_chips(step=13, count=4, size=64)


def test_square_view_pads_with_the_mean_colour_and_maps_back_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 30, generator=g)
    view = SquareView(x, size=28, margin=30)
    assert view.side == 70 and (view.top, view.left) == (15, 20)
    work = view.to_work(x)
    assert work.shape == (2, 3, 28, 28)
    # the corner of the square is pure border: the image's per-channel mean colour
    assert torch.allclose(work[:, :, 0, 0], x.mean(dim=(2, 3)), atol=1e-5)
    # no cloak -> the chip itself; a constant cloak -> the chip shifted by it (inside [0, 1])
    assert torch.equal(view.apply(torch.zeros_like(work)), x)
    mid = torch.full((1, 3, 40, 30), 0.5)
    shifted = SquareView(mid, size=28).apply(torch.full((1, 3, 28, 28), 0.05))
    assert torch.allclose(shifted, torch.full_like(mid, 0.55), atol=1e-5)
    assert make_view("chip", x).to_work(x) is x
    with pytest.raises(ConfigError, match="unknown geometry"):
        make_view("square224", x)


def test_square112_keeps_the_budget_where_fawkes_measures_it(chips):
    emb = tiny_embedder()
    th = MODES["mid"].th
    res = Fawkes("mid", [emb], geometry="square112", save_last_on_failed=False, device="cpu").run(
        chips, quantize_output=True
    )
    assert res.images.shape == chips.shape  # the saved image is the chip, not the 112 px square
    work = res.stats["dssim_work"]
    assert (work <= 1.1 * th + 1e-6).all() and work.mean() > 0.5 * th, work
    # re-measured on the saved 8-bit images through the same view: still inside the budget
    view = SquareView(chips)
    assert (dssim(view.to_work(res.images), view.to_work(chips)) <= 1.1 * th + 1e-6).all()
    # the same th on the chip at native size is a tighter budget: the chip moves more here
    native = Fawkes("mid", [emb], save_last_on_failed=False, device="cpu").run(chips, quantize_output=True)
    assert "dssim_work" not in native.stats
    assert (native.stats["dssim"] <= 1.1 * th + 1e-6).all()
    assert res.stats["dssim"].mean() > native.stats["dssim"].mean()
    assert res.stats["shift_tiny"].mean() > 0.5 * native.stats["shift_tiny"].mean()


def test_square_view_matches_fawkes_pil_pipeline(johns_images):
    """Fawkes v1.0.2: square of side max(h, w) + 30 filled with the mean colour, PIL bicubic resize to 112."""
    import numpy as np
    from PIL import Image

    x = johns_images[2][:2]
    assert x.shape[-2:] == (150, 150)  # a downsampling, as on real chips
    ours = SquareView(x).to_work(x)
    for i in range(len(x)):
        img = x[i].permute(1, 2, 0).numpy() * 255
        side = max(img.shape[:2]) + 30
        base = np.ones((side, side, 3)) * img.mean(axis=(0, 1))
        top, left = (side - img.shape[0]) // 2, (side - img.shape[1]) // 2
        base[top : top + img.shape[0], left : left + img.shape[1]] = img
        pil = Image.fromarray(base.round().astype(np.uint8)).resize((112, 112), Image.BICUBIC)
        ref = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255).permute(2, 0, 1)
        diff = (ours[i] - ref).abs()
        assert diff.mean() < 1.0 / 255 and diff.max() < 6 / 255, (float(diff.mean() * 255), float(diff.max() * 255))
