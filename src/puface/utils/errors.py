"""Exception types. Every error a user can cause derives from `PufaceError` so the CLI can print
one clear line instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class PufaceError(Exception):
    """Base class for errors caused by input, configuration or environment (not by a bug)."""


class ImageReadError(PufaceError):
    """An image file could not be decoded. `path` names the file, `reason` says why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageWriteError(PufaceError):
    """An image could not be written."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingDependencyError(PufaceError):
    """A needed package or asset is not installed; the message says which `pip install` fixes it."""


class ConfigError(PufaceError):
    """A configuration file or option is invalid."""


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
