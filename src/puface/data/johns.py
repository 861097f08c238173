"""The embedded default data: dlib's "johns" set, 5 people x 11 aligned 150x150 face chips.

Source: Debian's binary package `libdlib19.1` (examples/johns, public-domain dedication in
`LICENSE_FOR_EXAMPLE_PROGRAMS.txt`). Found, in order: the installed package's doc folder; a copy
already unpacked into `$PUFACE_HOME/data/johns`; `apt-get download libdlib19.1` + `dpkg -x` into
the cache. Nothing is committed to the project or shipped in the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from ..utils.errors import PufaceError
from ..utils.paths import cache_dir

SYSTEM_DIR = Path("/usr/share/doc/libdlib19.1/examples/johns")
IDENTITIES = ("John_Salley", "John_Savage", "John_Schneider", "John_Shimkus", "John_Simm")
IMAGES_PER_IDENTITY = 11

HOW_TO_POINT = (
    "point --data at any folder of identity sub-folders (ROOT/<identity>/<image>), "
    "e.g. --data ~/faces"
)


def _complete(d: Path) -> bool:
    return d.is_dir() and all(
        (d / name).is_dir() and len(list((d / name).glob("*.jpg"))) >= IMAGES_PER_IDENTITY for name in IDENTITIES
    )


def cached_johns_dir() -> Path:
    return cache_dir("data") / "johns"


def find_johns() -> Path | None:
    """The johns folder if it is already on this machine, else None (no download)."""
    for d in (SYSTEM_DIR, cached_johns_dir()):
        if _complete(d):
            return d
    return None


def fetch_johns(quiet: bool = True) -> Path:
    """Return the johns folder, unpacking it from Debian's libdlib19.1 into the cache if needed.

    Raises `PufaceError` with instructions when neither the package files nor apt are available.
    """
    found = find_johns()
    if found is not None:
        return found
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise PufaceError(
            f"the default 'johns' data needs Debian's apt-get and dpkg, which are not here; {HOW_TO_POINT}"
        )
    target = cached_johns_dir()
    with tempfile.TemporaryDirectory(prefix="puface-johns-") as tmp:
        tmpd = Path(tmp)
        try:
            subprocess.run(
                ["apt-get", "download", "libdlib19.1"],
                cwd=tmpd, check=True, capture_output=quiet, timeout=300,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            detail = getattr(e, "stderr", b"") or b""
            raise PufaceError(
                "could not download Debian's libdlib19.1 with apt-get "
                f"({detail.decode(errors='replace').strip().splitlines()[-1] if detail else e}); "
                f"run `apt-get update` first, or {HOW_TO_POINT}"
            ) from None
        debs = sorted(tmpd.glob("libdlib19.1_*.deb"))
        if not debs:
            raise PufaceError(f"apt-get download produced no libdlib19.1 .deb; {HOW_TO_POINT}")
        unpack = tmpd / "x"
        try:
            subprocess.run(["dpkg", "-x", str(debs[0]), str(unpack)], check=True, capture_output=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            raise PufaceError(f"could not unpack {debs[0].name} with dpkg -x ({e}); {HOW_TO_POINT}") from None
        src = unpack / SYSTEM_DIR.relative_to("/")
        if not _complete(src):
            raise PufaceError(f"{debs[0].name} does not contain examples/johns as expected; {HOW_TO_POINT}")
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        lic = unpack / "usr/share/doc/libdlib19.1/examples/LICENSE_FOR_EXAMPLE_PROGRAMS.txt"
        if lic.is_file():
            shutil.copy2(lic, staging / "LICENSE_FOR_EXAMPLE_PROGRAMS.txt")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target
