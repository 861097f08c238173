"""Fawkes: budget, per-pixel cap, reproducibility, the v1.0 rules, targeted mode, real protection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from puface.attacks import create_attack, list_attacks
from puface.attacks.fawkes import MODES, Fawkes, KerasAdadelta, _adapt_const_diff
from puface.attacks.targets import TargetPool
from puface.utils.errors import ConfigError
from puface.models.base import FaceEmbedder, InputNormalization


# many small tensor ops: one torch thread (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_embedder(seed: int = 0, name: str = "tiny") -> FaceEmbedder:
    """A seeded random conv net as a stand-in face model (fast, deterministic)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 32),
    )  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():  # He-style weights, zero biases: the output follows the input
            p.copy_(
                torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5 if p.ndim > 1 else torch.zeros_like(p)
            )
    return FaceEmbedder(net, name=name, input_size=(48, 48), embedding_dim=32, normalization=InputNormalization())


@pytest.fixture(scope="module")
def faces(small_chips):
    """8 johns chips downsized to 48x48 (fast), float [0, 1]."""
    return small_chips(step=7, count=8)


def test_registry_and_modes_are_v1_0_2():
    assert {"fawkes", "lowkey"} <= set(list_attacks())
    assert (MODES["low"].th, MODES["low"].steps, MODES["low"].lr) == (0.004, 40, 25.0)
    assert (MODES["mid"].th, MODES["mid"].steps, MODES["mid"].lr) == (0.012, 75, 20.0)
    assert (MODES["high"].th, MODES["high"].steps, MODES["high"].lr) == (0.017, 150, 15.0)
    s = MODES["high"]
    assert (s.const, s.max_change, s.rho, s.eps, s.const_diff_bound) == (1e6, 15.0, 0.95, 1e-7, 129.0)


def test_keras_adadelta_matches_tensorflow_update_and_torch():
    torch.manual_seed(0)
    p0 = torch.randn(50, dtype=torch.float64)
    grads = [torch.randn(50, dtype=torch.float64) for _ in range(6)]
    ours = p0.clone()
    opt = KerasAdadelta(ours, lr=15.0, rho=0.95, eps=1e-7)
    # TensorFlow's ApplyAdadelta kernel, written out in numpy
    p, ag, au = p0.numpy().copy(), np.zeros(50), np.zeros(50)
    ref = p0.clone().requires_grad_(True)
    topt = torch.optim.Adadelta([ref], lr=15.0, rho=0.95, eps=1e-7)
    for g in grads:
        opt.step(ours, g)
        gn = g.numpy()
        ag = 0.95 * ag + 0.05 * gn**2
        u = np.sqrt(au + 1e-7) / np.sqrt(ag + 1e-7) * gn
        p = p - 15.0 * u
        au = 0.95 * au + 0.05 * u**2
        ref.grad = g.clone()
        topt.step()
    np.testing.assert_allclose(ours.numpy(), p, rtol=1e-12)
    np.testing.assert_allclose(ours.numpy(), ref.detach().numpy(), rtol=1e-10)


def test_const_diff_rule_of_v1_0():
    th = 0.01
    lo, hi = 0.9 * th, 1.1 * th
    d = torch.tensor([0.001, 0.001, 0.001, 0.02, 0.02, 0.02, 0.01, 0.001])
    cd = torch.tensor([1.0, 4.0, 200.0, 1.0, 4.0, 1 / 200, 8.0, 2.0])
    out = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.0, -1.0, 1.0, 0.0])
    new, new_out = _adapt_const_diff(d, cd, out, lo, hi, 129.0)
    # below the band: x2 (reset to 1 when coming from above); above 129 -> reset
    # above the band: /2 (reset to 1 when coming from below); below 1/129 -> reset; inside -> 1
    assert new.tolist() == pytest.approx([2.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 4.0])
    assert new_out.tolist() == [1.0, 1.0, 0.0, -1.0, -1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("mode", ["low", "mid", "high"])
def test_budget_and_cap_hold_for_every_output(mode, faces):
    emb = tiny_embedder()
    th = MODES[mode].th
    strict = Fawkes(mode, [emb], save_last_on_failed=False, batch_size=8, device="cpu").run(faces)
    assert strict.images.shape == faces.shape
    assert strict.images.min() >= 0 and strict.images.max() <= 1
    assert (strict.stats["dssim"] <= 1.1 * th + 1e-6).all(), strict.stats["dssim"]
    assert (strict.stats["linf"] <= 15 / 255 + 1e-6).all()
    assert ((strict.images - faces).abs().amax(dim=(1, 2, 3)) <= 15 / 255 + 1e-6).all()
    assert strict.stats["fallback"].sum() == 0
    # the attack uses its budget: it is not the identity
    assert strict.stats["dssim"].mean() > 0.3 * th
    # the default keeps v1.0's fallback: outputs over the budget are flagged and stay under 0.015
    res = Fawkes(mode, [emb], batch_size=8, device="cpu").run(faces)
    within = res.stats["dssim"] <= 1.1 * th + 1e-6
    assert (within | (res.stats["fallback"] == 1)).all()
    assert (res.stats["dssim"][res.stats["fallback"] == 1] < 0.015).all()
    assert (res.stats["linf"] <= 15 / 255 + 1e-6).all()


def test_surrogate_moves_far_more_than_noise_of_the_same_psnr(faces):
    emb = tiny_embedder()
    res = Fawkes("custom", [emb], steps=40, device="cpu").run(faces)
    delta = res.images - faces
    rms = delta.pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    g = torch.Generator().manual_seed(1)
    noisy = (faces + torch.randn(faces.shape, generator=g) * rms).clamp(0, 1)
    with torch.no_grad():
        noise_shift = (emb(noisy) - emb(faces)).norm(dim=1)
    assert (res.stats["shift_tiny"] > 3 * noise_shift).all(), (res.stats["shift_tiny"], noise_shift)


def test_reproducible_with_a_seed_and_independent_of_batching(faces):
    emb = tiny_embedder()
    a = Fawkes("custom", [emb], steps=12, seed=3, batch_size=4, device="cpu")
    r1, r2 = a.run(faces), a.run(faces)
    assert torch.equal(r1.images, r2.images)
    other = Fawkes("custom", [emb], steps=12, seed=4, batch_size=4, device="cpu").run(faces)
    assert not torch.equal(r1.images, other.images)
    # an image's random start does not depend on its batch neighbours or position (resume-safe);
    # float rounding differs between batch shapes and can flip the sign of near-zero gradients,
    # so a few pixels differ by a few grey levels, no more
    perm = torch.tensor([5, 2, 7, 0, 1, 3, 6, 4])
    p = Fawkes("custom", [emb], steps=12, seed=3, batch_size=3, device="cpu").run(faces[perm])
    diff = (p.images - r1.images[perm]).abs()
    assert diff.mean() < 0.25 / 255 and diff.max() < 8 / 255
    assert torch.allclose(p.stats["dssim"], r1.stats["dssim"][perm], rtol=0.1)
    shifted = Fawkes("custom", [emb], steps=12, seed=4, batch_size=4, device="cpu").run(faces)
    assert (shifted.images - r1.images).abs().mean() > 4 * diff.mean()


def test_config_is_json_and_names_everything(faces):
    a = create_attack("fawkes", mode="mid", embedders=[tiny_embedder()], seed=7, device="cpu")
    cfg = json.loads(json.dumps(a.config))
    assert cfg["attack"] == "fawkes" and cfg["mode"] == "mid" and cfg["seed"] == 7 and a.name == "fawkes-mid"
    assert cfg["th"] == 0.012 and cfg["steps"] == 75 and cfg["lr"] == 20.0
    assert cfg["surrogates"][0]["name"] == "tiny" and len(cfg["surrogates"][0]["weights_sha256_16"]) == 16
    # a different model of the same name gets a different config (and cache key)
    b = create_attack("fawkes", mode="mid", embedders=[tiny_embedder(seed=1)], seed=7, device="cpu")
    assert b.config != a.config
    assert torch.equal(a(faces[:1]), a.run(faces[:1]).images)


def test_bad_options_are_clear_errors(faces):
    with pytest.raises(ConfigError, match="mode='custom'"):
        Fawkes("high", [tiny_embedder()], th=0.02)
    with pytest.raises(ConfigError, match="unknown mode"):
        Fawkes("ultra", [tiny_embedder()])
    with pytest.raises(ConfigError, match="unknown option"):
        Fawkes("high", [tiny_embedder()], sd=1)
    a = Fawkes("custom", [tiny_embedder()], steps=1, device="cpu")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        a.run(faces * 2)
    with pytest.raises(ValueError, match="RGB"):
        a.run(faces[:, :1])
    with pytest.raises(ValueError, match="at least 11x11"):
        a.run(torch.rand(1, 3, 8, 8))


def test_targeted_moves_towards_the_farthest_identity(faces):
    emb = tiny_embedder()
    with torch.no_grad():
        e = emb(faces)
    # pool: three "identities" made of the faces themselves; the user is faces[:2]
    pool = TargetPool.from_embeddings(["a", "a", "b", "b", "c", "c", "d", "d"], [e])
    user = e[:2]
    target = pool.farthest([user], exclude=["a"])
    dists = {k: torch.cdist(user, pool.centroids[0][pool.identities.index(k)][None]).min().item() for k in "bcd"}
    assert target == max(dists, key=dists.get)
    t = pool.targets_for(target)
    atk = Fawkes("custom", [emb], steps=40, targeted=True, device="cpu")
    assert atk.name == "fawkes-custom-targeted"
    res = atk.run(faces[:2], targets=t)
    with torch.no_grad():
        before = (emb(faces[:2]) - t[0]).norm(dim=1)
        after = (emb(res.images) - t[0]).norm(dim=1)
    assert (after < before).all()
    assert (res.stats["dssim"] <= 1.1 * MODES["high"].th + 1e-6).all()
    with pytest.raises(ValueError, match="targets"):
        atk.run(faces[:2])


@pytest.mark.parametrize("mode", ["low", "mid", "high"])
@pytest.mark.slow
def test_real_surrogate_every_mode_on_johns(mode, johns_images):
    """dlib-resnet29 as the surrogate on 150 px johns chips (the product's default setting)."""
    from puface.models.registry import list_embedders

    if "dlib-resnet29" not in list_embedders():
        pytest.skip("dlib-resnet29 not available")
    _, _, images = johns_images
    x = images[::11][:5]
    atk = create_attack("fawkes", mode=mode, embedders=["dlib-resnet29"], device="cpu", save_last_on_failed=False)
    res = atk.run(x, quantize_output=True)
    th = MODES[mode].th
    assert (res.stats["dssim"] <= 1.1 * th + 1e-6).all()  # the saved 8-bit images keep the budget too
    assert (res.stats["linf"] <= 15 / 255 + 1e-6).all()
    shift = res.stats["shift_dlib-resnet29"]
    if mode == "high":
        assert (shift > 0.6).all()  # past dlib's same-person threshold
    elif mode == "mid":
        # Fawkes mid (lr 20, 75 steps) is chaotic: now and then one cloak keeps an early, weak iterate, which
        # image depends on the machine's float rounding (docs/studies/2026-11-27-fawkes-weak-cloaks). Measured
        # here: 0.71 / 0.78 / 0.78-0.85 / 0.53 / 0.70, on this code and on the code before the re-layout.
        assert (shift > 0.6).sum() >= 4 and shift.mean() > 0.6


def test_real_surrogate_moves_far_more_than_noise(johns_images):
    """dlib-resnet29 on two 150 px johns chips, 20 steps at the high budget."""
    from puface.models.registry import create_embedder, list_embedders

    if "dlib-resnet29" not in list_embedders():
        pytest.skip("dlib-resnet29 not available")
    _, _, images = johns_images
    x = images[[0, 30]]
    emb = create_embedder("dlib-resnet29")
    res = Fawkes("custom", [emb], steps=20, device="cpu").run(x, quantize_output=True)
    rms = (res.images - x).pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    noisy = (x + torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * rms).clamp(0, 1)
    with torch.no_grad():
        noise_shift = (emb(noisy) - emb(x)).norm(dim=1)
    shift = res.stats["shift_dlib-resnet29"]
    assert (shift > 5 * noise_shift).all(), (shift, noise_shift)
    assert (res.stats["dssim"] <= 1.1 * 0.017 + 1e-6).all()


def test_quantize_matches_decoding_the_saved_png():
    from puface.utils.images import quantize
    from puface.utils.images import image_to_tensor, tensor_to_image

    x = torch.rand(2, 3, 17, 19)
    q = quantize(x)
    assert torch.equal(q, torch.stack([image_to_tensor(tensor_to_image(t)) for t in x]))
    assert (q * 255 - (x * 255).round()).abs().max() < 1e-4


def test_8bit_outputs_of_the_attack_keep_the_budget(faces):
    """Rounded to 8 bits (quantize_output, as a PNG stores them), every output that is not a fallback keeps the DSSIM
    budget of 1.1 th (module docstring), though rounding alone would push some over."""
    emb = tiny_embedder()
    th = MODES["low"].th
    res = Fawkes("low", [emb], save_last_on_failed=False, batch_size=8, device="cpu").run(faces, quantize_output=True)
    assert (res.stats["dssim"] <= 1.1 * th + 1e-6).all(), res.stats["dssim"]
    assert (res.stats["budget_scale"] < 1).any()  # the guard had work to do here


def test_8bit_outputs_are_brought_back_under_the_budget(faces):
    from puface.utils.images import quantize
    from puface.attacks.fawkes import _budget_guard
    from puface.utils.metrics import dssim

    g = torch.Generator().manual_seed(0)
    out = (faces + (torch.rand(faces.shape, generator=g) - 0.5) * 0.06).clamp(0, 1)
    d = dssim(quantize(out), faces)
    bound = float(d.median()) * 0.97
    exempt = torch.zeros(len(faces), dtype=torch.bool)
    exempt[0] = True
    q, scale = _budget_guard(faces, out, bound, exempt)
    dq = dssim(q, faces)
    over = d > bound
    assert over[1:].any()
    assert (dq[1:] <= bound).all() and torch.equal(q, quantize(q))
    assert (scale[1:][over[1:]] < 1).all() and (scale[1:][~over[1:]] == 1).all()
    assert scale[0] == 1 and torch.equal(q[0], quantize(out[0]))  # a fallback image is left as v1.0 saves it
