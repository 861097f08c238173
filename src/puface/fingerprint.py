"""Content fingerprints of modules, the part of cache keys that tells two models of one name apart."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["module_fingerprint"]


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's state dict: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        t = v.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
