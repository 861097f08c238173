"""Seeds derived from names and numbers, the same on every machine and Python run."""

from __future__ import annotations

import hashlib

__all__ = ["stable_seed"]


def stable_seed(*parts: object) -> int:
    """A 64-bit seed derived from `parts` (their `str` joined), independent of Python's hash salt.

    A file name that is not UTF-8 (Python holds its bytes as lone surrogates) counts by those bytes."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(h[:8], "little")
