"""Evaluation metrics: FaceCure's attack success rate and normal accuracy, summaries over users,
and image quality (PSNR, SSIM) between two batches.

Definitions (FaceCure section 5; PuFace calls the cloak's success rate ASR):

* ASR = share of the protected user's clean test images that the trained model does NOT classify
  as the user (1.0 = the cloak fully protects the user).
* normal accuracy = top-1 accuracy on the clean test images of every other identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def attack_success_rate(predicted: Sequence[Hashable], true: Sequence[Hashable], user: Hashable) -> float:
    """Share (0..1) of the user's test images (true == user) predicted as someone else. NaN if none."""
    p, t = np.asarray(predicted, dtype=object), np.asarray(true, dtype=object)
    if p.shape != t.shape:
        raise ValueError(f"predicted and true labels differ in length ({len(p)} vs {len(t)})")
    mine = t == user
    if not mine.any():
        return float("nan")
    return float(np.mean(p[mine] != user))


def normal_accuracy(predicted: Sequence[Hashable], true: Sequence[Hashable], user: Hashable | None) -> float:
    """Top-1 accuracy (0..1) on the test images of every identity except `user`. NaN if none."""
    p, t = np.asarray(predicted, dtype=object), np.asarray(true, dtype=object)
    if p.shape != t.shape:
        raise ValueError(f"predicted and true labels differ in length ({len(p)} vs {len(t)})")
    others = t != user if user is not None else np.ones(len(t), dtype=bool)
    if not others.any():
        return float("nan")
    return float(np.mean(p[others] == t[others]))


def protocol_scores(predicted: Sequence[Hashable], true: Sequence[Hashable], user: Hashable) -> dict[str, float | int]:
    """{asr, normal_acc, user_acc, n_user_test, n_other_test} for one protected user."""
    t = np.asarray(true, dtype=object)
    asr = attack_success_rate(predicted, true, user)
    return {
        "asr": asr,
        "normal_acc": normal_accuracy(predicted, true, user),
        "user_acc": 1.0 - asr if not math.isnan(asr) else float("nan"),
        "n_user_test": int(np.sum(t == user)),
        "n_other_test": int(np.sum(t != user)),
    }


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of finite values."""

    mean: float
    std: float
    n: int

    def format(self, percent: bool = True, digits: int = 1) -> str:
        if self.n == 0:
            return "-"
        k = 100.0 if percent else 1.0
        if self.n == 1:
            return f"{self.mean * k:.{digits}f}"
        return f"{self.mean * k:.{digits}f} ± {self.std * k:.{digits}f}"


def summarise(values: Iterable[float]) -> Summary:
    """Summary of the finite values (NaNs, e.g. a user without test images, are left out)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    if v.size == 0:
        return Summary(float("nan"), float("nan"), 0)
    return Summary(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size))


# ---------------------------------------------------------------- image quality

def psnr(x: torch.Tensor, y: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB between (N, 3, H, W) batches in [0, peak]; inf where identical."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(peak**2 / mse)


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5, peak: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; Gaussian window 11, sigma 1.5, K1 .01, K2 .03), averaged over
    the RGB channels and valid positions. Inputs (N, 3, H, W) in [0, peak]; returns (N,) in [-1, 1]."""
    x, y = x.float(), y.float()
    n, c, h, w = x.shape
    size = min(window, h, w)
    g = _gaussian_window(size, sigma, x.device, x.dtype)
    kh, kw = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


__all__ = [
    "attack_success_rate", "normal_accuracy", "protocol_scores", "Summary", "summarise", "psnr", "ssim",
]
