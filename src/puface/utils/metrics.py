"""Image quality: PSNR, SSIM and DSSIM, one definition each (SSIM exactly as Fawkes measures it,
`tf.image.ssim`, Wang et al. 2004).

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

from .filters import gaussian_taps

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03

__all__ = ["ssim", "dssim", "psnr", "ReferenceSSIM", "WINDOW", "SIGMA"]


def _check(x: torch.Tensor, name: str, size: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"SSIM: {name} must be (N, C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} px, got {tuple(x.shape[-2:])}")


# Filtering runs as matrix products with small banded Gaussian blocks (BLAS; several times faster
# than depthwise convolution on CPU for face chips) up to this side; larger images use convolution.
_MATMUL_MAX_SIDE = 4096
_BLOCK = 256  # longer rows are cut into blocks of about this many outputs (GEMM cost per output: block + k - 1)


def _banded(n: int, taps: torch.Tensor) -> torch.Tensor:
    """(n, n - k + 1) matrix whose column j holds the k taps at rows j..j+k-1: x @ M = valid 1-D filter."""
    k = taps.numel()
    m = torch.zeros(n, n - k + 1, dtype=taps.dtype, device=taps.device)
    idx = torch.arange(n - k + 1, device=taps.device)
    for t in range(k):
        m[idx + t, idx] = taps[t]
    return m


class _BandPlan:
    """'Valid' 1-D filtering along the last axis of (M, width) rows, as a few block matrix products."""

    def __init__(self, width: int, taps: torch.Tensor, block: int = _BLOCK):
        self.k = k = taps.numel()
        self.out_width = w2 = width - k + 1
        nb = max(1, round(w2 / block))
        edges = [round(i * w2 / nb) for i in range(nb + 1)]
        self.blocks = [(a, b + k - 1, _banded(b - a + k - 1, taps)) for a, b in zip(edges[:-1], edges[1:])]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.blocks) == 1:
            return x @ self.blocks[0][2]
        return torch.cat([x[:, a:e] @ m for a, e, m in self.blocks], dim=1)


class _ValidFilter1d(torch.autograd.Function):
    """y = valid filter of x (M, W) -> (M, W - k + 1); backward: the same filter (the taps are
    symmetric) over the gradient zero-padded by k - 1 on both sides ('full' correlation)."""

    @staticmethod
    def forward(ctx, x, fwd: _BandPlan, bwd: _BandPlan):
        ctx.bwd = bwd
        return fwd.apply(x)

    @staticmethod
    def backward(ctx, grad):
        k = ctx.bwd.k
        return ctx.bwd.apply(F.pad(grad, (k - 1, k - 1))), None, None


class _Filter:
    """Depthwise 'valid' Gaussian filtering of (N, C, H, W) maps.

    The matrix-product path returns the filtered maps transposed, (N, C, W', H') (the second pass
    filters the transposed rows; SSIM only averages elementwise functions of maps that are all
    transposed alike). The convolution path returns (N, C, H', W').
    """

    def __init__(self, channels: int, size: int, sigma: float, like: torch.Tensor):
        g = gaussian_taps(size, sigma, dtype=like.dtype).to(like.device)
        h, w = like.shape[-2:]
        self.channels = channels
        self.matmul = max(h, w) <= _MATMUL_MAX_SIDE
        if self.matmul:
            self.w_plans = (_BandPlan(w, g), _BandPlan(w + size - 1, g))
            self.h_plans = (_BandPlan(h, g), _BandPlan(h + size - 1, g))
        else:
            self.row = g.view(1, 1, 1, size)
            self.col = g.view(1, 1, size, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.matmul:
            w2, h2 = self.w_plans[0].out_width, self.h_plans[0].out_width
            y = _ValidFilter1d.apply(x.reshape(-1, w), *self.w_plans).view(n * c, h, w2)
            y = _ValidFilter1d.apply(y.transpose(1, 2).reshape(-1, h), *self.h_plans)
            return y.view(n, c, w2, h2)
        x = F.conv2d(x, self.row.expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, self.col.expand(c, 1, -1, 1), groups=c)

    def adjoint(self, g: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Transpose of the matrix-product path: (N, C, W', H') -> (N, C, H, W)."""
        n, c, w2, h2 = g.shape
        k = self.h_plans[1].k
        t = self.h_plans[1].apply(F.pad(g.reshape(-1, h2), (k - 1, k - 1)))  # (N C W', H)
        t = t.view(n * c, w2, h).transpose(1, 2).reshape(-1, w2)
        t = self.w_plans[1].apply(F.pad(t, (k - 1, k - 1)))  # (N C H, W)
        return t.view(n, c, h, w)


class _SSIMToReference(torch.autograd.Function):
    """SSIM(x, y) per image against a `ReferenceSSIM`'s fixed y, with the gradient in closed form.

    With l = A1 / B1, cs = A2 / B2 (see the module docstring) and S = l cs per window, the window
    moments mu_x = G x, E[x^2] = G x^2, E[xy] = G (x y) give
        dS/dmu_x = (2 mu_y - 2 mu_x l) / B1 * cs + l (2 mu_x cs - 2 mu_y) / B2,
        dS/dE[x^2] = -l cs / B2,   dS/dE[xy] = 2 l / B2,
    and dSSIM/dx = G^T a + 2 x G^T b + y G^T c for the mean-weighted maps a, b, c: three
    filterings and three transposed filterings, no autograd graph of the elementwise algebra.
    """

    @staticmethod
    def forward(ctx, x, ref: "ReferenceSSIM"):
        f = ref.filter
        mu_x, xx, xy = f(x), f(x * x), f(x * ref.y)  # three calls: cheaper than one on a concatenation
        mu_y = ref.mu_y
        a1 = 2.0 * mu_x * mu_y + ref.c1
        b1 = mu_x * mu_x + ref.mu_y_sq + ref.c1
        a2 = 2.0 * (xy - mu_x * mu_y) + ref.c2
        b2 = (xx - mu_x * mu_x) + ref.var_y + ref.c2
        lum, cs = a1 / b1, a2 / b2
        s = lum * cs
        if x.requires_grad:
            d_mu = (2.0 * mu_y - 2.0 * mu_x * lum) / b1 * cs + lum * (2.0 * mu_x * cs - 2.0 * mu_y) / b2
            d_xx = -s / b2
            d_xy = 2.0 * lum / b2
            ctx.save_for_backward(x, d_mu, d_xx, d_xy)
            ctx.ref = ref
        return s.mean(dim=(1, 2, 3))

    @staticmethod
    def backward(ctx, grad):
        x, d_mu, d_xx, d_xy = ctx.saved_tensors
        ref = ctx.ref
        h, w = x.shape[-2:]
        weight = grad.view(-1, 1, 1, 1) / d_mu[0].numel()
        adj = ref.filter.adjoint
        out = adj(d_mu * weight, h, w)
        out += 2.0 * x * adj(d_xx * weight, h, w)
        out += ref.y * adj(d_xy * weight, h, w)
        return out, None


def _ssim_from_moments(mu_x, mu_y, xx, yy, xy, c1: float, c2: float) -> torch.Tensor:
    mu_xy = mu_x * mu_y
    mu_sq = mu_x * mu_x + mu_y * mu_y
    lum = (2.0 * mu_xy + c1) / (mu_sq + c1)
    cs = (2.0 * (xy - mu_xy) + c2) / ((xx + yy) - mu_sq + c2)
    return (lum * cs).mean(dim=(1, 2, 3))


def ssim(
    x: torch.Tensor, y: torch.Tensor, max_val: float = 1.0, window: int = WINDOW, sigma: float = SIGMA
) -> torch.Tensor:
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
    mu_x, mu_y, xx, yy, xy = (m[:, i * c : (i + 1) * c] for i in range(5))
    return _ssim_from_moments(mu_x, mu_y, xx, yy, xy, c1, c2)


def dssim(x: torch.Tensor, y: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """(1 - SSIM) / 2 per pair, (N,): 0 for identical images, Fawkes' perceptual budget."""
    return (1.0 - ssim(x, y, max_val=max_val)) / 2.0


def psnr(x: torch.Tensor, y: torch.Tensor, max_val: float = 1.0, cap: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per pair of (N, C, H, W) images on [0, max_val], (N,).

    Identical images give +inf, or `cap` (dB) when given; every value is at most `cap`.
    """
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(dim=1)
    out = 10.0 * torch.log10(max_val**2 / mse)
    return out if cap is None else out.clamp(max=cap)


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
        self.mu_y_sq = self.mu_y * self.mu_y
        self.var_y = self.yy - self.mu_y_sq
        self.y = y
        self.c1, self.c2 = (K1 * max_val) ** 2, (K2 * max_val) ** 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.shape:
            raise ValueError(f"SSIM: shapes differ: {tuple(x.shape)} vs reference {tuple(self.shape)}")
        if self.filter.matmul:
            return _SSIMToReference.apply(x, self)
        c = x.shape[1]
        m = self.filter(torch.cat([x, x * x, x * self.y], dim=1))
        return _ssim_from_moments(m[:, :c], self.mu_y, m[:, c : 2 * c], self.yy, m[:, 2 * c :], self.c1, self.c2)

    def dssim(self, x: torch.Tensor) -> torch.Tensor:
        """(1 - SSIM(x, reference)) / 2, (N,)."""
        return (1.0 - self(x)) / 2.0
