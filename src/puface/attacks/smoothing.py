"""Gaussian smoothing as LowKey applies it in front of half of its ensemble (robustness to blur)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ssim import gaussian_window

__all__ = ["GaussianBlur"]


class GaussianBlur(nn.Module):
    """Depthwise k x k Gaussian blur (normalised to sum 1) with reflect padding k // 2, size-preserving.

    LowKey: k = 7, sigma = 3. The 2-D kernel is the outer product of the 1-D taps, so it runs as two
    1-D passes (same result as LowKey's 2-D conv). (N, C, H, W) -> (N, C, H, W); needs H, W > k // 2.
    """

    def __init__(self, kernel_size: int = 7, sigma: float = 3.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.kernel_size, self.sigma = kernel_size, float(sigma)
        self.register_buffer("taps", gaussian_window(kernel_size, sigma), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, k, p = x.shape[1], self.kernel_size, self.kernel_size // 2
        taps = self.taps.to(x.dtype)
        x = F.pad(x, (p, p, p, p), mode="reflect")
        x = F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
        return F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"
