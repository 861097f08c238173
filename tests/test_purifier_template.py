"""ArcFace 112 px crops: the dlib150 purifier serves them with `template=` (resampled to the face scale it was
trained on, only its change added back); `puface purify --template auto` picks the layout by size, gives
112 px crops to the shipped purifier trained on them (`arcface112`) and warns for sizes that match neither."""

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
from puface.purifier.model import default_weights_path, template_scale
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


def test_purify_cli_picks_the_template_by_size(purifier, crops112, johns_images, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, c in enumerate(crops112[:3]):
        write_image(src / f"c{i}.png", tensor_to_image(c))
    write_image(src / "chip.png", tensor_to_image(johns_images[2][0]))
    write_image(src / "odd.png", tensor_to_image(F.interpolate(crops112[:1], size=(100, 100))[0]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["purify", str(src), str(tmp_path / "out"), "--no-progress", "--batch-size", "8"]) == 0
        # a purifier file serves the other layout by resampling to its own face scale
        assert (
            main(["purify", str(src), str(tmp_path / "v6"), "--no-progress", "--weights", str(default_weights_path())])
            == 0
        )
    assert "100x100 images match neither face template" in err.getvalue()
    assert "or --align if they are photos rather than face chips" in err.getvalue()  # what to do with photos
    by_112 = Purifier.load("arcface112").purify(crops112[:3])  # the shipped purifier trained on 112 px crops
    told = purifier.purify(crops112[:3], template="arcface112")
    for i in range(3):
        assert np.array_equal(read_image(tmp_path / "out" / f"c{i}.png"), tensor_to_image(by_112[i]))
        assert np.array_equal(read_image(tmp_path / "v6" / f"c{i}.png"), tensor_to_image(told[i]))
    # 150 px chips: the dlib150 one either way, 1.5 times its change by default when loaded as the shipped
    # purifier, its plain output as a --weights file (`job_step`)
    chip = tensor_to_image(purifier.purify(johns_images[2][:1], step=1.5)[0])
    assert np.array_equal(read_image(tmp_path / "out" / "chip.png"), chip)
    assert np.array_equal(
        read_image(tmp_path / "v6" / "chip.png"), tensor_to_image(purifier.purify(johns_images[2][:1])[0])
    )


def test_the_arcface112_purifier_ships_and_loads(purifier):
    p = Purifier.load("arcface112")
    assert (p.template, p.net_template) == ("arcface112", "dlib150")  # fine-tuned from v6 at v6's face scale
    assert set(Purifier.load_layouts()) == {"dlib150", "arcface112"}
    assert list(Purifier.load_layouts(default_weights_path())) == ["dlib150"]
    x = torch.rand(1, 3, 112, 112)
    y = p.purify(x)
    assert y.shape == x.shape and not torch.equal(y, x)
    assert not torch.equal(y, purifier.purify(x, template="arcface112"))  # its own weights, not v6's
    # trained on the same identities as the default one: evaluations keep the same unseen people
    assert p.heldout_identities == purifier.heldout_identities and p.seen_identities == purifier.seen_identities


def test_purify_batch_is_the_cli_batch_function_without_ray(purifier, crops112, johns_images):
    """`puface.PurifyBatch` (what a Ray Data pipeline maps) on a dict batch: same pixels as `purify` at `puface
    purify`'s default step (1.5 for the shipped dlib150 purifier, 1 for the ArcFace 112 one), other columns
    untouched, mixed sizes as a list."""
    import puface
    from puface.purifier.model import job_step

    fn = puface.PurifyBatch(purifier, device="cpu")
    chips = np.stack([tensor_to_image(v) for v in johns_images[2][:3]])
    out = fn({"image": chips, "label": np.array([1, 2, 3])})
    assert out["label"].tolist() == [1, 2, 3] and out["image"].dtype == np.uint8 and out["image"].shape == chips.shape
    s = job_step(purifier)
    want = purifier.purify(johns_images[2][:3], step=s)
    assert all(np.array_equal(out["image"][i], tensor_to_image(want[i])) for i in range(3))
    mixed = fn({"image": [chips[0], tensor_to_image(crops112[0])]})["image"]
    assert mixed[1].shape == (112, 112, 3)
    assert np.array_equal(mixed[1], tensor_to_image(purifier.purify(crops112[:1], template="arcface112", step=s)[0]))
    shipped = puface.PurifyBatch(device="cpu")({"image": [chips[0], tensor_to_image(crops112[0])]})["image"]
    assert np.array_equal(shipped[0], out["image"][0])
    assert np.array_equal(shipped[1], tensor_to_image(Purifier.load("arcface112").purify(crops112[:1])[0]))


def test_purify_report_writes_arcface_crops_as_purify_does(crops112, tmp_path):
    """`puface purify --report` on 112 px ArcFace crops: the written images are `puface purify`'s (the shipped
    purifier trained on 112 px crops), not the detector's dlib-chip purification."""
    src = tmp_path / "in" / "someone"
    src.mkdir(parents=True)
    for i, c in enumerate(crops112[:2]):
        write_image(src / f"c{i}.png", tensor_to_image(c))
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert main(["purify", str(tmp_path / "in"), str(tmp_path / "plain"), "--no-progress"]) == 0
        assert (
            main(
                ["purify", str(tmp_path / "in"), str(tmp_path / "rep"), "--report", "--no-progress", "--device", "cpu"]
            )
            == 0
        )
    want = Purifier.load("arcface112").purify(crops112[:2])
    for i in range(2):
        got = read_image(tmp_path / "rep" / "someone" / f"c{i}.png")
        assert np.array_equal(got, read_image(tmp_path / "plain" / "someone" / f"c{i}.png"))
        assert np.array_equal(got, tensor_to_image(want[i]))
    assert (tmp_path / "rep" / "detection.csv").is_file()



def test_purify_of_a_resampled_layout_stays_in_the_unit_range(purifier, crops112):
    """`load_purifier("arcface112").purify(crops)` (the shipped 112 px purifier, whose network runs at the dlib150
    face scale) and the dlib150 purifier's `purify(crops, template="arcface112")` returned values outside [0, 1]
    (the change resized back from the network's scale overshoots: about -0.02..1.02 on these crops), though `purify`
    returns images in [0, 1]. Now clamped, as the files `puface purify` writes and the defense's output already
    were; the differentiable forward pass (an attacker's) is left unclamped, and step 1.5 was clamped already."""
    shipped112 = Purifier.load("arcface112")
    for y in (shipped112.purify(crops112), purifier.purify(crops112, template="arcface112")):
        assert y.shape == crops112.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with torch.no_grad():
        raw = shipped112.forward_template(crops112)
    assert float(raw.min()) < 0.0 or float(raw.max()) > 1.0  # these crops do overshoot
    y = shipped112.purify(crops112, channels_last=False)  # the same values, clamped
    assert torch.allclose(y, raw.clamp(0, 1), atol=1e-6)
    y15 = shipped112.purify(crops112, channels_last=False, step=1.5)  # as before the fix
    assert torch.allclose(y15, (crops112 + 1.5 * (raw - crops112)).clamp(0, 1), atol=1e-6)
