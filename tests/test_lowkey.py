"""LowKey: pixel bound, ensemble/blur/flip structure, perceptual choice, reproducibility, real effect."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from puface.attacks import create_attack
from puface.attacks.lowkey import LowKey, LowKeySettings
from puface.utils.filters import GaussianBlur
from puface.attacks.surrogates import raw_embedding
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
    return small_chips(step=7, count=6)


def test_defaults_are_lowkeys():
    s = LowKeySettings()
    assert (s.steps, s.step_size, s.init_noise, s.c_sim, s.blur_kernel, s.blur_sigma) == (
        50,
        0.0025,
        0.005,
        0.05,
        7,
        3.0,
    )
    assert s.combination and s.flip_tta and s.lpips_net == "alex"
    assert s.max_change == pytest.approx(0.13)


def test_blur_equals_lowkeys_2d_gaussian_smoothing():
    # LowKey's GaussianSmoothing: product of 1-D Gaussians over a meshgrid, normalised, reflect pad 3
    k, sigma = 7, 3.0
    mg = torch.meshgrid(torch.arange(k, dtype=torch.float32), torch.arange(k, dtype=torch.float32), indexing="ij")
    kernel = torch.ones(k, k)
    for grid in mg:
        kernel = kernel * torch.exp(-(((grid - (k - 1) / 2) / sigma) ** 2) / 2) / (sigma * math.sqrt(2 * math.pi))
    kernel = (kernel / kernel.sum()).view(1, 1, k, k).repeat(3, 1, 1, 1)
    x = torch.rand(2, 3, 20, 17)
    want = F.conv2d(F.pad(x, (3, 3, 3, 3), mode="reflect"), kernel, groups=3)
    assert torch.allclose(GaussianBlur(7, 3.0)(x), want, atol=1e-6)


def test_ensemble_has_blurred_and_plain_flip_tta_features(faces):
    emb = tiny_embedder()
    atk = LowKey([emb], perceptual="ssim", device="cpu")
    with torch.no_grad():
        blurred, plain = atk._features(emb, faces)
        ref = atk._reference(emb, faces)
        want_plain = F.normalize(raw_embedding(emb, faces) + raw_embedding(emb, faces.flip(3)), dim=1)
        b = atk.blur(faces)
        want_blur = F.normalize(raw_embedding(emb, b) + raw_embedding(emb, b.flip(3)), dim=1)
    assert torch.allclose(plain, want_plain, atol=1e-5) and torch.allclose(ref, want_plain, atol=1e-5)
    assert torch.allclose(blurred, want_blur, atol=1e-5)
    # the clean image is at distance 0 from its reference on the plain copy only
    with torch.no_grad():
        fd = atk.feature_distance(faces, [ref])
    assert (fd > 0).all()  # the blurred copy differs


def test_pixels_move_at_most_steps_times_step_plus_noise(faces):
    atk = LowKey([tiny_embedder()], perceptual="ssim", device="cpu", batch_size=6)
    res = atk.run(faces)
    bound = 50 * 0.0025 + 0.005
    assert (res.stats["linf"] <= bound + 1e-6).all()
    assert ((res.images - faces).abs().amax(dim=(1, 2, 3)) <= bound + 1e-6).all()
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert (res.stats["linf"] > 0.05).all()  # the signed steps accumulate where the gradient agrees


def test_the_start_is_uniform_noise_on_both_sides(faces):
    """x' starts at x + U(-init_noise, init_noise): with no steps the change is that noise, of either sign."""
    x = faces.clamp(0.1, 0.9)  # away from the clamp at 0 and 1
    res = LowKey([tiny_embedder()], perceptual="ssim", steps=0, device="cpu", batch_size=6).run(x)
    d = res.images - x
    assert float(d.abs().max()) <= 0.005 + 1e-6
    assert float(d.min()) < -0.004 and float(d.max()) > 0.004 and abs(float(d.mean())) < 5e-4


def test_recorded_terms_are_those_of_the_returned_image(faces):
    """The attack clamps its image to [0, 1] at the end, and the perceptual and feature terms it records are measured
    on that image (the one returned), also where the steps pushed saturated pixels past 0 or 1."""
    x = faces.clone()
    x[:, :, :8] = 1.0  # saturated rows: a signed step pushes half of them past 1
    x[:, :, -8:] = 0.0
    atk = LowKey([tiny_embedder()], perceptual="ssim", device="cpu", batch_size=6)
    res = atk.run(x)
    assert res.images.min() >= 0 and res.images.max() <= 1
    with torch.no_grad():
        refs = [atk._reference(emb, x) for emb in atk.surrogates]
        want_feat = atk.feature_distance(res.images, refs)
        want_perc = atk._perceptual(x)(res.images)
    assert torch.allclose(res.stats["feature_distance"], want_feat, atol=1e-5)
    assert torch.allclose(res.stats["perceptual"], want_perc, atol=1e-5)


def _noise_shift(emb, clean, cloaked, seed=2):
    """Embedding shift caused by Gaussian noise with the same RMS (so the same PSNR) as the cloak."""
    rms = (cloaked - clean).pow(2).flatten(1).mean(1).sqrt().view(-1, 1, 1, 1)
    noisy = (clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * rms).clamp(0, 1)
    with torch.no_grad():
        return (emb(noisy) - emb(clean)).norm(dim=1)


def test_feature_term_moves_the_embedding_far_more_than_noise(faces):
    emb = tiny_embedder()
    res = LowKey([emb], perceptual="ssim", c_sim=0.0, steps=20, device="cpu").run(faces)
    noise = _noise_shift(emb, faces, res.images)
    assert (res.stats["shift_tiny"] > 3 * noise).all(), (res.stats["shift_tiny"], noise)


def test_real_surrogate_moves_far_more_than_noise(johns_images):
    """dlib-resnet29 on two 150 px johns chips, 20 steps, default c_sim with the SSIM penalty."""
    from puface.models.registry import create_embedder, list_embedders

    if "dlib-resnet29" not in list_embedders():
        pytest.skip("dlib-resnet29 not available")
    _, _, images = johns_images
    x = images[[0, 30]]
    emb = create_embedder("dlib-resnet29")
    res = LowKey([emb], perceptual="ssim", steps=20, device="cpu").run(x, quantize_output=True)
    noise = _noise_shift(emb, x, res.images)
    assert (res.stats["shift_dlib-resnet29"] > 5 * noise).all(), (res.stats, noise)


def test_reproducible_with_a_seed(faces):
    a = LowKey([tiny_embedder()], perceptual="ssim", steps=5, seed=1, device="cpu")
    assert torch.equal(a(faces), a(faces))
    b = LowKey([tiny_embedder()], perceptual="ssim", steps=5, seed=2, device="cpu")
    assert not torch.equal(a(faces), b(faces))


def test_lpips_is_the_default_perceptual_term_when_installed(faces):
    pytest.importorskip("stlpips_pytorch")
    atk = create_attack("lowkey", embedders=[tiny_embedder()], steps=3, device="cpu")
    assert atk.settings.perceptual == "lpips" and atk.config["perceptual"] == "lpips"
    res = atk.run(faces[:2])
    assert (res.stats["perceptual"] >= 0).all() and (res.stats["perceptual"] > 0).any()
    cfg = json.loads(json.dumps(atk.config))
    assert cfg["c_sim"] == 0.05 and cfg["attack"] == "lowkey" and atk.name == "lowkey"


def test_missing_lpips_is_an_error_unless_another_penalty_is_chosen(monkeypatch):
    """A missing LPIPS package must not silently turn LowKey into another attack (it once did, on a GPU
    machine without stlpips-pytorch: the cloaks and their cache keys changed under the same config)."""
    from puface.attacks import perceptual
    from puface.utils.errors import MissingDependencyError

    def missing(net):
        raise MissingDependencyError("stlpips-pytorch is not installed")

    monkeypatch.setattr(perceptual, "lpips_weights_path", missing)
    with pytest.raises(MissingDependencyError, match="perceptual = \"ssim\""):
        create_attack("lowkey", embedders=[tiny_embedder()], steps=2, device="cpu")
    with pytest.warns(UserWarning, match="1 - SSIM"):
        atk = create_attack("lowkey", embedders=[tiny_embedder()], steps=2, perceptual="auto", device="cpu")
    assert atk.config["perceptual"] == "ssim"
    assert LowKey([tiny_embedder()], perceptual="ssim", steps=2, device="cpu").config["perceptual"] == "ssim"


def test_ssim_fallback_is_recorded_and_options_are_checked(faces):
    atk = LowKey([tiny_embedder()], perceptual="ssim", steps=2, device="cpu")
    assert atk.config["perceptual"] == "ssim"
    assert torch.allclose(atk.run(faces[:1]).stats["perceptual"], 2 * atk.run(faces[:1]).stats["dssim"], atol=1e-5)
    with pytest.raises(ConfigError, match="unknown option"):
        LowKey([tiny_embedder()], lr=0.1)
    with pytest.raises(ConfigError, match="perceptual"):
        LowKey([tiny_embedder()], perceptual="dists")


@pytest.mark.slow
def test_real_ensemble_full_attack_on_johns(johns_images):
    """dlib-resnet29 + sface, LPIPS, 50 steps on two 150 px chips: both embeddings move past noise."""
    from puface.models.registry import list_embedders

    names = [n for n in ("dlib-resnet29", "sface") if n in list_embedders()]
    if not names:
        pytest.skip("no real face models installed")
    _, _, images = johns_images
    x = images[[0, 22]]
    atk = create_attack("lowkey", embedders=names, device="cpu")
    res = atk.run(x, quantize_output=True)
    assert (res.stats["linf"] <= 0.13 + 1 / 255).all()
    for n in names:
        assert (res.stats[f"shift_{n}"] > 0.5).all(), res.stats


def test_default_surrogates_are_one_per_network_not_the_layout_variants():
    """LowKey without embedders took every registered embedder: dlib-resnet29, dlib-resnet29-arcface112, sface and
    sface-arcface112, so on dlib chips two of its four surrogates saw a misaligned face (the ArcFace 112 warps) and
    each step cost about twice as much (puface cloak --attack lowkey printed all four). Now one per network."""
    from puface.attacks import create_attack
    from puface.models.registry import distinct_embedders, list_embedders

    if not {"dlib-resnet29", "sface"} <= set(list_embedders()):
        pytest.skip("needs both built-in face models")
    names = distinct_embedders()  # (other tests of a session may register stand-ins too)
    assert {"dlib-resnet29", "sface"} <= set(names) and not {"dlib-resnet29-arcface112", "sface-arcface112"} & set(
        names
    )
    atk = create_attack("lowkey", steps=1, perceptual="ssim", device="cpu")
    assert [e.name for e in atk.surrogates] == names
