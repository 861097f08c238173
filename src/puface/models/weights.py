"""Find model files inside installed registry packages, check them by sha256, cache conversions.

Nothing is ever downloaded: a missing package raises `MissingDependencyError` naming the
`pip install` that fixes it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

import torch

from ..utils.errors import MissingDependencyError, PufaceError
from ..utils.paths import cache_dir, create_temporary


def package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some need setuptools to import)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the Python package {pip_name!r} is not installed; fix: pip install {pip_name}"
            f"  (it is one of puface's own dependencies: reinstalling puface brings it back)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def package_file(module: str, pip_name: str, relpath: str, sha256: str | None = None) -> Path:
    """Path of `relpath` inside an installed package, checked against `sha256` when given."""
    path = package_dir(module, pip_name) / relpath
    if not path.is_file():
        raise MissingDependencyError(
            f"{path} is missing from {pip_name}; reinstall: pip install --force-reinstall {pip_name}"
        )
    if sha256 is not None:
        verify_sha256(path, sha256)
    return path


_verified: set[tuple[str, float, str]] = set()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise if the file's sha256 differs from `expected` (cached per path+mtime within a process)."""
    key = (str(path), path.stat().st_mtime, expected)
    if key in _verified:
        return
    digest = sha256_of(path)
    if digest != expected:
        raise PufaceError(
            f"{path}: sha256 {digest} differs from the expected {expected}; "
            "the file is corrupt or another version"
        )
    _verified.add(key)


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file (`data.fetch.file_digest`, the one home of file hashing)."""
    from ..data.fetch import file_digest

    return file_digest(path)


def cached_state_dict(
    name: str, source_sha256: str, convert: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Return a converted state dict, converting once and caching it under `$PUFACE_HOME/weights`.

    The cache file name carries the source's sha256, so a different source never reuses it. Written
    atomically; loaded with `weights_only=True`.
    """
    path = cache_dir("weights") / f"{name}-{source_sha256[:16]}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a truncated cache file: convert again
            path.unlink(missing_ok=True)
    state = convert()
    fd, tmp = create_temporary(path, thread=False)  # a new file: never through a link planted at its name
    try:
        with open(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return state
