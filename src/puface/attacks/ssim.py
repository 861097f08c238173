"""SSIM, DSSIM and PSNR exactly as Fawkes measures them (`tf.image.ssim`, Wang et al. 2004).

SSIM per image: an 11x11 Gaussian window (sigma 1.5, normalised to sum 1) slides over every channel
with 'valid' placement (no padding: an H x W image gives (H-10) x (W-10) windows); per window

    l  = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    cs = (2 cov_xy + C2) / (var_x + var_y + C2)        C1 = (0.01 L)^2, C2 = (0.03 L)^2

with population (biased) moments under the window; SSIM = mean of l * cs over windows and channels.
L is the dynamic range: 255 for pixels on the 0..255 scale (Fawkes: `max_val=255`), 1 for [0, 1]
images. The value depends only on x / L, so `ssim(x, y)` on [0, 1] images equals
`ssim(255 x, 255 y, max_val=255)` up to float rounding. DSSIM = (1 - SSIM) / 2 (Fawkes' budget).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03

__all__ = ["gaussian_window", "ssim", "dssim", "psnr", "ReferenceSSIM", "WINDOW", "SIGMA"]


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA, dtype=torch.float32) -> torch.Tensor:
    """1-D Gaussian taps (size,), summing to 1; the 2-D window is its outer product (separable)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype)


def _check(x: torch.Tensor, name: str, size: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"SSIM: {name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} px, got {tuple(x.shape[-2:])}")


# Up to this side, filtering runs as two matrix products with banded Gaussian matrices (BLAS; about
# 3x faster than depthwise convolution on CPU for face chips); larger images use convolution.
_MATMUL_MAX_SIDE = 320


def _banded(n: int, taps: torch.Tensor) -> torch.Tensor:
    """(n, n - k + 1) matrix whose column j holds the k taps at rows j..j+k-1: x @ M = valid 1-D filter."""
    k = taps.numel()
    m = torch.zeros(n, n - k + 1, dtype=taps.dtype, device=taps.device)
    idx = torch.arange(n - k + 1, device=taps.device)
    for t in range(k):
        m[idx + t, idx] = taps[t]
    return m


class _Filter:
    """Depthwise 'valid' Gaussian filtering of (N, C, H, W) maps: (N, C, H - k + 1, W - k + 1)."""

    def __init__(self, channels: int, size: int, sigma: float, like: torch.Tensor):
        g = gaussian_window(size, sigma, dtype=like.dtype).to(like.device)
        h, w = like.shape[-2:]
        self.channels = channels
        self.matmul = max(h, w) <= _MATMUL_MAX_SIDE
        if self.matmul:
            self.right = _banded(w, g)  # (W, W')
            self.left = _banded(h, g).t().contiguous()  # (H', H)
        else:
            self.row = g.view(1, 1, 1, size)
            self.col = g.view(1, 1, size, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.matmul:
            return self.left @ (x @ self.right)
        c = x.shape[1]
        x = F.conv2d(x, self.row.expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, self.col.expand(c, 1, -1, 1), groups=c)


def _ssim_from_moments(mu_x, mu_y, xx, yy, xy, c1: float, c2: float) -> torch.Tensor:
    mu_xy = mu_x * mu_y
    mu_sq = mu_x * mu_x + mu_y * mu_y
    lum = (2.0 * mu_xy + c1) / (mu_sq + c1)
    cs = (2.0 * (xy - mu_xy) + c2) / ((xx + yy) - mu_sq + c2)
    return (lum * cs).mean(dim=(1, 2, 3))


def ssim(x: torch.Tensor, y: torch.Tensor, max_val: float = 1.0, window: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    """SSIM of each pair: x, y (N, C, H, W) on the scale [0, max_val], H, W >= `window` -> (N,).

    1 for identical images; differentiable in both arguments.
    """
    _check(x, "x", window)
    if x.shape != y.shape:
        raise ValueError(f"SSIM: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    f = _Filter(x.shape[1], window, sigma, x)
    c1, c2 = (K1 * max_val) ** 2, (K2 * max_val) ** 2
    c = x.shape[1]
    m = f(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    return _ssim_from_moments(*(m[:, i * c : (i + 1) * c] for i in range(5)), c1, c2)


def dssim(x: torch.Tensor, y: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """(1 - SSIM) / 2 per pair, (N,): 0 for identical images, Fawkes' perceptual budget."""
    return (1.0 - ssim(x, y, max_val=max_val)) / 2.0


def psnr(x: torch.Tensor, y: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per pair, (N,); +inf for identical images."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(max_val**2 / mse)


class ReferenceSSIM:
    """SSIM against fixed reference images, with the reference's window moments computed once.

    For an optimisation loop that compares many iterates x with the same y: `ref(x)` -> (N,) costs
    three filtered maps per call instead of five. `reference` (N, C, H, W) on the scale [0, max_val].
    """

    def __init__(self, reference: torch.Tensor, max_val: float = 1.0, window: int = WINDOW, sigma: float = SIGMA):
        _check(reference, "reference", window)
        y = reference.detach()
        self.shape = y.shape
        self.filter = _Filter(y.shape[1], window, sigma, y)
        self.mu_y = self.filter(y)
        self.yy = self.filter(y * y)
        self.y = y
        self.c1, self.c2 = (K1 * max_val) ** 2, (K2 * max_val) ** 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.shape:
            raise ValueError(f"SSIM: shapes differ: {tuple(x.shape)} vs reference {tuple(self.shape)}")
        c = x.shape[1]
        m = self.filter(torch.cat([x, x * x, x * self.y], dim=1))
        return _ssim_from_moments(m[:, :c], self.mu_y, m[:, c : 2 * c], self.yy, m[:, 2 * c :], self.c1, self.c2)

    def dssim(self, x: torch.Tensor) -> torch.Tensor:
        """(1 - SSIM(x, reference)) / 2, (N,)."""
        return (1.0 - self(x)) / 2.0
