"""Where a config's data comes from: a folder, a named data set under `$PUFACE_DATA`, or the embedded set.

A data root (`[data] root` of a config, `--data` of a command) is resolved in this order:

1. an existing folder (absolute, or relative to the current folder: never to a config file's folder, though a
   config's `extends` is read from there);
2. `$PUFACE_DATA/<root>`: `$PUFACE_DATA` is a folder holding data sets by name (e.g. `lfw-chips150/`);
3. `$PUFACE_HOME/data/<root>`: where `puface data fetch` puts data sets when `$PUFACE_DATA` is not set;
4. a data set puface can fetch itself: where it already is (`johns`: the installed Debian package, the
   cache), else fetched on first use;
5. otherwise a `PufaceError` that says what the named data set is and how to get it.

Steps 1-4 without fetching are `find_data_root` (what `puface data list` and `puface data fetch` report).

No config names a machine's path: the benchmark configs name their data set (`root = "lfw-chips150"`)
and each machine says where it lives (`--data DIR` or `$PUFACE_DATA`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..utils.errors import MissingFileError, PufaceError
from ..utils.paths import current_folder

__all__ = ["DATASETS", "Dataset", "data_home", "find_data_root", "resolve_data_root"]


@dataclass(frozen=True)
class Dataset:
    """A data set configs can name: what it is, how to get it, and (when puface can) a fetch function."""

    name: str
    description: str
    how_to_get: str
    fetch: Callable[[], Path] | None = None
    find: Callable[[], Path | None] | None = None  # where a fetchable set already is on this machine, no download


def _fetch_johns() -> Path:
    from .johns import fetch_johns

    return fetch_johns()


def _find_johns() -> Path | None:
    from .johns import find_johns

    return find_johns()


DATASETS: dict[str, Dataset] = {
    "johns": Dataset(
        "johns",
        "dlib's example set: 5 people x 11 aligned 150x150 chips (public-domain dedication)",
        "fetched on first use from Debian's libdlib19.1 package (`puface data fetch johns`)",
        _fetch_johns,
        _find_johns,
    ),
    "lfw-chips150": Dataset(
        "lfw-chips150",
        "LFW (deep-funneled) people with >= 5 photos as dlib-aligned 150x150 face chips, "
        "one folder per person (the benchmark's copy holds 391 of them, 4,743 chips)",
        "`puface data fetch lfw` (downloads LFW deep-funneled, 111 MB, and cuts the chips with `puface align`); "
        "offline: `puface data fetch lfw --tarball lfw-deepfunneled.tgz`, or pass --data DIR / put the folder "
        "into $PUFACE_DATA",
    ),
    "lfw-arcface112": Dataset(
        "lfw-arcface112",
        "the lfw-chips150 photos aligned to the ArcFace 112x112 five-point layout "
        "(`puface align --template arcface112`), one folder per person",
        "`puface data fetch lfw --template arcface112` (offline: add --tarball lfw-deepfunneled.tgz), or "
        "`puface align LFW_PEOPLE/ lfw-arcface112/ --template arcface112`",
    ),
    "lfw-photos": Dataset(
        "lfw-photos",
        "the LFW (deep-funneled) photos of the people with >= 5 photos, 250x250, one folder per person: "
        "the photos lfw-chips150 was cut from ([data] photos of the published-photo configs)",
        "`puface data fetch lfw` keeps them next to the chips (offline: add --tarball lfw-deepfunneled.tgz)",
    ),
}


def data_home() -> Path | None:
    """`$PUFACE_DATA` (a folder of data sets by name), or None when it is not set."""
    env = os.environ.get("PUFACE_DATA")
    return Path(env).expanduser() if env else None


def find_data_root(root: str | Path) -> Path | None:
    """The folder a data root names when it is already on this machine (steps 1-4 of the module docstring,
    never fetching), else None."""
    p = Path(root).expanduser()
    if p.is_dir():
        return p
    home = data_home()
    if home is not None and not p.is_absolute() and (home / p).is_dir():
        return home / p
    if not p.is_absolute() and len(p.parts) == 1:
        from ..utils.paths import puface_home

        fetched = puface_home() / "data" / p
        if fetched.is_dir() and any(fetched.iterdir()):
            return fetched
    ds = DATASETS.get(str(root))
    return ds.find() if ds is not None and ds.find is not None else None


def _fetched_place(p: Path) -> str:
    """", nor in $PUFACE_HOME/data (its path)" where `find_data_root` looked for relative root `p` there (a one-part
    name: where `puface data fetch` puts data sets), else ""."""
    if len(p.parts) != 1:
        return ""
    from ..utils.paths import puface_home

    try:
        return f", nor in $PUFACE_HOME/data ({puface_home() / 'data'})"
    except PufaceError:  # (no usable cache folder: nothing was found there either)
        return ""


def resolve_data_root(root: str | Path | None) -> Path:
    """The folder a data root names (see the module docstring for the order)."""
    if root is None or str(root) == "":
        raise PufaceError("no data given: pass --data DIR (identity folders ROOT/<identity>/<image>) or set "
                          "[data] root in the config to a folder or a data set name "
                          f"({', '.join(sorted(DATASETS))})")
    found = find_data_root(root)
    if found is not None:
        return found
    p = Path(root).expanduser()
    home = data_home()
    ds = DATASETS.get(str(root))
    if ds is not None and ds.fetch is not None:
        return ds.fetch()
    if p.exists():
        raise PufaceError(f"{p}: not a folder (expected identity folders ROOT/<identity>/<image>)")
    where = f"$PUFACE_DATA ({home})" if home is not None else "$PUFACE_DATA (not set)"
    if ds is not None:
        raise PufaceError(f"data set {ds.name!r} not found: not a folder here, not in {where}{_fetched_place(p)}. "
                          f"It is {ds.description}. "
                          f"To get it: {ds.how_to_get}.")
    # a relative root is read from the working folder, while `extends` is read from the config's: say which, and
    # every other place looked in (`find_data_root`)
    why = "no such folder" if p.is_absolute() else (
        f"not a folder under the current folder {current_folder()}, which a relative path is read from (not the config "
        f"file's folder, nor an extended config's), nor in {where}{_fetched_place(p)}")
    # MissingFileError: a config's error adds the command its comments give for making the folder (`entry_errors`)
    raise MissingFileError(root, f"{root}: data folder not found: {why}; pass --data DIR, "
                           "a folder of identity sub-folders ROOT/<identity>/<image>")
