"""Where puface keeps its cache (converted weights, downloaded default data, cloak caches), and where the
installed package keeps its shipped weights."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def puface_home() -> Path:
    """`$PUFACE_HOME`, else `$XDG_CACHE_HOME/puface`, else `~/.cache/puface`. Created on demand."""
    env = os.environ.get("PUFACE_HOME")
    if env:
        home = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        home = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "puface"
    home.mkdir(parents=True, exist_ok=True)
    return home


def package_weights(name: str) -> Path:
    """A file of the installed package's `weights/` folder (the shipped purifiers and detectors)."""
    return Path(str(resources.files("puface") / "weights" / name))


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache, created on demand."""
    d = puface_home().joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d
