"""RED-Net purifier architecture: shapes, global residual, clamp, skips, FLOPs, config checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from puface.utils.errors import ConfigError
from puface.purifier import Purifier, RedNet, RedNetConfig
from puface.purifier.rednet import conv_flops, count_parameters
from purifier_support import visible_purifier


@pytest.mark.parametrize("size", [(150, 150), (112, 112), (97, 131), (8, 8), (1, 5)])
@pytest.mark.parametrize("downsample", [0, 1, 2])
def test_any_size_keeps_shape(size, downsample):
    net = RedNet(RedNetConfig(channels=8, depth=4, downsample=downsample))
    x = torch.rand(2, 3, *size)
    assert net(x).shape == x.shape


def test_untrained_is_identity_and_output_is_clamped():
    torch.manual_seed(0)
    net = RedNet(RedNetConfig(channels=8, depth=4, downsample=1))
    x = torch.rand(3, 3, 40, 40)
    assert torch.equal(net(x), x)  # zero-initialised last layer: correction 0
    # push the last layer so the correction is huge: output must stay in [0, 1] and be x + r elsewhere
    with torch.no_grad():
        net.decoder[0].bias.fill_(0.7)
    y = net(x)
    assert y.min() >= 0 and y.max() <= 1
    assert torch.allclose(y, (x + 0.7).clamp(0, 1), atol=1e-6)
    assert (y == 1).float().mean() > 0.5  # many pixels were clipped


def test_global_residual_adds_the_correction():
    torch.manual_seed(1)
    net = RedNet(RedNetConfig(channels=8, depth=4, downsample=1))
    for p in net.parameters():
        nn.init.normal_(p, std=0.05)
    x = torch.rand(2, 3, 32, 32) * 0.5 + 0.25
    r = net.correction(x)
    assert r.abs().max() > 0
    assert torch.allclose(net(x), (x + r).clamp(0, 1), atol=1e-6)


def test_skip_connections_every_two_layers_change_the_output():
    torch.manual_seed(2)
    cfg = RedNetConfig(channels=8, depth=6, downsample=1, skip_every=2)
    with_skips = RedNet(cfg)
    for p in with_skips.parameters():
        nn.init.normal_(p, std=0.1)
    assert [i for i in range(cfg.depth) if with_skips._has_skip(i)] == [2, 4]
    without = RedNet(RedNetConfig(channels=8, depth=6, downsample=1, skip_every=0))
    without.load_state_dict(with_skips.state_dict())  # same weights, no skips
    x = torch.rand(1, 3, 24, 24)
    assert not torch.allclose(with_skips.correction(x), without.correction(x))


def test_downsampling_layers_halve_resolution():
    net = RedNet(RedNetConfig(channels=4, depth=5, downsample=2))
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[-2:]))) for m in net.encoder]
    net(torch.rand(1, 3, 150, 150))
    for h in hooks:
        h.remove()
    assert shapes == [(76, 76), (38, 38), (38, 38), (38, 38), (38, 38)]  # 150 padded to 152


def test_conv_flops_match_hand_count():
    cfg = RedNetConfig(channels=16, depth=3, downsample=1)
    net = RedNet(cfg)
    # padded 150 -> 150 (even); enc0 4x4/2: 75x75 out; enc1, enc2 3x3 at 75x75
    enc = 2 * 75 * 75 * 16 * (3 * 16) + 2 * 2 * 75 * 75 * 16 * (16 * 9)
    # decoder mirrors: dec2, dec1 3x3 at 75x75 (16 -> 16); dec0 4x4/2 transposed 16 -> 3, input 75x75
    dec = 2 * 2 * 75 * 75 * 16 * 16 * 9 + 2 * 75 * 75 * 16 * 3 * 16
    assert conv_flops(net, 150, 150) == enc + dec


def test_default_config_is_cpu_sized():
    p = Purifier()
    gflop = p.flops(150, 150) / 1e9
    assert 0.5 < gflop < 4.0, gflop
    assert count_parameters(p) < 2_000_000  # a few MB as float32


@pytest.mark.parametrize("bad", [dict(channels=0), dict(depth=0), dict(depth=2, downsample=3), dict(kernel_size=4),
                                 dict(skip_every=-1)])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        RedNetConfig(**bad)
    with pytest.raises(ConfigError, match="unknown model option"):
        RedNetConfig.from_dict({"chanels": 3})


def test_gradients_reach_every_layer():
    net = RedNet(RedNetConfig(channels=8, depth=4, downsample=1))
    x = torch.rand(2, 3, 32, 32) * 0.8 + 0.1
    # zero last layer: only it gets a gradient at first (the others are multiplied by its zero weights)
    net(x).sub(0.5).pow(2).mean().backward()
    assert net.decoder[0].weight.grad.abs().sum() > 0


def test_purify_batches_match_forward_and_accept_uint8():
    p = visible_purifier(seed=3, std=0.05)
    x = torch.rand(5, 3, 30, 34)
    direct = p(x).detach()
    assert torch.allclose(p.purify(x, batch_size=2), direct, atol=1e-5)
    assert torch.allclose(p.purify(x, batch_size=2, channels_last=False), direct, atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    assert p.purify(u8).shape == x.shape
    with pytest.raises(ValueError, match="RGB"):
        p.purify(torch.rand(2, 1, 8, 8))


def test_purify_and_a_folder_job_leave_the_callers_purifier_as_it_was(tmp_path):
    """`purify` and `purify_folder` run the caller's purifier without changing it: its weights' memory layout (purify
    left them channels_last), training mode and device (a cuda test: purify(device="cuda") left it on the GPU)."""
    import numpy as np
    from PIL import Image

    p = visible_purifier(seed=3, std=0.05)
    p.train()
    before = {k: (v.stride(), v.device) for k, v in p.state_dict().items()}
    x = torch.rand(3, 3, 30, 34)
    assert torch.allclose(p.purify(x), p.purify(x, channels_last=False), atol=1e-5)
    assert p.training and {k: (v.stride(), v.device) for k, v in p.state_dict().items()} == before
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((30, 34, 3), 120, np.uint8)).save(src / "a.png")
    assert p.purify_folder(src, tmp_path / "out", device="cpu", progress=False).written == 1
    assert p.training and {k: (v.stride(), v.device) for k, v in p.state_dict().items()} == before


@pytest.mark.cuda
def test_purify_on_the_gpu_leaves_the_purifier_on_the_cpu():
    p = visible_purifier(seed=3, std=0.05)
    x = torch.rand(3, 3, 30, 34)
    out = p.purify(x, device="cuda")
    assert out.device.type == "cpu" and next(p.parameters()).device.type == "cpu"
    torch.testing.assert_close(out, p.purify(x), atol=1e-5, rtol=0)


def test_purify_takes_float64_as_float32_at_every_step():
    """float64 images come out float32 (the network's dtype) whatever the step: step 1.5 gave float64."""
    p = visible_purifier(seed=3, std=0.05)
    x = torch.rand(3, 3, 30, 34)
    for step in (1.0, 1.5):
        out = p.purify(x.double(), step=step)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, p.purify(x, step=step), atol=0, rtol=0)


def test_job_step_defaults_to_the_shipped_purifiers_step(tmp_path):
    """A job's step: the one given (checked), else 1.5 for the shipped dlib150 purifier, 1 for the shipped ArcFace
    112 one and for any checkpoint file (even a copy of the shipped weights: the step follows the name loaded)."""
    from puface.purifier.model import SHIPPED_STEPS, job_step
    from puface.utils.errors import PufaceError

    shipped = Purifier.load()
    assert shipped.shipped_as == "default" and job_step(shipped) == SHIPPED_STEPS["default"] == 1.5
    assert job_step(Purifier.load("arcface112")) == 1.0
    copy = Purifier.load(shipped.save(tmp_path / "copy.safetensors"))
    assert copy.shipped_as is None and job_step(copy) == 1.0
    assert job_step(shipped, 1) == 1.0 and job_step(copy, "2") == 2.0
    with pytest.raises(PufaceError, match="step"):
        job_step(shipped, 0)


def test_large_photos_are_purified_in_tiles_with_the_whole_photos_result(monkeypatch):
    """A photo larger than TILE on a side goes through the network in overlapping tiles, never whole (memory bounded
    whatever its size), and the tiles give the whole photo's result: the margin exceeds the receptive field."""
    import torch.nn.functional as F

    from puface.purifier import model as model_mod

    torch.manual_seed(0)
    p = Purifier.load()
    base = torch.rand(1, 3, 40, 36)
    photo = F.interpolate(base, size=(320, 288), mode="bicubic", align_corners=False).clamp(0, 1)  # smooth, photo-like
    whole = p.purify(photo, step=1.5)  # 320 x 288 is under TILE: one pass
    seen: list[tuple[int, int]] = []
    hook = p.net.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    monkeypatch.setattr(model_mod, "TILE", 96)
    monkeypatch.setattr(model_mod, "TILE_MARGIN", 64)
    try:
        parts = p.purify(photo, step=1.5)
    finally:
        hook.remove()
    assert len(seen) == 12 and max(h for h, _ in seen) <= 96 + 2 * 64 and max(w for _, w in seen) <= 96 + 2 * 64
    assert parts.shape == photo.shape and parts.dtype == torch.float32
    assert (whole - photo).abs().max() > 0.01  # the purifier changes it, so equality below means something
    assert torch.allclose(parts, whole, atol=1e-4)


@pytest.mark.parametrize("width", [20, 2000])  # under and over TILE: the tiled path returned None (mypy, return-value)
def test_an_image_with_an_empty_side_is_refused_with_its_shape(width):
    """purify takes any image of at least 1 x 1 px; one with no rows is a ValueError naming its shape, whatever its
    width (a wider one than TILE gave AttributeError 'NoneType' has no attribute 'to', a narrower one a conv error)."""
    from puface.purifier.model import tiled

    with pytest.raises(ValueError, match=rf"\(1, 3, 0, {width}\)"):
        Purifier().purify(torch.zeros(1, 3, 0, width))
    empty = torch.zeros(1, 3, 0, width)
    assert tiled(lambda t: t + 1, empty, tile=8).shape == empty.shape  # nothing to tile: fn's own result


def test_a_missing_relative_checkpoint_is_named_when_the_current_folder_was_deleted(tmp_path):
    """`Purifier.load("nope.pt")` names the current folder a relative path is read from, through `Path.cwd()`, which
    raises FileNotFoundError where that folder was deleted: the message failed as a traceback. It now says "(deleted)"
    (`utils.paths.current_folder`), and so do the other messages that name it (a data root, a folder attack's root)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import puface

    code = (
        "import os, sys\n"
        "from puface.utils.errors import PufaceError\n"
        "from puface.purifier import Purifier\n"
        "from puface.data.datasets import resolve_data_root\n"
        "from puface.attacks.folder import FolderCloaks\n"
        "os.chdir(sys.argv[1]); os.rmdir(sys.argv[1])  # after the imports: torch's MKL does not load without it\n"
        "for call in (lambda: Purifier.load('nope.pt'), lambda: resolve_data_root('no-such-faces'),\n"
        "             lambda: FolderCloaks('cloaked')):\n"
        "    try:\n"
        "        call()\n"
        "    except PufaceError as e:\n"
        "        print(e)\n"
    )
    gone = tmp_path / "gone"
    gone.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(puface.__file__).parents[1]), "PUFACE_DATA": str(tmp_path / "d"),
           "PUFACE_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(gone)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    said = run.stdout.splitlines()
    assert len(said) == 3, said
    assert said[0].startswith("nope.pt: purifier checkpoint not found;")
    assert said[0].endswith("; a relative path is read from the current folder (deleted)")
    assert said[1].startswith("no-such-faces: data folder not found: not a folder under the current folder (deleted),")
    assert said[2] == "cloaked: folder of cloaked images not found under the current folder (deleted), which a " \
                      "relative path is read from (not the config file's folder)"
