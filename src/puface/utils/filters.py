"""Gaussian taps and separable Gaussian blur, shared by SSIM's window, LowKey's smoothing and the
blur defense. Images (N, C, H, W), any float dtype; everything is differentiable."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["gaussian_taps", "gaussian_blur", "GaussianBlur", "blur_radius"]


def gaussian_taps(size: int, sigma: float, dtype=torch.float32) -> torch.Tensor:
    """1-D Gaussian taps (size,) centred on the middle tap, summing to 1 (computed in float64)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype)


def blur_radius(sigma: float) -> int:
    """ceil(3 sigma), at least 1: the radius that keeps 99.7% of a Gaussian's mass."""
    return max(1, int(math.ceil(3.0 * sigma)))


def gaussian_blur(images: torch.Tensor, taps: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Separable blur of (N, C, H, W) with the odd-length `taps`, padded by len // 2 on each side
    (`mode`: "reflect", "replicate", ...), so the output keeps the input's size."""
    n, c = images.shape[:2]
    k = taps.numel()
    p = k // 2
    t = taps.to(device=images.device, dtype=images.dtype)
    x = F.pad(images, (p, p, p, p), mode=mode) if p else images
    x = F.conv2d(x, t.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, t.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


class GaussianBlur(nn.Module):
    """Depthwise k x k Gaussian blur (normalised to sum 1), reflect padding k // 2, size-preserving.

    LowKey applies it (k = 7, sigma = 3) in front of half of its ensemble. (N, C, H, W) -> same;
    needs H, W > k // 2.
    """

    taps: torch.Tensor  # buffer

    def __init__(self, kernel_size: int = 7, sigma: float = 3.0):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.kernel_size, self.sigma = kernel_size, float(sigma)
        self.register_buffer("taps", gaussian_taps(kernel_size, sigma), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, self.taps)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"
