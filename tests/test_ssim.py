"""SSIM / DSSIM / PSNR against closed-form values and an independent float64 reference (scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from puface.utils.filters import gaussian_taps
from puface.utils.metrics import ReferenceSSIM, dssim, psnr, ssim


# many small tensor ops: one torch thread (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def scipy_ssim(x: np.ndarray, y: np.ndarray, max_val: float) -> float:
    """Wang et al.'s SSIM in float64 with scipy's Gaussian filter (sigma 1.5, radius 5 -> 11 taps),
    keeping only windows that lie fully inside the image (what tf.image.ssim does). x, y (C, H, W)."""
    from scipy.ndimage import gaussian_filter

    def filt(a):
        return gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")[5:-5, 5:-5]

    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    vals = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
        mx, my = filt(a), filt(b)
        vx, vy, cxy = filt(a * a) - mx**2, filt(b * b) - my**2, filt(a * b) - mx * my
        m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def test_window_is_the_normalised_11_tap_gaussian():
    g = gaussian_taps(11, 1.5, torch.float64)
    assert g.shape == (11,)
    assert g.sum().item() == pytest.approx(1.0, abs=1e-12)
    expected = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    np.testing.assert_allclose(g.numpy(), expected / expected.sum(), rtol=1e-6)


def test_identical_images_give_one_and_zero_dssim():
    x = torch.rand(2, 3, 20, 24)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(dssim(x, x), torch.zeros(2), atol=1e-6)
    assert torch.isinf(psnr(x, x)).all()


@pytest.mark.parametrize("a,b", [(100.0, 100.0), (100.0, 120.0), (10.0, 240.0), (0.0, 255.0)])
def test_constant_images_match_the_closed_form(a, b):
    # no variance: cs = C2 / C2 = 1 and SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    x = torch.full((1, 3, 16, 16), a, dtype=torch.float64)
    y = torch.full((1, 3, 16, 16), b, dtype=torch.float64)
    c1 = (0.01 * 255) ** 2
    assert ssim(x, y, max_val=255.0).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-10)


def test_negated_contrast_matches_the_closed_form():
    # y = 255 - x with x a +-s checkerboard around 127.5: equal means and variances, cov = -var.
    # Under any window the mean is 127.5 + m and var = s^2 - m^2, so check numerically per window
    # against the scipy reference instead of one formula; plus a simpler exact case:
    # x = 127.5 + s*c, y = 127.5 + s*c (same) -> 1; y = 127.5 - s*c -> mean over windows of
    # (C2 - 2 var) / (2 var + C2) * lum, lum = 1 where the window mean is exactly 127.5.
    s = 50.0
    c = torch.ones(1, 1, 21, 21, dtype=torch.float64)
    c[..., ::2, :] *= -1
    c[..., :, ::2] *= -1
    x, y = 127.5 + s * c, 127.5 - s * c
    got = ssim(x, y, max_val=255.0).item()
    ref = scipy_ssim(x[0].numpy(), y[0].numpy(), 255.0)
    assert got == pytest.approx(ref, abs=1e-9)
    assert got < -0.9  # anti-correlated structure: SSIM close to -1


@pytest.mark.parametrize(
    "shape,noise",
    [((3, 32, 32), 10.0), ((3, 40, 27), 40.0), ((1, 11, 11), 5.0), ((3, 150, 150), 3.0), ((3, 330, 24), 8.0)],
)
def test_matches_an_independent_float64_reference(shape, noise):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=shape)
    x = np.clip(x + rng.normal(0, 30, size=shape), 0, 255)
    y = np.clip(x + rng.normal(0, noise, size=shape), 0, 255)
    want = scipy_ssim(x, y, 255.0)
    got64 = ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None], max_val=255.0).item()
    got32 = ssim(torch.from_numpy(x).float()[None], torch.from_numpy(y).float()[None], max_val=255.0).item()
    assert got64 == pytest.approx(want, abs=1e-10)
    assert got32 == pytest.approx(want, abs=2e-5)


def test_scale_invariance_01_vs_0255():
    x, y = torch.rand(3, 3, 30, 30), torch.rand(3, 3, 30, 30)
    y = (x + 0.05 * (y - 0.5)).clamp(0, 1)
    assert torch.allclose(ssim(x, y), ssim(255 * x, 255 * y, max_val=255.0), atol=1e-5)


def test_reference_ssim_equals_ssim_and_has_gradients():
    y = torch.rand(4, 3, 25, 31)
    x = (y + 0.03 * torch.randn_like(y)).clamp(0, 1).requires_grad_(True)
    ref = ReferenceSSIM(y)
    assert torch.allclose(ref(x), ssim(x, y), atol=1e-6)
    ref.dssim(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_psnr_known_value():
    x = torch.zeros(1, 3, 8, 8)
    y = torch.full((1, 3, 8, 8), 0.1)  # mse 0.01 -> 20 dB
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr(255 * x, 255 * y, max_val=255.0).item() == pytest.approx(20.0, abs=1e-4)


def test_too_small_and_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 30), torch.rand(1, 3, 10, 30))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 21))
    assert math.isclose(float(dssim(torch.zeros(1, 1, 11, 11), torch.zeros(1, 1, 11, 11))), 0.0, abs_tol=1e-7)


def test_matmul_and_convolution_paths_agree(monkeypatch):
    import puface.utils.metrics as mod

    x, y = torch.rand(2, 3, 40, 33), torch.rand(2, 3, 40, 33)
    a = ssim(x, y)
    monkeypatch.setattr(mod, "_MATMUL_MAX_SIDE", 0)
    assert torch.allclose(a, ssim(x, y), atol=1e-6)


def test_gradient_of_the_blocked_filter_matches_convolution(monkeypatch):
    import puface.utils.metrics as mod

    y = torch.rand(2, 3, 97, 130, dtype=torch.float64)
    x0 = (y + 0.05 * torch.randn_like(y)).clamp(0, 1)
    x1 = x0.clone().requires_grad_(True)
    ssim(x1, y).sum().backward()
    monkeypatch.setattr(mod, "_MATMUL_MAX_SIDE", 0)
    x2 = x0.clone().requires_grad_(True)
    ssim(x2, y).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-12, rtol=1e-9)
    assert torch.autograd.gradcheck(
        lambda t: ssim(t, y[:1, :1, :20, :23]), (x0[:1, :1, :20, :23].clone().requires_grad_(True),)
    )


def test_reference_ssim_closed_form_gradient_matches_autograd():
    y = torch.rand(3, 3, 40, 52, dtype=torch.float64)
    x0 = (y + 0.08 * torch.randn_like(y)).clamp(0, 1)
    ref = ReferenceSSIM(y)
    x1 = x0.clone().requires_grad_(True)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (ref(x1) * w).sum().backward()
    x2 = x0.clone().requires_grad_(True)
    (ssim(x2, y) * w).sum().backward()
    assert torch.allclose(ref(x0), ssim(x0, y), atol=1e-12)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-12, rtol=1e-9)
    small = ReferenceSSIM(y[:1, :, :14, :17])
    assert torch.autograd.gradcheck(lambda t: small(t), (x0[:1, :, :14, :17].clone().requires_grad_(True),))
