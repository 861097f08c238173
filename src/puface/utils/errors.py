"""Exception types. Every error a user can cause derives from `PufaceError` so the CLI can print
one clear line instead of a traceback; a missing dependency of puface's own is an ImportError saying what to pip
install wherever puface is imported (`missing_base_dependency`, `install_missing_base_dependency_hints`)."""

from __future__ import annotations

import os
import re
import sys
from importlib.machinery import ModuleSpec, SourceFileLoader, SourcelessFileLoader
from pathlib import Path
from types import ModuleType
from zipimport import zipimporter


#: Control characters (C0 and DEL) as `shown_path` writes them, and the bytes of a file name that is not UTF-8
#: (U+DC80..U+DCFF: `os.fsdecode`'s surrogate escapes of bytes 0x80..0xFF) as \\xNN of the byte.
_ESCAPES = {**{c: f"\\x{c:02x}" for c in (*range(32), 127)}, 9: "\\t", 10: "\\n", 13: "\\r",
            **{0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)}}


def shown_path(path: str | Path) -> str:
    """A path as a one-line message prints it: control characters (a newline or tab in a file name) escaped as \\n,
    \\t, \\r or \\xNN, so a report keeps one line per file, and a byte of a name that is not UTF-8 as \\xNN (so
    stdout and stderr print it alike, as valid text); other characters as they are."""
    return str(path).translate(_ESCAPES)


class PufaceError(Exception):
    """Base class for errors caused by input, configuration or environment (not by a bug)."""


class ImageReadError(PufaceError):
    """An image file could not be decoded. `path` names the file, `reason` says why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{shown_path(self.path)}: {reason}")


class ImageWriteError(PufaceError):
    """An image could not be written."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{shown_path(self.path)}: {reason}")


class MissingDependencyError(PufaceError):
    """A needed package or asset is not installed; the message says which `pip install` fixes it."""


class MissingBaseDependencyError(MissingDependencyError, ImportError):
    """One of puface's own dependencies (torch, numpy, ...) is not installed: an ImportError too, so Python code that
    guards `import puface`'s API with `except ImportError` sees it (`missing_base_dependency`)."""


# import name -> distribution name of puface's own dependencies that code imports directly (the model packages
# are found by path, and say so themselves: models.weights.package_dir); click is imported before any command runs
BASE_IMPORTS = {
    "torch": "torch",
    "numpy": "numpy",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "tqdm": "tqdm",
    "onnx": "onnx",
    "safetensors": "safetensors",
    "matplotlib": "matplotlib",
    "tomli": "tomli",
}


def missing_base_dependency(exc: ModuleNotFoundError) -> MissingBaseDependencyError | None:
    """The `MissingBaseDependencyError` for an import of one of puface's own dependencies that failed because the
    package is absent (`pip install --no-deps`, a venv without torch), naming the pip requirement as
    puface's metadata states it; None when `exc` is about any other module (a bug: let it surface), or about a
    submodule of a package that is installed ('numpy._core' under numpy 1: installing it would change nothing). The CLI
    prints it as one line; `puface.<api name>` raises it."""
    top = (exc.name or "").partition(".")[0]
    dist = BASE_IMPORTS.get(top)
    if dist is None or (exc.name != top and _importable(top)):
        return None  # (a part of an installed package is missing: a broken or mismatched install, as its error says)
    spec = dist
    try:
        from importlib.metadata import PackageNotFoundError, requires

        for req in requires("puface") or []:  # e.g. "torch>=2.1", "tomli>=2.0; python_version < '3.11'"
            head = req.split(";")[0].strip()
            name = re.match(r"[A-Za-z0-9._-]*", head)
            if name and name.group().lower() == dist.lower() and "extra ==" not in req:
                spec = head
    except PackageNotFoundError:  # a source tree that is not installed: the bare name
        pass
    what = "PyTorch (the Python package 'torch')" if dist == "torch" else f"the Python package {dist!r}"
    hint = "  (for a CUDA build, the command at https://pytorch.org/get-started/locally/)" if dist == "torch" else ""
    err = MissingBaseDependencyError(f"{what} is not installed; puface needs it: pip install '{spec}'{hint}")
    err.name = top  # ImportError's own field: the module that is missing
    return err


def _importable(name: str) -> bool:
    """Whether top-level package `name` is installed (found without importing it)."""
    from importlib.util import find_spec

    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _exec_saying_what_to_install(exec_module, module: ModuleType) -> None:
    """Runs `exec_module(module)`; a ModuleNotFoundError of one of puface's own dependencies becomes
    `missing_base_dependency`'s error (any other: a bug, raised as it is)."""
    try:
        exec_module(module)
    except ModuleNotFoundError as e:
        missing = missing_base_dependency(e)
        if missing is None:
            raise
        raise missing from None


class _SourceLoader(SourceFileLoader):
    def exec_module(self, module: ModuleType) -> None:
        _exec_saying_what_to_install(super().exec_module, module)


class _BytecodeLoader(SourcelessFileLoader):
    def exec_module(self, module: ModuleType) -> None:
        _exec_saying_what_to_install(super().exec_module, module)


class _ZipLoader(zipimporter):
    """A zip archive's loader (a zipapp, a wheel on sys.path) for one folder of it, as `zipimporter` is."""

    def exec_module(self, module: ModuleType) -> None:
        _exec_saying_what_to_install(super().exec_module, module)


class _MissingBaseDependencyHints:
    """A finder on `sys.meta_path` for puface's own modules (`puface.*`): it finds nothing itself, it takes the spec
    the other finders give and swaps a .py or .pyc file's loader, or a zip archive's (a zipapp, a wheel on sys.path),
    for the same loader whose module, if an import of a base dependency in it fails, raises
    `missing_base_dependency`'s error. So `import puface.purifier` (any module)
    in a venv without torch says what to pip install, as `puface.<api name>` and the CLI do; nothing is imported
    early (torch is imported where it was). Told apart by `puface_hints`, not by class: a fresh copy of this module
    (`importlib.reload`, `sys.modules` cleared and puface imported again) has a class of its own."""

    puface_hints = True

    def find_spec(self, fullname: str, path=None, target: ModuleType | None = None) -> ModuleSpec | None:
        if not fullname.startswith("puface."):
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            # (another of these finders, left by an earlier copy of this module, would ask this one back: no end)
            spec = None if getattr(finder, "puface_hints", False) or find is None else find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader  # another kind (an extension's, a frozen application's) is left as it is
        if type(loader) is SourceFileLoader:
            spec.loader = _SourceLoader(loader.name, loader.path)
        elif type(loader) is SourcelessFileLoader:
            spec.loader = _BytecodeLoader(loader.name, loader.path)
        elif type(loader) is zipimporter:  # (the archive's directory is read once: zipimport caches it per archive)
            spec.loader = _ZipLoader(os.path.join(loader.archive, loader.prefix))
        return spec


def install_missing_base_dependency_hints() -> None:
    """Puts the `_MissingBaseDependencyHints` finder first on `sys.meta_path` (`import puface` calls it), in place of
    any an earlier copy of this module put there: one at a time."""
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "puface_hints", False)]
    sys.meta_path.insert(0, _MissingBaseDependencyHints())


class ConfigError(PufaceError):
    """A configuration file or option is invalid."""


class MissingFileError(PufaceError):
    """A file a setting names (a purifier checkpoint, a face model file) does not exist. `named`: the setting's
    text as written, so a config's error can add the command its comments give for making that file."""

    def __init__(self, named: str | Path, message: str):
        self.named = str(named)
        super().__init__(message)


class CloakNotCachedError(PufaceError):
    """A cloak was asked for with `cached_only` and is not in the cache. `missing` counts the absent
    cloaks of that call; `path` names the first input image without one, `cache_file` where it would be."""

    def __init__(self, attack: str, path: str | Path, cache_file: str | Path, missing: int):
        self.path, self.cache_file, self.missing = Path(path), Path(cache_file), missing
        super().__init__(
            f"{self.path}: no cached {attack} cloak (expected at {self.cache_file}; {missing} file(s) of this "
            "set lack one); make them first (`puface train-purifier --config FILE --prepare-only`) or "
            "drop --cached-cloaks-only / data.cached_only"
        )
