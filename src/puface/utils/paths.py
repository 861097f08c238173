"""Where puface keeps its cache (converted weights, downloaded default data, cloak caches)."""

from __future__ import annotations

import os
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


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache, created on demand."""
    d = puface_home().joinpath(*parts)
    d.mkdir(parents=True, exist_ok=True)
    return d
