"""Content fingerprints, the parts of cache keys that tell two models or two images apart.

* `module_fingerprint`: a module's weights (two models of one name trained differently differ).
* `image_digest`: one float image's exact pixels (an attack's input; its cloak's cache key).
* `content_hash`: one uint8 image's pixels (the evaluation's cache of defended images, embeddings).
* `image_seed`: a 63-bit integer from (tag, seed, one image's uint8 pixels): per-image random choices that
  do not depend on the batch (the `noise` defense's noise, the `random` defense's branch).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from .images import to_uint8

__all__ = ["module_fingerprint", "image_digest", "content_hash", "content_hashes", "image_seed"]


def module_fingerprint(module: torch.nn.Module) -> str:
    """sha256 (first 16 hex digits) of a module's state dict: names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        t = v.detach().to("cpu").contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def image_digest(image: torch.Tensor) -> str:
    """sha256 (hex) of one image's float32 pixels and shape."""
    t = image.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def content_hash(image: torch.Tensor | np.ndarray) -> str:
    """sha256 (32 hex digits) of a uint8 image's shape and bytes (any shape: a whole uint8 set too, hashed in place
    without a copy of its bytes)."""
    a = image.cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"content_hash needs uint8 pixels, got {a.dtype}")
    h = hashlib.sha256(str(a.shape).encode())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()[:32]


def content_hashes(images: torch.Tensor) -> list[str]:
    """`content_hash` of each image of a uint8 batch (N, 3, H, W)."""
    return [content_hash(im) for im in images]


def image_seed(tag: str, seed: int, image: torch.Tensor) -> int:
    """A 63-bit integer from sha256(tag, seed, one float [0, 1] image's uint8 pixels (3, H, W)): the same
    image gets the same number whatever batch it is in."""
    h = hashlib.sha256(f"{tag}|{seed}|".encode() + to_uint8(image).numpy().tobytes()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)
