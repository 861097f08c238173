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
