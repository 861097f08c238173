"""Where puface keeps its cache (converted weights, downloaded default data, cloak caches), and where the
installed package keeps its shipped weights."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from importlib import resources
from pathlib import Path

from .errors import PufaceError

#: Flags to open a file for writing, made if missing, never through a link at its name (`os.open`; with O_APPEND,
#: O_TRUNC or O_EXCL added by the caller)
WRITE_NO_LINK = (os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))
#: How `create_temporary` opens a temporary: a new file only (never an existing file or a link, nor through one).
_TEMP_FLAGS = WRITE_NO_LINK | os.O_EXCL


def create_temporary(path: str | Path, thread: bool = True) -> tuple[int, Path]:
    """A new empty file beside `path` to write it atomically (then `os.replace(tmp, path)`): an open descriptor
    (write only) and its name, `.NAME.PID.THREAD.tmp` (`thread` False: `.NAME.PID.tmp`), or, where that name exists (a
    file a killed process left, a link someone planted), the first free `.NAME.PID.THREAD-N.tmp`. Opened with
    O_CREAT | O_EXCL | O_NOFOLLOW, mode 0o666 less the umask: a link at the name is never written through, another
    file never truncated. The folder must exist."""
    path = Path(path)
    base = f".{path.name}.{os.getpid()}" + (f".{threading.get_ident()}" if thread else "")
    for n in range(1000):
        tmp = path.with_name(f"{base}{f'-{n}' if n else ''}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}", str(tmp))


def current_folder() -> str:
    """The current folder, as a message names it: its path, or "(deleted)" where it no longer exists (`Path.cwd`
    raises there: a message that names it must not fail), "(unknown: REASON)" where it cannot be read."""
    try:
        return str(Path.cwd())
    except OSError as e:
        return "(deleted)" if e.errno == errno.ENOENT else f"(unknown: {e.strerror or e})"


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


def package_file(*parts: str) -> Path:
    """A file of the installed package (`"weights", NAME`; `"configs", NAME`) as a file on disk: itself, or, for a
    puface imported from a zip archive, a copy extracted once into the cache (`package/<sha256 prefix>/...`). A file
    the package does not hold is its path inside the package (not a file: the caller says what is missing)."""
    res = resources.files("puface").joinpath(*parts)
    if isinstance(res, Path) or not res.is_file():  # a package on a file system, or no such file
        return Path(str(res))
    data = res.read_bytes()
    out = cache_dir("package", hashlib.sha256(data).hexdigest()[:16]).joinpath(*parts)
    if not (out.is_file() and out.stat().st_size == len(data)):
        # atomic: a reader never sees a partial copy; one temporary file per process and thread (two threads of one
        # process extracting the file at once each rename their own whole copy)
        tmp = None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = create_temporary(out)
            with open(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, out)
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise PufaceError(f"{out}: cannot extract puface's packaged {'/'.join(parts)} from its zip archive here "
                              f"({e.strerror or e}); set $PUFACE_HOME to a writable folder") from None
    return out


def package_weights(name: str) -> Path:
    """A file of the installed package's `weights/` folder (the shipped purifiers and detectors), on disk even when
    puface is imported from a zip archive (`package_file`)."""
    return package_file("weights", name)


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
