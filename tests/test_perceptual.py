"""ST-LPIPS port (`puface.attacks.perceptual`) against distances recorded from the reference package
`stlpips-pytorch==0.0.2` by tools/make_lpips_fixture.py (tests/fixtures/lpips_reference.json)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from puface.attacks.perceptual import LPIPS, load_lpips, lpips_weights_path
from puface.utils.errors import MissingDependencyError

FIXTURES = Path(__file__).parent / "fixtures"
REF = json.loads((FIXTURES / "lpips_reference.json").read_text())

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("stlpips_pytorch") is None, reason="pip install stlpips-pytorch==0.0.2"
)


def image(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixture PNG as (1, 3, H, W) in [0, 1]."""
    arr = np.asarray(Image.open(FIXTURES / REF["images"][name]["file"]).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].to(dtype) / 255.0


def batched_pairs(dtype: torch.dtype):
    """Fixture pairs grouped by image size: [(x (N,3,H,W), y, [pair dicts])]."""
    groups = defaultdict(list)
    for p in REF["pairs"]:
        groups[tuple(image(p["x"]).shape)].append(p)
    return [
        (torch.cat([image(p["x"], dtype) for p in ps]), torch.cat([image(p["y"], dtype) for p in ps]), ps)
        for ps in groups.values()
    ]


@pytest.fixture(scope="module", params=["alex", "vgg"])
def model(request) -> LPIPS:
    if importlib.util.find_spec("stlpips_pytorch") is None:
        pytest.skip("pip install stlpips-pytorch==0.0.2")
    return LPIPS(request.param)


def test_fixture_images_intact():
    for name, entry in REF["images"].items():
        assert hashlib.sha256((FIXTURES / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], name


@torch.no_grad()
def test_matches_reference_float32(model):
    for x, y, pairs in batched_pairs(torch.float32):
        ours = model(x, y)
        assert ours.shape == (len(pairs),) and ours.dtype == torch.float32
        ref = torch.tensor([p[model.net_name] for p in pairs])
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_matches_reference_float64(model):
    """In float64 the port agrees with the reference to rounding: catches any deviation in the recipe.
    (64x64 pairs only: float64 convolutions are slow on CPU.)"""
    m = model.to(torch.float64)
    try:
        for x, y, pairs in batched_pairs(torch.float64):
            if x.shape[-1] != 64:
                continue
            ref = torch.tensor([p[f"{model.net_name}_f64"] for p in pairs], dtype=torch.float64)
            torch.testing.assert_close(m(x, y), ref, rtol=1e-9, atol=1e-12)
    finally:
        model.to(torch.float32)


@torch.no_grad()
def test_identity_and_symmetry(model):
    a, c = image("a64"), image("b64")
    d = model(torch.cat([a, c, a]), torch.cat([a, a, c]))  # [d(a,a), d(c,a), d(a,c)]
    assert d[0].item() == 0.0
    assert d[1].item() > 0.1
    torch.testing.assert_close(d[1], d[2], rtol=1e-5, atol=1e-7)


def test_gradient_finite_and_nonzero(model):
    # second pair: flat grey (many all-zero feature vectors) against a real image
    grey = torch.full((1, 3, 64, 64), 0.5)
    x = torch.cat([image("a64_noise"), grey]).requires_grad_(True)
    model(x, torch.cat([image("a64"), image("b64")])).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0
    assert all(not p.requires_grad for p in model.parameters())


def test_gradient_lowers_distance():
    """A few signed-gradient steps on x move it perceptually towards y (the direction LowKey uses)."""
    if importlib.util.find_spec("stlpips_pytorch") is None:
        pytest.skip("pip install stlpips-pytorch==0.0.2")
    m = load_lpips("alex")
    x, y = image("a64_shift"), image("a64")
    dists = []
    for _ in range(3):
        x = x.detach().requires_grad_(True)
        d = m(x, y)
        d.sum().backward()
        dists.append(d.item())
        x = (x - 1.0 / 255 * x.grad.sign()).clamp(0, 1)
    dists.append(m(x, y).item())
    assert all(b < a for a, b in zip(dists, dists[1:])), dists
    assert dists[-1] < 0.8 * dists[0], dists


@needs_weights
def test_bad_inputs():
    m = load_lpips("alex")
    with pytest.raises(ValueError, match="same shape"):
        m(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 33))
    with pytest.raises(ValueError, match="same shape"):
        m(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 21x21"):
        m(torch.rand(1, 3, 20, 64), torch.rand(1, 3, 20, 64))
    assert m(torch.rand(2, 3, 21, 21), torch.rand(2, 3, 21, 21)).shape == (2,)
    with pytest.raises(ValueError, match="unknown LPIPS network"):
        LPIPS("squeeze")


@needs_weights
def test_load_lpips_is_cached():
    m = load_lpips("alex")
    assert load_lpips("alex", "cpu") is m and load_lpips(device=torch.device("cpu")) is m
    assert not m.training and m.net_name == "alex"


def test_missing_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "stlpips_pytorch" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"pip install stlpips-pytorch==0\.0\.2"):
        lpips_weights_path("alex")
    with pytest.raises(MissingDependencyError, match=r"a dependency of puface"):
        LPIPS("vgg")
