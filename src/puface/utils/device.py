"""Device resolution: the one rule for every `--device` / `device=` in puface."""

from __future__ import annotations

import torch

from .errors import PufaceError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None or "auto" -> CUDA when available, else CPU; anything else as `torch.device` reads it.

    Raises `PufaceError` for a device string torch does not know, or CUDA asked for where there is none.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise PufaceError(f"invalid device {device!r} ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PufaceError(f"device {str(device)!r} requested but CUDA is not available (use --device cpu)")
    return dev
