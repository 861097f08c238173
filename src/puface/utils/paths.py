"""Where puface keeps its cache (converted weights, downloaded default data, cloak caches), and where the
installed package keeps its shipped weights."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import PufaceError


def puface_home() -> Path:
    """`$PUFACE_HOME`, else `$XDG_CACHE_HOME/puface`, else `~/.cache/puface`. Created on demand."""
    env = os.environ.get("PUFACE_HOME")
    where = "$PUFACE_HOME" if env else "the cache folder"
    try:
        if env:
            home = Path(env).expanduser()
        else:
            xdg = os.environ.get("XDG_CACHE_HOME")
            home = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "puface"
        home.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as e:  # a file in the way, no such user (~nouser), a read-only place
        raise PufaceError(f"{where} ({env or 'XDG_CACHE_HOME / ~/.cache'}) cannot be used as a folder "
                          f"({getattr(e, 'strerror', None) or e}); set $PUFACE_HOME to a writable folder") from None
    return home


def package_weights(name: str) -> Path:
    """A file of the installed package's `weights/` folder (the shipped purifiers and detectors)."""
    return Path(str(resources.files("puface") / "weights" / name))


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache, created on demand."""
    d = puface_home().joinpath(*parts)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PufaceError(
            f"{d}: cannot create this cache folder ({e.strerror or e}); set $PUFACE_HOME to a writable folder"
        ) from None
    return d
