"""Image conversion and 8-bit rounding: the one definition of each.

Conventions: a *tensor* image is float RGB in [0, 1], (3, H, W) or a batch (N, 3, H, W); a *uint8*
tensor holds 0..255 in the same layout; an *array* image is numpy uint8 RGB (H, W, 3), what image
files decode to. Rounding is to nearest (ties to even), as saving a PNG does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["to_uint8", "to_float", "quantize", "image_to_tensor", "tensor_to_image"]

_GREY_LEVELS = torch.arange(256, dtype=torch.float32) / 255.0  # k / 255 as the CPU rounds it


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] tensor of any layout -> uint8 0..255 (clamped, rounded), same layout, on the CPU."""
    return images.detach().clamp(0, 1).mul(255.0).round().to(torch.uint8).cpu()


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 tensor -> float32 in [0, 1], same layout (float input is returned as it is)."""
    if images.dtype != torch.uint8:
        return images
    return images.float().div_(255.0)


def check_unit_images(images: torch.Tensor, who: str, uint8: bool = False) -> torch.Tensor:
    """`images` checked as float RGB in [0, 1], (N, 3, H, W), for a model's input (returned as they are; the model
    casts them to its own dtype): not a tensor, an integer tensor or values plainly outside [0, 1] (e.g. 0..255
    floats; a loose bound, so optimisation steps just past the range pass) or NaN / infinite values raise ValueError
    naming `who` and the fix. uint8: a uint8 tensor is taken as 0..255 and returned as float (`to_float`)."""
    if not torch.is_tensor(images):  # a numpy array, a PIL image, a list: not guessed at
        got, fix = type(images).__name__, ("a uint8 (H, W, 3) array or PIL image: "
                                          "puface.utils.images.image_to_tensor(np.asarray(img))[None]")
        if isinstance(images, np.ndarray):
            got += f" {images.dtype} {images.shape}"
            if images.dtype.kind == "f":  # already the layout and range, or one permute from it
                fix = "torch.from_numpy(a)" + (".permute(0, 3, 1, 2)" if images.ndim == 4 and images.shape[-1] == 3
                                               and images.shape[1] != 3 else "")
        raise ValueError(f"{who}: expected a torch tensor of float RGB images (N, 3, H, W) in [0, 1], got {got} "
                         f"({fix})")
    if uint8:
        images = to_float(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{who}: expected float RGB images (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{who}: expected a float tensor in [0, 1], got dtype {images.dtype} "
                         "(uint8 images: puface.utils.images.to_float(x), i.e. x.float() / 255)")
    if images.numel():
        lo, hi = torch.aminmax(images.detach())  # NaN anywhere makes both NaN
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            bad = int((~torch.isfinite(images.detach())).sum())
            raise ValueError(f"{who}: expected values in [0, 1], got {bad} NaN or infinite value(s) "
                             f"in {tuple(images.shape)}")
        if float(hi) > 1.5 or float(lo) < -0.5:
            raise ValueError(f"{who}: expected values in [0, 1], got [{float(lo):.3g}, {float(hi):.3g}] "
                             "(0..255 images: divide by 255)")
    return images


def check_batch_size(batch_size: Any, who: str) -> int:
    """A batched call's `batch_size` (images per forward pass) as an int >= 1 (a numpy or 0-d torch number too);
    anything else (0, negative, a fraction, a bool of any library: True would be 1, text: slicing with it dropped
    images silently) is a ValueError naming `who`."""
    value = batch_size
    if isinstance(value, (np.generic, torch.Tensor)) and value.ndim == 0:
        value = value.item()  # numpy's / torch's bool becomes a Python bool, refused below
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: batch_size must be an integer >= 1, got {batch_size!r}")
    return value


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to the 8-bit grid: round(255 x) / 255, float32, on the input's device.

    The grid values come from one CPU-computed table, so the result is bit-identical on every device
    and equal to `to_float(to_uint8(x))` (a GPU's k / 255 can differ in the last bit).
    """
    levels = images.detach().clamp(0, 1).mul(255.0).round().long()
    return _GREY_LEVELS.to(images.device)[levels]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 array (H, W, 3) -> float tensor (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """Float tensor (3, H, W) in [0, 1] (or uint8) -> uint8 array (H, W, 3), rounded to nearest."""
    t = tensor if tensor.dtype == torch.uint8 else to_uint8(tensor.float())
    return t.cpu().permute(1, 2, 0).contiguous().numpy()
