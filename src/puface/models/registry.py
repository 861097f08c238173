"""Registry of face embedders. Model modules register themselves on import (see `_MODULES`)."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..utils.device import resolve_device
from ..utils.paths import current_folder
from ..utils.registry import Registry
from .base import FaceEmbedder

EMBEDDERS = Registry("embedder")

# Modules that call EMBEDDERS.register(...) at import time.
_MODULES = ("puface.models.dlib_resnet", "puface.models.sface")
_loaded = False


def _load_builtin() -> None:
    """Import the built-in model modules (they register themselves), once; `puface.models` itself stays
    light to import."""
    global _loaded
    if not _loaded:
        for mod in _MODULES:
            importlib.import_module(mod)
        _loaded = True


def list_embedders() -> list[str]:
    """Names of the built-in embedders."""
    _load_builtin()
    return EMBEDDERS.names()


def distinct_embedders() -> list[str]:
    """Names of the built-in embedders, one per network: without the variants that run a listed one on another face
    layout (`variant_of`, e.g. sface-arcface112), which on a chip of the default layout see a misaligned face."""
    _load_builtin()
    return [e.name for e in EMBEDDERS if not e.info.get("variant_of")]


def create_embedder(name: str, device: str | None = None, **kwargs) -> FaceEmbedder:
    """Build a built-in embedder by name (weights come from installed packages, cached once)."""
    _load_builtin()
    emb = EMBEDDERS.create(name, **kwargs)
    return emb.to(resolve_device(device)) if device else emb


def model_path(spec: str) -> Path:
    """The file a model spec names: the path itself when it exists, else `$PUFACE_MODELS/<spec>` when that
    exists (a folder of the user's model files, as `$PUFACE_DATA` is for data sets, so configs can name a
    model file without a machine's path), else the path as given."""
    import os

    p = Path(spec).expanduser()
    home = os.environ.get("PUFACE_MODELS")
    if not p.exists() and home and (Path(home) / spec).is_file():
        return Path(home) / spec
    return p


def _not_found(spec: str) -> str:
    """Where a model file `spec` was looked for, and what to do, in one line."""
    import os

    home = os.environ.get("PUFACE_MODELS")
    where = f"$PUFACE_MODELS ({home})" if home else "$PUFACE_MODELS (not set)"
    looked = "" if Path(spec).expanduser().is_absolute() else f", neither in the current folder ({current_folder()}) " \
        f"nor in {where}"
    return (f"{spec}: no such model file{looked}; it is a face model file of your own (ONNX or TorchScript): give its "
            "path, or set PUFACE_MODELS to the folder that holds it")


def load_embedder(spec: str, device: str | None = None, **kwargs) -> FaceEmbedder:
    """A registry name, or a user's ONNX / TorchScript face model file (see `models.custom`): a path, or a
    file name in `$PUFACE_MODELS`."""
    _load_builtin()
    if spec in EMBEDDERS:
        return create_embedder(spec, device=device, **kwargs)
    p = model_path(spec)
    if p.suffix.lower() in (".onnx", ".pt", ".pth", ".pt2", ".ts", ".torchscript") or p.exists():
        from .custom import MissingModelFileError, load_custom_embedder

        if not p.exists():
            raise MissingModelFileError(spec, _not_found(spec))

        emb = load_custom_embedder(p, **kwargs)
        return emb.to(resolve_device(device)) if device else emb
    EMBEDDERS.get(spec)  # raises a clear "unknown embedder" error
    raise AssertionError("unreachable")  # pragma: no cover
