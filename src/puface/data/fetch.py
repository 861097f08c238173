"""Downloading a data set archive: resumable (HTTP Range), checksum-verified, atomic; and unpacking it.

`download(url, dest, md5=...)` streams into a hidden `.part` file next to `dest`; an interrupted download
resumes from the bytes already there (`Range: bytes=N-`; a server that ignores ranges restarts it), the
whole file is checked against its sha256 or md5, and only then renamed to `dest`. A mismatch deletes the
partial file and says so. `extract_tar` unpacks an archive into a temporary folder and renames it into
place; tarfile's "data" filter keeps every member inside the folder (an absolute name loses its leading "/", a
member or link that would land outside is refused).

LFW (`LFW_URL`, `LFW_MD5`): the official deep-funneled archive (111 MB, 13,233 photos of 5,749 people);
`select_identities` picks the people with enough photos. `puface data fetch lfw` (cli) chains these with
`puface align`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

from ..utils.errors import PufaceError
from ..utils.paths import WRITE_NO_LINK, cache_dir

__all__ = ["LFW_URL", "LFW_MD5", "LFW_ARCHIVE", "download", "extract_tar", "file_digest", "select_identities",
           "data_dir", "offline_help"]

LFW_URL = "http://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
LFW_MD5 = "68331da3eb755a505a502b5aacb3c201"  # the published digest (also torchvision's)
LFW_ARCHIVE = "lfw-deepfunneled.tgz"
CHUNK = 1 << 20


def data_dir() -> Path:
    """Where fetched data sets go: `$PUFACE_DATA` when set (so configs find them by name), else
    `$PUFACE_HOME/data` (which `resolve_data_root` also searches)."""
    env = os.environ.get("PUFACE_DATA")
    if env:
        d = Path(env).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        return d
    return cache_dir("data")


def offline_help(archive: str = LFW_ARCHIVE, url: str = LFW_URL, md5: str = LFW_MD5) -> str:
    return (f"Offline? On a machine with internet download {url} ({archive}, 111 MB, md5 {md5}), copy it here and "
            f"run `puface data fetch lfw --tarball {archive}`; or, if you have the chips already, pass --data DIR "
            "or put the folder (e.g. lfw-chips150/) into $PUFACE_DATA")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file ("sha256" or "md5"), read in 1 MB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, sha256: str | None, md5: str | None) -> None:
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = file_digest(path, algo)
            if got.lower() != want.lower():
                raise PufaceError(f"{path.name}: {algo} checksum mismatch (expected {want}, got {got})")


def _range_start(content_range: str | None) -> int | None:
    """The first byte a 206 answer holds (`Content-Range: bytes START-END/TOTAL`), None when not stated."""
    try:
        unit, _, spec = (content_range or "").strip().partition(" ")
        return int(spec.split("-", 1)[0]) if unit.lower() == "bytes" else None
    except ValueError:
        return None


def download(url: str, dest: str | Path, *, sha256: str | None = None, md5: str | None = None,
             timeout: float = 60.0, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Download `url` to `dest`, resuming a partial download, verified against `sha256` / `md5`.

    Returns `dest`. An existing `dest` that matches the checksum is kept (no download). Raises
    `PufaceError` when the server cannot be reached (the message says what to do offline is up to the
    caller: see `offline_help`) or the checksum does not match (the partial file is deleted).
    """
    dest = Path(dest)
    say = log or (lambda m: print(m, file=sys.stderr))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.parent, lambda: say(f"another download into {dest.parent} is under way; waiting for it")):
        return _download(url, dest, sha256, md5, timeout, progress, say)


@contextlib.contextmanager
def _exclusive(folder: Path, on_wait: Callable[[], None]):
    """Hold an exclusive lock on `folder` while the block runs: two downloads into one folder (two processes or
    threads, e.g. two `puface data fetch lfw`) take turns instead of writing into one partial file, and the
    second then finds the file complete. No lock file is left behind."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _download(url: str, dest: Path, sha256: str | None, md5: str | None, timeout: float, progress: bool,
              say: Callable[[str], None]) -> Path:
    from tqdm import tqdm

    if dest.is_file():
        try:
            _check(dest, sha256, md5)
            return dest
        except PufaceError:
            say(f"{dest}: checksum does not match; downloading it again")
            dest.unlink()
    part = dest.with_name(f".{dest.name}.part")
    if part.is_symlink():
        raise _linked_part(part)
    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "puface", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the partial file is complete already
            resp = None
        else:
            raise PufaceError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PufaceError(f"cannot download {url} ({reason})") from None
    if resp is not None:
        with resp:
            resumed = resp.status == 206
            start = _range_start(resp.headers.get("Content-Range"))
            if resumed and start is not None and start != have:
                if start != 0:
                    raise PufaceError(f"cannot resume {url}: asked for the bytes from {have}, the server sent them "
                                      f"from {start}; delete {part} to download it again from the start")
                resumed = False  # the whole file, as a 206: write it from the start
            if have and not resumed:
                say(f"{url}: the server does not resume downloads; starting again")
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            if have:
                say(f"resuming {dest.name} at {have / 1e6:.1f} MB")
            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress,
                       file=sys.stderr)
            try:
                try:  # never through a link planted at the name (after the check above)
                    fd = os.open(part, WRITE_NO_LINK | (os.O_APPEND if resumed else os.O_TRUNC), 0o666)
                except OSError as e:
                    if e.errno == errno.ELOOP or part.is_symlink():
                        raise _linked_part(part) from None
                    raise
                with open(fd, "ab" if resumed else "wb") as f:
                    while True:
                        try:
                            block = resp.read(CHUNK)
                        except (OSError, urllib.error.URLError, ValueError, http.client.HTTPException) as e:
                            if isinstance(e, http.client.IncompleteRead) and e.partial:  # chunked: what came is sound
                                f.write(e.partial)
                            raise PufaceError(f"download of {url} interrupted after {f.tell() / 1e6:.1f} MB ({e}); "
                                              "run the same command again to resume") from None
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
                    f.flush()
                    os.fsync(f.fileno())
                    got = f.tell()
            except OSError as e:  # a full disk, a folder that cannot be written
                raise PufaceError(f"cannot write {part} ({e.strerror or e}); make room and run the same "
                                  "command again to resume") from None
            finally:
                bar.close()
            if total is not None and got < total:
                raise PufaceError(f"download of {url} interrupted after {got / 1e6:.1f} of {total / 1e6:.1f} MB; "
                                  "run the same command again to resume")
    try:
        _check(part, sha256, md5)
    except PufaceError as e:
        part.unlink(missing_ok=True)
        raise PufaceError(f"{e}; the downloaded file was deleted. Is the URL right (a mirror must serve the "
                          "identical file)?") from None
    os.replace(part, dest)
    return dest


def _linked_part(part: Path) -> PufaceError:
    return PufaceError(f"{part} is a link, not a partial download of puface's; refusing to write through it: delete "
                       "it and run the same command again")


def extract_tar(archive: str | Path, dest: str | Path, *, log: Callable[[str], None] | None = None) -> Path:
    """Unpack a .tar/.tgz into `dest` (atomically: a hidden temporary folder renamed when complete).
    An existing `dest` unpacked from the same archive (its size and time, recorded inside) is kept as it is;
    one unpacked from another archive is replaced."""
    archive, dest = Path(archive), Path(dest)
    st = archive.stat()
    stamp = f"{archive.resolve()}\t{st.st_size}\t{st.st_mtime_ns}\n"
    if dest.is_dir():
        try:
            if (dest / ".puface-archive").read_text() == stamp:
                return dest
        except OSError:
            pass
        shutil.rmtree(dest)  # unpacked from another archive (or before the stamp was kept): unpack again
    tmp = dest.with_name(f".{dest.name}.extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(tmp, filter="data")
            except TypeError:  # Python without extraction filters (< 3.10.12)
                for m in tf.getmembers():
                    if m.issym() or m.islnk() or Path(m.name).is_absolute() or ".." in Path(m.name).parts:
                        raise PufaceError(f"{archive}: unsafe member {m.name!r}") from None
                tf.extractall(tmp)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:  # zlib.error: corrupt deflate data in a .tgz
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno is not None:  # the folder written to (a full disk), not the archive
            raise PufaceError(f"{archive}: cannot unpack into {dest.parent} ({e.strerror or e}); make room there "
                              "and run the same command again") from None
        raise PufaceError(
            f"{archive}: cannot unpack ({e}); the archive is damaged: delete it and fetch it again"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".puface-archive").write_text(stamp)
    os.replace(tmp, dest)
    return dest


def select_identities(root: str | Path, dest: str | Path, min_images: int = 5) -> tuple[int, int]:
    """Link the identity folders of `root` with at least `min_images` images into `dest` (a folder of
    symbolic links, replaced atomically); returns (identities, images)."""
    from ..io.files import list_image_files

    root, dest = Path(root), Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ids = images = 0
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_image_files(d)
        if len(files) >= min_images:
            os.symlink(d.resolve(), tmp / d.name, target_is_directory=True)
            ids += 1
            images += len(files)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return ids, images
