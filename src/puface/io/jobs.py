"""Streaming folder-in / folder-out image jobs, shared by `cloak`, `purify` and `align`.

`plan_mirror` maps every image under an input folder to a path under the output folder (same
relative path, optionally renamed). `run_folder_job` then streams the files through a batch
function: decoding runs ahead in background threads, each finished batch is written at once
(atomically) by a writer thread, outputs that already exist are skipped (resume), a broken file
gets one line on stderr and does not stop the batch, and a summary lists the failures at the end.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import os
import struct
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence, TypedDict, TypeVar, overload

import numpy as np
from PIL import Image

from ..utils.errors import ImageReadError, PufaceError, shown_path
from .files import (Listing, check_inside_output, check_output_folder, check_output_root, is_case_insensitive,
                    iter_image_files)
from .images import (EXPECTED_IMAGES, IMAGE_EXTENSIONS, PALETTE_MODES, atomic_write_bytes, encode_image, is_image_file,
                     is_lossless_webp, max_pixels, open_image_parts, pil_format_for, read_image_bytes, resolution_of,
                     same_file, storage_of)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileJob:
    """One input file and the output it becomes. `rel` is the input's path relative to the input root."""

    src: Path
    dst: Path
    rel: Path


@dataclass
class LoadedImage:
    """A decoded input: uint8 RGB (H, W, 3) plus what is needed to write it back like the original."""

    job: FileJob
    image: np.ndarray
    exif: bytes | None = None
    icc_profile: bytes | None = None
    format: str = ""
    alpha: np.ndarray | None = None  # the input's alpha channel, uint8 (H, W) (the image is composited on white)
    gray: bool = False  # the input is grayscale (1-bit, L, 16-bit, float: `images.GRAY_MODES`)
    palette: bool = False  # the input's colours come from a palette (8-bit PNG, BMP, TIFF: `images.PALETTE_MODES`)
    storage: str = (
        ""  # how the file stores its pixels (`images.storage_of`: "jpeg:quality=75,subsampling=4:2:0", "palette", "")
    )
    color: np.ndarray | None = (
        None  # the colour under the input's alpha channel, uint8 (H, W, 3), not composited (None without alpha)
    )
    lossless: bool = (
        False  # the input is a lossless WebP (`images.is_lossless_webp`): a WebP output is written lossless too
    )
    dpi: tuple[float, float] | None = None  # the resolution the input declares (`images.resolution_of`), kept on output
    compression: str = (
        ""  # a TIFF input's compression (Pillow's name: "tiff_lzw", "jpeg", ...), kept where Pillow writes it
    )

    def encoding(self) -> dict:
        """`images.encode_image`'s keywords that write an output like this input: EXIF, ICC profile, lossless WebP,
        resolution, TIFF compression."""
        return {"exif": self.exif, "icc_profile": self.icc_profile, "lossless": self.lossless, "dpi": self.dpi,
                "tiff_compression": self.compression or None}


@dataclass
class Outcome:
    """What a batch function returns per input.

    status: "ok" (write `image`), "copy" (copy the input through unchanged), "skip" (write nothing),
    "record" (write nothing: the job's result is its `stats` row, e.g. a detection score) or "fail".
    `reason` explains copy/skip/fail; `stats` is a row for the job's CSV (may be empty); `dst`: where "ok" writes
    `image` when not at the job's `dst` (a name the batch function learns from the image: `align --all-faces`; the
    local engine, `run_folder_job`, only).
    """

    status: str
    image: np.ndarray | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)
    dst: Path | None = None

    @classmethod
    def ok(cls, image: np.ndarray, **stats) -> "Outcome":
        return cls("ok", image=image, stats=stats)

    @classmethod
    def copy(cls, reason: str, **stats) -> "Outcome":
        return cls("copy", reason=reason, stats=stats)

    @classmethod
    def skip(cls, reason: str, **stats) -> "Outcome":
        return cls("skip", reason=reason, stats=stats)

    @classmethod
    def record(cls, **stats) -> "Outcome":
        return cls("record", stats=stats)

    @classmethod
    def fail(cls, reason: str) -> "Outcome":
        return cls("fail", reason=reason)


@dataclass
class JobReport:
    """Counts and per-file problems of a finished (or interrupted) folder job."""

    total: int = 0
    written: int = 0  # outputs written ("ok") or results recorded ("record")
    resumed: int = 0  # outputs that already existed (or results already recorded)
    copied: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file was handled, 1 when some failed."""
        return 1 if self.failed else 0

    def summary(self, verb: str = "written", listed_in: dict[str, Path] | None = None) -> str:
        """Counts, then each file copied, skipped or failed with its reason; listed_in: for "copied unchanged",
        "skipped" or "FAILED", the file that lists them (the job wrote it; each was also told as it happened): a line
        naming it instead of one per file."""
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        # slow jobs (cloaking on a CPU: a minute per image) in seconds per image; '0.0 images/s' said nothing
        speed = (
            f"{rate:.1f} images/s" if rate >= 1 or not self.written else f"{self.seconds / self.written:.1f} s/image"
        )
        lines = [
            f"{self.total} images: {self.written} {verb}, {self.resumed} already done (skipped), "
            f"{len(self.copied)} copied unchanged, {len(self.skipped)} skipped, {len(self.failed)} failed "
            f"({self.seconds:.1f} s, {speed})"
        ]
        for title, items in (("copied unchanged", self.copied), ("skipped", self.skipped), ("FAILED", self.failed)):
            if items and listed_in and title in listed_in:
                lines.append(f"{title} ({len(items)}): listed in {listed_in[title]}")
            elif items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {shown_path(p)}: {why}" for p, why in items)
        return "\n".join(lines)


@dataclass
class DryRun:
    """What a folder job would do, found without writing anything (`--dry-run`): its inputs of `kind` ("chips",
    "photos", "images", "shards"): `share` of them this process's (`rank` of `world_size`), of which `done` are
    already done in the output (what a resume skips, by the job's own test); `listing`: what the walk of the input
    met, every process's files (None for shards: `total` says how many); `settings` (name -> text): what the job
    would run with; `notes`: lines said after the counts; `resume`: False when the job redoes every input (`done` is
    then 0, the output not looked at)."""

    kind: str
    share: int
    done: int
    settings: dict[str, Any]
    listing: Listing | None = None
    total: int | None = None
    rank: int = 0
    world_size: int = 1
    notes: list[str] = field(default_factory=list)
    resume: bool = True

    @property
    def remaining(self) -> int:
        return self.share - self.done

    def summary(self, verb: str) -> str:
        """The dry run's lines; `verb` says what the job does to the remaining inputs ("purify")."""
        found = self.listing.images if self.listing is not None else (self.total or self.share)
        lines = [f"dry run (nothing written): {found} {self.kind} found"]
        if self.listing is not None and self.listing.unsupported:
            lines.append(f"  {self.listing.unsupported} of them cannot be read (formats puface does not read, broken "
                         "links): the job lists them as failed")
        if self.listing is not None:
            shown = ", ".join(shown_path(p) for p in self.listing.other_paths)
            more = ", ..." if self.listing.others > len(self.listing.other_paths) else ""
            named = f": {shown}{more}" if shown else ""
            lines.append(f"{self.listing.others} other file(s) skipped (not images{named})")
        if self.world_size > 1:
            lines.append(f"this process (rank {self.rank} of {self.world_size}): {self.share} {self.kind}")
        lines.append(f"already done in the output (a resume skips them): {self.done}" if self.resume else
                     "already done in the output: not looked at (no resume: every input is done again)")
        lines.append(f"to {verb}: {self.remaining}")
        lines.extend(self.notes)
        lines.append("settings:")
        lines.extend(f"  {k}: {v}" for k, v in self.settings.items())
        return "\n".join(lines)

    @staticmethod
    def align_text(align: bool, rotations: str | None = "off", largest_face: bool = False) -> str:
        """A job's --align settings as its dry run says them."""
        if not align:
            return "off"
        return f"on (rotations {rotations or 'off'}{', largest face only' if largest_face else ''})"


def default_output_name(rel: Path) -> Path:
    return rel


def plan_mirror(
    in_path: str | Path,
    out_root: str | Path,
    *,
    rename: Callable[[Path], Path] = default_output_name,
    rank: int = 0,
    world_size: int = 1,
    names: set[str] | None = None,
    clash: str | None = None,
    listing: Listing | None = None,
) -> list[FileJob]:
    """Map every image under `in_path` (a folder, or one file) to a path under `out_root`.

    Refuses an input folder without images, an output folder that is a file, is the input folder, lies
    inside it or holds it (`files.check_output_folder`), and any output path equal to an input path. Image
    files puface cannot read (GIF, HEIC, ...) are planned too, so the job lists them as failed.
    rank/world_size: only the share of process `rank` of `world_size` (`share`: every world_size-th file of the
    sorted listing, the same on every process and every run), the others' files listed but never held. names: a
    set that gets the relative POSIX path of every file listed, every process's (jobs that must know the whole input).
    Two input files (any process's) that `rename` gives one output path are refused, with "A and B would both be
    written to DST; {clash}" (`rename` changing extensions: a.jpg and a.png -> a.png; clash None: "rename one"), and
    so are two whose output paths differ only in letter case (a.JPG and a.jpg) when `out_root`'s disk ignores case
    (`files.is_case_insensitive`: macOS, Windows, exFAT), where one would overwrite the other or pass for done; on
    another disk they are two outputs, and one warning (logged) gives their count and the first pair. Checked as the
    files stream past (`unique_outputs`), so a process's plan still holds its share alone. listing: counts what the
    walk met, every process's files (`files.Listing`: `--dry-run`).
    """
    in_path, out_root = Path(in_path), Path(out_root)
    files: Iterator[Path] = iter_image_inputs(in_path, names, listing)
    first = next(files)  # the input's errors (none, not an image, no images) before the output's
    check_output_root(out_root)
    if in_path.is_file():
        base = in_path.parent
    else:
        check_output_folder(in_path, out_root)
        base = in_path
    files = itertools.chain([first], files)
    files = unique_outputs(files, base, out_root, rename, clash or "rename one",
                           case_insensitive=bool(is_case_insensitive(out_root)))
    jobs = []
    for f in share(files, rank, world_size):
        rel = f.relative_to(base)
        dst = out_root / rename(rel)
        if same_file(dst, f):
            raise PufaceError(f"{dst}: output path equals an input path; choose another output folder")
        jobs.append(FileJob(f, dst, rel))
    return jobs


def unique_outputs(files: Iterable[Path], base: Path, out_root: Path, rename: Callable[[Path], Path],
                   clash: str, case_insensitive: bool = False) -> Iterator[Path]:
    """`files` (a listing of `files.iter_image_files`: depth first, in sorted order) passed through, a `PufaceError`
    when two of them get one output name (`rename` of their path relative to `base`; it must keep a file in its folder,
    as puface's renamers do: only then can two outputs meet; checked on each folder's first file). Output paths that
    differ only in letter case (file names in one folder, or folders) are refused too with `case_insensitive` (the
    output disk ignores case), else counted and, once the listing ends, logged as one warning with the first pair.
    Only the output names of the folders the walk is in are held: a folder left is never entered again, so its names
    are let go when the first file of a folder outside it comes. Folders are compared as text (a `Path` comparison
    per file cost a second at 200,000 files)."""
    seen: dict[str, tuple[dict[str, Path], dict[str, Path]]] = {}  # folder -> ({output name: input}, casefolded)
    folders: dict[str, tuple[str, Path]] = {}  # casefolded output folder -> (output folder, its first input)
    names: dict[str, Path] = {}
    folded: dict[str, Path] = {}
    here = None
    count, first = 0, ""

    def case_clash(a: Path, b: Path, dst: Path, what: str) -> None:
        nonlocal count, first
        if case_insensitive:
            raise PufaceError(f"{a} and {b} would both be written to {dst}: {what} differ only in letter case, and "
                              f"the output folder's disk ignores case; {clash}")
        count += 1
        first = first or f"{a} and {b} ({what} differ only in letter case)"

    for f in files:
        folder = str(f).rpartition(os.sep)[0]
        rel = f.relative_to(base)
        out = rename(rel)
        if folder != here:
            if out.parent != rel.parent:
                raise ValueError(f"rename moved {rel} to another folder ({out}); unique_outputs needs it in its folder")
            here = folder
            for d in [d for d in seen if not (folder == d or folder.startswith(d.rstrip(os.sep) + os.sep))]:
                del seen[d]
            names, folded = seen.setdefault(folder, ({}, {}))
            parent = out.parent.as_posix()
            other = folders.setdefault(parent.casefold(), (parent, f))
            if other[0] != parent:
                case_clash(other[1], f, out_root / out.parent, "their output folders")
        if out.name in names:
            raise PufaceError(f"{names[out.name]} and {f} would both be written to {out_root / out}; {clash}")
        names[out.name] = f
        key = out.name.casefold()
        if key in folded:
            case_clash(folded[key], f, out_root / out, "their output names")
        else:
            folded[key] = f
        yield f
    if count:
        log.warning("warning: %d output path%s differ%s from another only in letter case (the first: %s): a disk "
                    "that ignores case (macOS, Windows, exFAT) would keep one of each; rename them before copying the "
                    "outputs there", count, "s" if count > 1 else "", "" if count > 1 else "s", first)


def iter_image_inputs(in_path: Path, names: set[str] | None = None, listing: Listing | None = None) -> Iterator[Path]:
    """The input files of a folder job over `in_path` (a folder, or one image file), one at a time
    (`files.iter_image_files`); a `PufaceError` when it does not exist, is not an image, or is a folder without
    images, raised when the first file is asked for. names: a set that gets each file's path relative to the
    folder (a file: its parent), POSIX, as it is listed. listing: counts what the walk met (`files.Listing`)."""
    max_pixels()  # a bad $PUFACE_MAX_PIXELS: one error before any work, not one failure per file
    if not in_path.exists():
        raise PufaceError(f"{in_path}: no such file or folder")
    if in_path.is_file():
        if not is_image_file(in_path):
            raise PufaceError(f"{in_path}: not an image file ({EXPECTED_IMAGES})")
        if names is not None:
            names.add(in_path.name)
        if listing is not None:
            listing.listed(in_path)
        yield in_path
        return
    found = False
    for f in iter_image_files(in_path, unsupported=True, listing=listing):
        found = True
        if names is not None:
            names.add(f.relative_to(in_path).as_posix())
        yield f
    if not found:
        raise PufaceError(f"{in_path}: no images found ({EXPECTED_IMAGES})")


#: Keys of a settings record that describe a run, not its outputs (never compared as settings; "input" is
#: compared as a path, `check_settings`; "shard_version", what a shard job's outputs hold, by the shard job:
#: `io.shards.check_earlier_outputs`).
RUN_INFO_KEYS = ("puface_version", "input", "shard_version")
#: Set in a settings record while a `--no-resume` run redoes a folder made with other settings: until it ends,
#: the folder holds outputs of both, so a later resume is refused (`begin_settings`).
REDO_KEY = "unfinished_redo"


def input_identity(in_path: str | Path) -> str:
    """How a settings record names a job's input: the folder its output names are relative to (an input
    folder itself, a file's folder), as an absolute path with links resolved, so that a resume from another
    working folder matches and one over another folder's files of the same names does not."""
    p = Path(in_path)
    if p.is_file():
        p = p.parent
    return str(p.resolve()) if p.exists() else os.path.abspath(str(in_path))


def _settings_diff(old: dict, new: dict, keys: Sequence[str] | None) -> list[str]:
    new = json.loads(json.dumps(new))  # tuples as lists, as the record on disk holds them
    if keys is None:
        keys = sorted((set(old) | set(new)) - set(RUN_INFO_KEYS) - {REDO_KEY})
    diff: list[str] = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            diff.extend(f"{k}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub))
        else:
            diff.append(k)
    return diff


def _read_settings(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise PufaceError(f"{path}: unreadable; delete it or choose another output folder") from None


#: The settings record of each folder job that writes images, and the command that writes it: an output folder
#: holds the outputs of one of them (`check_settings`).
JOB_RECORDS = {"cloak_config.json": "puface cloak", "purify_config.json": "puface purify",
               "align_config.json": "puface align"}


def check_settings(path: Path, record: dict, *, resume: bool, kind: str, keys: Sequence[str] | None = None) -> None:
    """Refuse to resume into an output folder made with other settings: `path` is the folder's settings record
    (`write_settings`), `record` this run's; they must agree on `keys` (default: every key but `RUN_INFO_KEYS`)
    and on the input (both absolute paths, `input_identity`; records that kept the path as typed are not
    compared), else a resume would keep outputs of the other setting or input and the record would lie about
    them. A folder whose `--no-resume` redo with other settings was interrupted (`begin_settings`) is refused
    too. A folder holding another job's record (`JOB_RECORDS`) is refused with or without `resume`: a resume would
    take that job's outputs of the same names for done, a redo would overwrite them. Nothing else is checked
    without `resume` or without a record (a new folder). `kind` names the job in the message ("cloaking",
    "purifying", "aligning")."""
    for name, command in JOB_RECORDS.items():
        if name != path.name and (path.parent / name).is_file():
            raise PufaceError(f"{path.parent} holds the outputs of `{command}` ({name}); choose another output "
                              f"folder for {kind}")
    if not resume:
        return
    old = _read_settings(path)
    if old is None:
        return
    how = "choose another output folder, or pass --no-resume to redo every image"
    if old.get(REDO_KEY):
        raise PufaceError(f"{path.parent}: an earlier --no-resume run with other settings stopped before it ended, so "
                          f"the folder holds outputs of both settings; pass --no-resume to redo every image, or choose "
                          "another output folder")
    was, now = old.get("input"), record.get("input")
    if was and now and Path(str(was)).is_absolute() and Path(str(now)).is_absolute() and was != now:
        raise PufaceError(f"{path.parent} holds outputs of another input ({was}; this run: {now}); {how}")
    diff = _settings_diff(old, record, keys)
    if diff:
        raise PufaceError(
            f"{path.parent} holds outputs of a different {kind} setting (differs in: {', '.join(diff)}); {how}"
        )


#: The lock file of an output folder while a job writes into it (`claim_output`): hidden, removed by the last process.
LOCK_NAME = ".puface.lock"
#: Byte ranges of a claim's lock file (`_range_lock`): byte 0 serialises the settings check and write of the processes
#: sharing the output (`Claim.settings`), byte 1 + rank is a rank's share, and a process of world size W holds a shared
#: lock on byte _WORLD_BYTES + W (far beyond any rank's byte), so that processes of other world sizes are refused.
_WORLD_BYTES = 1 << 40
#: Byte _ENDED_BYTES + rank of a claim's lock file: held by a rank whose share is done (`Claim.ended`; exclusive, as a
#: rank's byte is, so that a test without locking sees it: `Claim._held`); between the ranks' bytes and the world
#: sizes' (a lock beyond those would read as a process of a larger world size).
_ENDED_BYTES = 1 << 39
#: Byte _GATE_BYTE of a claim's lock file: a process claiming its share holds it while it takes its bytes and looks for
#: other world sizes (one process at a time: their looks, brief exclusive locks, would otherwise meet and refuse both),
#: and the last process out takes the whole file, this byte included, for the moment it removes the file; a process
#: claiming the whole output locks every byte but this one. So a starting process waits out a removal or another's
#: start (microseconds) instead of being refused by it, and no file is removed while a process is claiming it.
_GATE_BYTE = 1 << 38


#: The claims this process holds (`_claim`, `Claim.__call__`: under `_HELD_LOCK`): where POSIX locks cannot tell two
#: claims of one process apart, a second claim of one lock file is refused here; a forked child closes their files.
_HELD: "weakref.WeakSet[Claim]" = weakref.WeakSet()
_HELD_LOCK = threading.Lock()


def _close_held_in_child() -> None:
    """After a fork, in the child: the child holds none of its parent's claims (POSIX locks never pass to a child), so
    its copies of their lock files are closed; open, they would keep the parent's open-file-description locks held
    after the parent ended (kill -9) for as long as the child lives."""
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()  # another thread of the parent may have held it at the fork
    for c in list(_HELD):
        if c.f is not None:
            try:
                c.f.close()
            except OSError:
                pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


#: `_range_lock`'s command to test a byte range without locking it
_TEST = 0
#: `struct flock` as Linux's fcntl takes it (large-file builds: `flock64`): short l_type, short l_whence, off_t l_start,
#: off_t l_len, pid_t l_pid, in native alignment with the end padded to off_t's (x86-64: 32 bytes, i386: 24);
#: checked against the kernel before use (`_probe_ofd_locks`)
_FLOCK = struct.Struct("hhqqi0q")
#: Whether this process locks with open-file-description locks on every file system (tests, older systems' code);
#: None: as each file system's probe says (`_ofd_locks`)
_OFD: bool | None = None
#: Whether open-file-description locks work, per file system (st_dev) probed in this process (`_ofd_locks`)
_OFD_BY_DEVICE: dict[int, bool] = {}


def _range_lock(f: Any, cmd: int, length: int = 0, start: int = 0) -> bool:
    """Lock, unlock or test bytes [start, start + length) of the open lock file `f` (length 0: to any end), the one
    home of the claims' locks. `cmd` as `fcntl.lockf` takes it: LOCK_SH or LOCK_EX (waiting for it; with | LOCK_NB an
    `OSError` EACCES/EAGAIN at once where another holder has it), LOCK_UN; or `_TEST`: True when another holder has an
    exclusive lock on the range, nothing taken. False otherwise.

    The locks are open-file-description locks where `f`'s file system takes them (`F_OFD_SETLK`, Linux >= 3.15:
    `_ofd_locks`). They belong to `f`, not
    to the process: two claims in one process exclude each other as those of two processes do, and closing one file
    never drops the other's locks; they conflict with other processes' POSIX record locks (an older puface's claim)
    as POSIX locks do among themselves, and go when the last descriptor of `f` is closed (a forked child's copy is
    closed: `_close_held_in_child`). Elsewhere (macOS, older kernels) POSIX record locks (`fcntl.lockf`, `os.lockf`
    F_TEST), which belong to the process: its claims neither exclude each other nor survive another's close of the
    file, so `_claim` refuses a second claim of one lock file in the process (`_HELD`), ranks of one job included."""
    import errno
    import fcntl

    if _ofd_locks(f):
        if cmd == _TEST:
            kind, op = fcntl.F_RDLCK, fcntl.F_OFD_GETLK  # a read lock meets exclusive locks only
        else:
            kind = (fcntl.F_UNLCK if cmd == fcntl.LOCK_UN else fcntl.F_RDLCK if cmd & fcntl.LOCK_SH
                    else fcntl.F_WRLCK)
            op = fcntl.F_OFD_SETLK if cmd & fcntl.LOCK_NB or cmd == fcntl.LOCK_UN else fcntl.F_OFD_SETLKW
        got = fcntl.fcntl(f.fileno(), op, _FLOCK.pack(kind, os.SEEK_SET, start, length, 0))
        return cmd == _TEST and _FLOCK.unpack(got)[0] != fcntl.F_UNLCK
    if cmd != _TEST:
        fcntl.lockf(f, cmd, length, start)
        return False
    try:
        if hasattr(os, "lockf"):
            os.lseek(f.fileno(), start, os.SEEK_SET)  # F_TEST tests from the file offset (nothing reads or writes f)
            os.lockf(f.fileno(), os.F_TEST, length)  # (glibc: F_GETLK for a read lock: sees exclusive locks only)
            return False
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)  # taken and given back: never a claim's own bytes
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EAGAIN):
            return True
        raise
    fcntl.lockf(f, fcntl.LOCK_UN, length, start)
    return False


def _ofd_locks(at: Any) -> bool:
    """Whether `_range_lock` takes open-file-description locks on the open file or the folder `at`: probed once per
    file system (st_dev) in this process, in that folder (`_probe_ofd_locks`; an open file's: the one its name is in),
    since an output folder on NFS, a FUSE mount or tmpfs may lock otherwise than the temporary folder's file system.
    `_OFD` where set. False where `at` cannot be seen, or where no probe file can be made there (not remembered)."""
    if _OFD is not None:
        return _OFD
    is_file = hasattr(at, "fileno")
    known = getattr(at, "puface_ofd", None) if is_file else None  # (an open lock file remembers its answer)
    if known is not None:
        return known
    try:
        dev = os.fstat(at.fileno()).st_dev if is_file else os.stat(at).st_dev
    except OSError:
        return False
    known = _OFD_BY_DEVICE.get(dev)
    if known is None:
        found = _probe_ofd_locks(os.path.dirname(os.path.abspath(at.name)) if is_file else os.fspath(at))
        if found is None:
            return False
        known = _OFD_BY_DEVICE[dev] = found
    if is_file:
        try:
            at.puface_ofd = known
        except AttributeError:
            pass
    return known


def _probe_ofd_locks(folder: str | None = None) -> bool | None:
    """True when open-file-description locks work as `_range_lock` packs them: on a temporary file in `folder` (None:
    the system's temporary folder), a lock on 3 bytes beyond 1 TiB taken through one descriptor is reported at its
    place (`_FLOCK`'s fields read back as packed) to a second descriptor of this process, which is refused it and sees
    the bytes either side free. False where fcntl lacks the commands (macOS), the kernel or the file system refuses
    them (EINVAL: Linux before 3.15; ENOLCK), a field reads back otherwise (another layout of `struct flock`), or the
    file cannot be locked; None where no temporary file can be made or opened twice there (nothing learnt)."""
    import errno
    import fcntl
    import tempfile

    if not all(hasattr(fcntl, c) for c in ("F_OFD_GETLK", "F_OFD_SETLK", "F_OFD_SETLKW")):
        return False
    start, length = (1 << 40) + 5, 3

    def lock(fd: int, op: int, kind: int, at: int, n: int) -> tuple:
        return _FLOCK.unpack(fcntl.fcntl(fd, op, _FLOCK.pack(kind, os.SEEK_SET, at, n, 0)))

    try:
        fd, name = tempfile.mkstemp(prefix=".puface-lock-", dir=folder)
    except OSError:
        return None
    try:
        other = os.open(name, os.O_RDWR)
    except OSError:
        other = -1  # (EMFILE: the last descriptor went to mkstemp)
    try:
        os.unlink(name)  # at once: a probe stopped here leaves no file in the user's folder
        name = ""
    except OSError:  # (a file system that keeps a file open elsewhere: removed once closed, below)
        pass
    try:
        if other < 0:
            return None
        try:
            lock(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK, start, length)
            seen = lock(other, fcntl.F_OFD_GETLK, fcntl.F_RDLCK, 0, 0)
            free = [lock(other, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, at, 1)[0] for at in (start - 1, start + length)]
            try:
                lock(other, fcntl.F_OFD_SETLK, fcntl.F_WRLCK, start + length - 1, 1)
                refused = False
            except OSError as e:
                refused = e.errno in (errno.EACCES, errno.EAGAIN)
        except (OSError, struct.error):  # (struct.error: a layout whose fields cannot hold the values)
            return False
    finally:
        for d in (other, fd):
            if d >= 0:
                os.close(d)
        if name:
            try:
                os.unlink(name)
            except OSError:  # left behind (hidden, not an image name); the answer is kept, so never probed again
                pass
    return seen == (fcntl.F_WRLCK, os.SEEK_SET, start, length, -1) and free == [fcntl.F_UNLCK] * 2 and refused


class Claim:
    """A process's claim on an output (`claim_output`): call it to release the claim (the last process removes the lock
    file); `settings()` serialises a settings check and write between the processes sharing the output. `key` is the
    lock file's (st_dev, st_ino) while claimed (`_HELD`)."""

    def __init__(self, f: Any = None, path: Path | None = None, whole: bool = True, rank: int = 0,
                 world_size: int = 1, key: tuple[int, int] | None = None):
        self.f, self.path, self.whole = f, path, whole
        self.rank, self.world_size, self.key = rank, world_size, key

    @property
    def active(self) -> bool:
        """Whether this claim is still held (its lock file open: not yet released, not an unlocked claim)."""
        return self.f is not None and not self.f.closed

    def excludes(self, key: tuple[int, int], rank: int, world_size: int) -> bool:
        """True when this claim, still held on lock file `key`, keeps out a claim of `rank` of `world_size` (the same
        rank, another world size, or either one of the whole output)."""
        return (self.key == key and self.active
                and (self.whole or world_size <= 1 or self.world_size != world_size or self.rank == rank))

    def ended(self) -> None:
        """Say that this process's share is done (every output and row of it written; only the summaries are left):
        the other processes' `others_running` no longer count it, though it holds its share until it is released."""
        if self.f is None or self.f.closed or self.whole:
            return
        import fcntl

        try:
            _range_lock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _ENDED_BYTES + self.rank)
        except OSError:
            pass

    def others_running(self) -> int:
        """How many other processes sharing the output (--rank) hold their share and have not `ended` it: 0 for a
        claim of the whole output, or where nothing was claimed. Asked under a lock the processes share (the scores
        CSV's) after `ended`, of two processes ending together the later one sees 0."""
        if self.f is None or self.f.closed or self.whole:
            return 0
        return sum(1 for r in range(self.world_size)
                   if r != self.rank and self._held(1 + r) and not self._held(_ENDED_BYTES + r))

    def _held(self, start: int) -> bool:
        """True when another claim (another process's, or another of this process where `_range_lock` tells them
        apart) holds byte `start` of the lock file (a rank's byte, an ended byte): tested without taking it
        (`_range_lock` _TEST), so that a rank claiming its byte at that instant is not refused as a duplicate. The
        test sees exclusive locks only, hence those bytes are locked exclusively."""
        try:
            return _range_lock(self.f, _TEST, 1, start)
        except OSError:
            return False

    def __call__(self) -> None:
        """Release the claim; the last process out removes the lock file. This process's bytes are let go first, so
        that of two processes ending together one sees the other's gone and removes the file (each testing while the
        other still held its share left the file behind); the whole file is then locked (free of every claim, and of
        every process claiming at that moment: `_GATE_BYTE`) and removed only while its name is still this file (a
        process that let go of an older file, removed meanwhile, never removes the newer one another process holds)."""
        f = self.f
        if f is None or f.closed:
            return
        import fcntl

        try:
            _range_lock(f, fcntl.LOCK_UN, 0, 0)
            _range_lock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 0, 0)
            if self.path is not None and _names(self.path, f):  # (path is set with f)
                self.path.unlink()
        except OSError:
            pass
        f.close()  # first: a claim of this process may be waiting (holding `_HELD_LOCK`) for the removal to end
        with _HELD_LOCK:
            _HELD.discard(self)

    @contextmanager
    def settings(self) -> Iterator[None]:
        """Hold the claim's settings lock while the block runs (waiting for it): processes sharing the output with
        --rank check and write the settings record one at a time, so two started with other settings at the same
        instant cannot both pass the check before either writes. A claim of the whole output needs none."""
        if self.f is None or self.f.closed or self.whole:
            yield
            return
        import fcntl

        try:
            _range_lock(self.f, fcntl.LOCK_EX, 1, 0)
        except OSError:  # no locks after all: unlocked, as where nothing was claimed
            yield
            return
        try:
            yield
        finally:
            try:
                _range_lock(self.f, fcntl.LOCK_UN, 1, 0)
            except OSError:
                pass


def claim_output(folder: Path, rank: int = 0, world_size: int = 1) -> Claim:
    """Claim output folder `folder` for this process's share of a job until the returned `Claim` is called (or
    the process ends, also by kill -9): a `PufaceError` when another process holds the same share, so that two runs
    started on one folder by mistake do not both write every output and every CSV row. A process without ranks
    claims the whole folder; process `rank` of `world_size` one share, so the ranks of one job run side by side
    but never one rank twice, a rank beside a run without ranks, or ranks of different world sizes (whose shares
    overlap). Two claims in one process (two jobs of a Python session) exclude each other as those of two processes do
    (`_range_lock`). An advisory lock on `folder/.puface.lock`, which the last process to release its claim removes;
    where the file system takes no locks, nothing is claimed."""
    return _claim(folder / LOCK_NAME, rank, world_size, str(folder), "writing into this folder")


def claim_file(path: Path, rank: int = 0, world_size: int = 1) -> Claim:
    """`claim_output` for a job whose output is one file that processes (--rank) may share (`detect`'s scores CSV):
    the lock file is `.NAME.lock` beside it, removed by the last process."""
    return _claim(path.with_name(f".{path.name}.lock"), rank, world_size, str(path), "writing this file")


def _names(path: Path, f: Any) -> bool:
    """True when `path` is the file open as `f` (not removed, nor replaced by a newer one)."""
    try:
        held, now = os.fstat(f.fileno()), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _enter_gate(f: Any, busy: tuple[int, ...], wait: float = 2.0) -> None:
    """Hold `_GATE_BYTE` of the lock file `f`, waiting (polling every millisecond) while another process is claiming
    or the last process out holds the whole file to remove it; after `wait` seconds (a process stopped there, an older
    puface holding the whole file for its run) go on without it, as before there was a gate (a holder of the whole
    file then refuses the claim). An `OSError` other than a busy lock (no locks here) propagates."""
    import fcntl

    deadline = time.monotonic() + wait
    while True:
        try:
            _range_lock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _GATE_BYTE)
            return
        except OSError as e:
            if e.errno not in busy:
                raise
            if time.monotonic() > deadline:
                return
        time.sleep(0.001)


def _claim(path: Path, rank: int, world_size: int, name: str, doing: str) -> Claim:
    """`claim_output` on lock file `path`; messages say "{name}: another puface process is {doing}", or "another
    puface job in this process" where a claim this process holds keeps it out (`_HELD`)."""
    try:
        import errno
        import fcntl
    except ImportError:  # not POSIX
        return Claim()
    busy = (errno.EACCES, errno.EAGAIN)
    # (length, start) of the bytes this process holds: one rank's byte, or every byte but the gate (the whole output)
    ranges = [(1, 1 + rank)] if world_size > 1 else [(_GATE_BYTE, 0), (0, _GATE_BYTE + 1)]
    with _HELD_LOCK:  # one claim at a time in this process, so that `_HELD` is as the locks are
        for _ in range(10):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                return Claim()
            ofd = _ofd_locks(path.parent)  # (probed on the lock file's file system)
            key = None if ofd else _key(path)
            if key is not None and any(c.key == key and c.active for c in _HELD):
                # POSIX locks: a second claim would not be refused, and its close would drop the first's locks
                raise PufaceError(f"{name}: another puface job in this process is {doing}; wait for it to end (this "
                                  "system's file locks cannot keep two claims of one process apart)")
            try:
                f: Any = open(path, "a+b")
            except OSError:
                return Claim()
            # the claim locks as `_HELD` was checked for, to its release: a probe that could not run here (None, not
            # remembered: EMFILE, ENOSPC) and ran later would switch its unlock to the other kind of lock
            f.puface_ofd = ofd
            try:
                _enter_gate(f, busy)  # a removal of the file in progress ends first; none starts until the gate is left
                for length, start in ranges:
                    _range_lock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)
            except OSError as e:
                who = _who(f, rank, world_size)
                f.close()
                if e.errno not in busy:
                    return Claim()  # locks not supported here
                if world_size > 1:
                    raise PufaceError(f"{name}: {who} is {doing} as rank {rank} (or without --rank); give each "
                                      "process its own --rank, or wait for it to end") from None
                raise PufaceError(f"{name}: {who} is {doing}; wait for it to end, or split the files between "
                                  "processes with --rank/--world-size") from None
            if _names(path, f):
                break
            f.close()  # a process that ended removed the file after it was opened here: claim the new one
        else:
            return Claim()
        if world_size <= 1:
            _leave_gate(f)
            return _register(Claim(f, path, key=_key(f)))
        # announce this world size, then find any other one: of two processes of different world sizes starting
        # together, the later to look sees the other's (both may be refused, never both let through)
        try:
            _range_lock(f, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, _WORLD_BYTES + world_size)
            for lo, n in ((_WORLD_BYTES, world_size), (_WORLD_BYTES + world_size + 1, 0)):  # smaller, larger sizes
                _range_lock(f, fcntl.LOCK_EX | fcntl.LOCK_NB, n, lo)
                _range_lock(f, fcntl.LOCK_UN, n, lo)
        except OSError as e:
            who = _who(f, rank, world_size)
            f.close()
            if e.errno not in busy:
                return Claim()
            raise PufaceError(
                f"{name}: {who} is {doing} with another --world-size; processes that share it must all give the "
                f"same --world-size (this one: {world_size}), or wait for it to end"
            ) from None
        _leave_gate(f)
        return _register(Claim(f, path, whole=False, rank=rank, world_size=world_size, key=_key(f)))


def _key(f: Any) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the open file `f`, or of the file at path `f`; None where there is none."""
    try:
        st = os.fstat(f.fileno()) if hasattr(f, "fileno") else os.stat(f)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _who(f: Any, rank: int, world_size: int) -> str:
    """Who holds what refused a claim of `rank` of `world_size` on the open lock file `f`: a claim of this process
    (`_HELD`), else another process."""
    key = _key(f)
    if key is not None and any(c.excludes(key, rank, world_size) for c in _HELD):
        return "another puface job in this process"
    return "another puface process"


def _register(claim: Claim) -> Claim:
    """Add the new `claim` to this process's claims (`_HELD`; under `_HELD_LOCK`)."""
    _HELD.add(claim)
    return claim


def _leave_gate(f: Any) -> None:
    import fcntl

    try:
        _range_lock(f, fcntl.LOCK_UN, 1, _GATE_BYTE)
    except OSError:
        pass


def begin_settings(path: Path, record: dict, *, resume: bool, kind: str,
                   keys: Sequence[str] | None = None, rank: int = 0, world_size: int = 1) -> "JobFinish":
    """Check (`check_settings`) and write an output folder's settings record before a job; returns the function
    to call once the job has ended. Without `resume`, over a record of other settings or another input, the
    record written first is marked as an unfinished redo (`REDO_KEY`) and the plain record replaces it only at
    the end, so an interrupted redo cannot be resumed as if its folder held one setting. (Processes sharing a
    folder with --rank each replace it when they end: a redo shared by several processes is marked only until
    the first of them ends.) The folder is claimed for this process's share (`claim_output`: refused while another
    process holds it) until the returned function is called, or its `release()` (`JobFinish`: a failed job); processes
    sharing it check and write the record one at a time (`Claim.settings`)."""
    claim = claim_output(path.parent, rank, world_size)
    try:
        with claim.settings():
            check_settings(path, record, resume=resume, kind=kind, keys=keys)
            old = None if resume else _read_settings_quietly(path)
            redo = old is not None and bool(old.get(REDO_KEY) or _settings_diff(old, record, keys)
                                            or old.get("input") != record.get("input"))
            write_settings(path, {**record, REDO_KEY: True} if redo else record)
    except BaseException:
        claim()
        raise
    return JobFinish(claim, (lambda: write_settings(path, record)) if redo else None)


class JobFinish:
    """`begin_settings`'s end of a job: call it once the job has ended (the plain record replaces an unfinished
    redo's, the claim is released); `release()` when the job failed: the claim alone is released (the record stays as
    it is), so that a failed job in a process that goes on (a Python session keeping the exception) leaves the folder
    to other processes."""

    def __init__(self, claim: "Claim", write: Callable[[], None] | None = None):
        self.claim, self.write = claim, write

    def __call__(self) -> None:
        try:
            if self.write is not None:
                with self.claim.settings():
                    self.write()
        finally:  # a failed write (disk full) must not keep the folder claimed: the record stays the redo's
            self.claim()

    def release(self) -> None:
        self.claim()

    @contextmanager
    def on_failure(self) -> Iterator[None]:
        """Release the claim when the block raises (the job failed or was interrupted), then raise on."""
        try:
            yield
        except BaseException:
            self.release()
            raise


def _read_settings_quietly(path: Path) -> dict | None:
    """The record at `path`, an empty one ({"unreadable": True}) when it cannot be read, None when absent."""
    try:
        return _read_settings(path)
    except PufaceError:
        return {"unreadable": True}


def write_settings(path: Path, record: dict) -> None:
    """Write a settings record (JSON) atomically. Processes sharing a folder (--rank/--world-size) write the
    same bytes, so whichever rename comes last leaves the same file; an unchanged record is not rewritten."""
    data = (json.dumps(record, indent=2) + "\n").encode()
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


def remove_stale_temporaries(outputs: Iterable[Path]) -> None:
    """Delete the temporary files of `outputs` (`.NAME.PID.THREAD[-N].tmp`, `images.atomic_write_bytes`) that a killed
    process left, when no process of that id runs on this machine (a live one may be another process writing it).
    Only these outputs' own: other processes (ranks, maybe on other machines) write other outputs."""
    import re

    pattern = re.compile(r"\.(.+)\.(\d+)\.(\d+)(?:-\d+)?\.tmp")  # -N: a fresh name (`utils.paths.create_temporary`)
    names: dict[Path, set[str]] = {}
    for p in outputs:
        names.setdefault(p.parent, set()).add(p.name)
    alive: dict[int, bool] = {os.getpid(): True}
    for folder, mine in names.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            m = pattern.fullmatch(e.name)
            if m is None or m.group(1) not in mine or not e.is_file(follow_symlinks=False):
                continue
            pid = int(m.group(2))
            if pid not in alive:
                try:
                    os.kill(pid, 0)
                    alive[pid] = True
                except ProcessLookupError:
                    alive[pid] = False
                except OSError:  # alive but not ours (EPERM)
                    alive[pid] = True
            if not alive[pid]:
                try:
                    os.unlink(e.path)
                except OSError:
                    pass


def split_done(jobs: Sequence, resume: bool, is_done: Callable[[Any], bool] | None = None) -> tuple[list, int]:
    """(the jobs still to do, how many are done): with `resume`, a job is done when `is_done(job)`, by
    default when its output `dst` is a file (outputs are written atomically, so an existing one is complete)."""
    done = is_done or (lambda j: j.dst.is_file())
    todo = [j for j in jobs if not (resume and done(j))]
    return todo, len(jobs) - len(todo)


def resume_split(jobs: Sequence[FileJob], resume: bool, is_done: Callable[[FileJob], bool] | None = None,
                 stats_csv: Path | None = None, stats_key: str = "file") -> tuple[list[FileJob], int]:
    """`split_done` as the folder runners take it (`run_folder_job`, `raydata.run_ray_job`, `--dry-run`): done by
    `is_done`, else, where `stats_csv` holds rows, by the output and its row (`recorded_done`), else by the output."""
    return split_done(jobs, resume, is_done or (recorded_done(stats_csv, stats_key) if resume else None))


def recorded_done(stats_csv: Path | Sequence[Path] | None, stats_key: str = "file",
                  outputs: Callable[[FileJob, dict[str, str]], Iterable[Path]] | None = None
                  ) -> Callable[[FileJob], bool] | None:
    """The resume test of a job that writes a row to `stats_csv` (an earlier run began it): its output is a file
    and the CSV holds its row, complete (a row cut by a kill in the middle of an append has fewer columns than the
    header: the job is redone and the cut row replaced). A job's row goes in after its output is in place, so a run
    killed between the two left outputs without rows; with this test a resume redoes them (the same bytes) and writes
    their rows. Several
    CSVs (one per process, `cloak --rank`): a row in any of them counts. None when there is no such CSV (the
    default test, the output alone, applies). outputs: the files a job's row (column -> text) says it wrote, all of
    which must be files (none: not done), instead of the job's `dst` (`align --all-faces`: the chips it names)."""
    paths = [stats_csv] if isinstance(stats_csv, (str, Path)) else list(stats_csv or [])
    recorded: set[str] = set()
    rows: dict[str, dict[str, str]] = {}
    found = False
    for path in map(Path, paths):
        if not path.is_file() or path.stat().st_size == 0:
            continue
        with open(path, newline="", **CSV_TEXT) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or stats_key not in header:
                continue
            k = header.index(stats_key)
            complete = (r for r in reader if len(r) == len(header))
            if outputs is None:
                recorded.update(r[k] for r in complete)
            else:
                rows.update((r[k], dict(zip(header, r))) for r in complete)
            found = True
    if not found:
        return None
    if outputs is None:
        return lambda j: j.dst.is_file() and j.rel.as_posix() in recorded
    wrote = outputs

    def done(j: FileJob) -> bool:
        row = rows.get(j.rel.as_posix())
        files = list(wrote(j, row)) if row is not None else []
        return bool(files) and all(p.is_file() for p in files)

    return done


def env_int(name: str, default: int) -> int:
    """The integer in environment variable `name` ($RANK, $WORLD_SIZE, ...), `default` when unset; a
    `PufaceError` naming the variable when it holds something else."""
    import os

    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise PufaceError(f"${name} must be an integer, got {text!r}") from None


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size) of this process: the given values, else $RANK / $WORLD_SIZE (torchrun, SLURM
    wrappers), else (0, 1); a `PufaceError` for a value that is not an integer, a world size below 1 or a
    rank outside 0..world_size-1."""
    rank = env_int("RANK", 0) if rank is None else rank
    world_size = env_int("WORLD_SIZE", 1) if world_size is None else world_size
    if world_size < 1:
        raise PufaceError(f"the world size (--world-size or $WORLD_SIZE) must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise PufaceError(f"--rank must be in 0..{world_size - 1}, got {rank}")
    return rank, world_size


_T = TypeVar("_T")


def share(items: Iterable[_T], rank: int, world_size: int) -> Iterator[_T]:
    """The part of `items` that process `rank` of `world_size` handles, the one rule for every multi-process job
    (files, shards, detect's rows): items rank, rank + world_size, ... (round-robin), the others passed over as
    they come (the whole of `items` is read)."""
    return itertools.islice(items, rank, None, world_size) if world_size > 1 else iter(items)


def shard(jobs: Iterable[_T], rank: int, world_size: int) -> list[_T]:
    """`share` as a list."""
    return list(share(jobs, rank, world_size))


def load_for_job(job: FileJob, data: bytes | None = None) -> LoadedImage:
    """Decode an input and keep its EXIF (orientation reset, since pixels are upright) and ICC.

    data: the encoded bytes when they do not come from `job.src` (a record of a shard); `job.src` then
    only names the record in errors.
    """
    if data is None:
        if not is_image_file(job.src):
            raise ImageReadError(job.src, f"unsupported image format {job.src.suffix.lower() or '(no extension)'} "
                                          f"(puface reads {', '.join(IMAGE_EXTENSIONS)}); convert it to PNG first")
        data = read_image_bytes(job.src)  # once: the pixels and the metadata below come from the same bytes
    im, alpha, gray, under = open_image_parts(job.src, data=data, color=True)
    exif_bytes = icc = None
    fmt = ""
    palette = False
    storage = compression = ""
    dpi = None
    try:
        with Image.open(io.BytesIO(data)) as raw:  # header only: about 0.05 ms a chip, 4% of its decode
            fmt = raw.format or ""
            palette = raw.mode in PALETTE_MODES
            storage = storage_of(raw)
            icc = raw.info.get("icc_profile")
            dpi = resolution_of(raw)
            compression = str(raw.info.get("compression") or "") if fmt == "TIFF" else ""
            exif = raw.getexif()
            if exif:
                exif[0x0112] = 1
                exif_bytes = exif.tobytes()
    except Exception:  # metadata is best effort; the pixels were read fine
        pass
    return LoadedImage(job, np.asarray(im, dtype=np.uint8), exif_bytes, icc, fmt, alpha, gray, palette, storage, under,
                       fmt == "WEBP" and is_lossless_webp(data), dpi, compression)


def in_input_mode(item: LoadedImage, image: np.ndarray, *, gray: bool = True) -> np.ndarray:
    """A processed uint8 RGB image of `item`'s size in the input's own mode: a grayscale input back to one
    channel (L; not with `gray=False`: a cloak's change is in colour, so it stays RGB), an input's alpha channel
    reattached (LA / RGBA) over the input's own colour plus the change processing made (the image processed was
    composited on white: a pixel left alone keeps its colour, not white blended into it). Other sizes (chips cut
    from a photo) stay RGB."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != item.image.shape[:2]:
        return image
    if item.alpha is not None and item.color is not None and item.color.shape == image.shape:
        change = image.astype(np.int16) - item.image.astype(np.int16)
        image = np.clip(item.color.astype(np.int16) + change, 0, 255).astype(np.uint8)
    out = np.asarray(Image.fromarray(image, "RGB").convert("L")) if item.gray and gray else image
    if item.alpha is not None and item.alpha.shape == image.shape[:2]:
        out = np.dstack([out, item.alpha])
    return out


def keep_input_mode(process: Callable[[list[LoadedImage]], list[Outcome]], *,
                    gray: bool = True) -> Callable[[list[LoadedImage]], list[Outcome]]:
    """A batch function whose "ok" images are written in their input's mode (`in_input_mode`): what
    `purify` promises (grayscale stays grayscale, transparency is kept) and `cloak` (`gray=False`: transparency is
    kept, a grayscale input's cloak is in colour); 8 bits per channel."""

    def process_in_mode(items: list[LoadedImage]) -> list[Outcome]:
        outcomes = process(items)
        for item, out in zip(items, outcomes):
            if out.status == "ok" and out.image is not None:
                out.image = in_input_mode(item, out.image, gray=gray)
        return outcomes

    return process_in_mode


def output_root(job: FileJob) -> Path | None:
    """The output folder `job.dst` lies in as `job.rel` lies in the input root (`plan_mirror`: dst = root / rename(rel),
    the file kept in its folder); None where `rel` is empty."""
    n = len(job.rel.parts)
    return job.dst.parents[n - 1] if 0 < n <= len(job.dst.parents) else None


def check_job_output(job: FileJob, dst: Path) -> None:
    """Refuse to write `dst` (`job`'s output, or a name beside it) through a link among its folders that leads outside
    the job's output folder (`files.check_inside_output`)."""
    root = output_root(job)
    if root is not None:
        check_inside_output(dst, root)


def _write_outcome(item: LoadedImage, out: Outcome, quality: int) -> None:
    job = item.job
    dst = out.dst or job.dst
    if out.status in ("ok", "copy") and same_file(dst, job.src):
        raise OSError("the output path is the input file; refusing to overwrite it")
    if out.status in ("ok", "copy"):
        check_job_output(job, dst)
    if out.status == "ok":
        assert out.image is not None
        fmt = pil_format_for(dst)
        data = encode_image(out.image, fmt, quality=quality, **item.encoding())
        atomic_write_bytes(dst, data)
    elif out.status == "copy":
        atomic_write_bytes(dst, job.src.read_bytes())


#: How the jobs' CSV files hold text (`open(path, newline="", **CSV_TEXT)`, `text.encode(**CSV_TEXT)`): UTF-8, a
#: file name that is not UTF-8 kept as its own bytes (surrogateescape, as `os.fsencode` does), so that it gets its
#: row and a resume finds it again.
class _TextEncoding(TypedDict):
    encoding: str
    errors: str


CSV_TEXT: _TextEncoding = {"encoding": "utf-8", "errors": "surrogateescape"}


def _flock(fd: int) -> bool:
    """Wait for an exclusive advisory lock (`flock`) on open file `fd`; False where none can be taken (not POSIX, a
    file system without locks: then the caller goes on unlocked, as before there were locks)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        return False
    return True


@overload
def locked_csv(path: Path, create: Literal[True] = True) -> AbstractContextManager[int]: ...
@overload
def locked_csv(path: Path, create: bool) -> AbstractContextManager[int | None]: ...
@contextmanager  # type: ignore[misc]  # the overloads split its Iterator[int | None] by `create` (None only without)
def locked_csv(path: Path, create: bool = True) -> Iterator[int | None]:
    """Hold an exclusive advisory lock on the CSV at `path` while the block runs: every append to and rewrite of a
    CSV that processes may share (the ranks of one job: stats and scores CSVs) goes through it, so that rows one
    process appends while another rewrites the file (dropping rows to redo, deciding again) are never lost. The lock
    is on the file itself (`flock`: held until the descriptor is closed, whatever else the process opens and closes);
    a rewrite renames its new file into place while it holds the lock, so a process that was waiting finds another
    file under the name and locks that one instead. Yields a descriptor of the file open for reading and appending
    (created empty when missing with `create`; None when it is missing without). Where the file system takes no
    locks, the block runs unlocked."""
    flags = os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0) | getattr(os, "O_BINARY", 0)
    while True:
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            if create:
                raise
            yield None
            return
        try:
            if not _flock(fd):
                break
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced or removed by the process that held the lock: lock the file now under the name
    try:
        yield fd
    finally:
        os.close(fd)


def read_locked(fd: int) -> io.TextIOWrapper:
    """The CSV open as `fd` (`locked_csv`) as text from its start, read through that descriptor (closing another one
    of the same file would drop the lock where the file system emulates `flock` with POSIX locks); closing it leaves
    `fd` open."""
    f = open(fd, newline="", closefd=False, **CSV_TEXT)
    f.seek(0)
    return f


def _append_locked(fd: int, data: bytes, header: list[str] | None) -> None:
    """Append `data` (whole CSV lines) to the CSV open as `fd` (`locked_csv`), beginning an empty file with `header`.
    A file whose last line was cut (a process killed in the middle of a large append) gets a line end first, so the
    new rows start on a line of their own (readers drop the cut row: `recorded_done`, `detection.folder`)."""
    size = os.fstat(fd).st_size
    if header is not None and size == 0:
        buf = io.StringIO()
        csv.writer(buf).writerow(header)
        data = buf.getvalue().encode(**CSV_TEXT) + data
    elif size > 0:
        os.lseek(fd, size - 1, os.SEEK_SET)
        if os.read(fd, 1) not in (b"\n", b"\r"):
            data = b"\r\n" + data
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _StatsCSV:
    """Appends per-image rows to a CSV next to the outputs (header written once; resumes append). Processes sharing
    the file (--rank) append and rewrite it under its lock (`locked_csv`)."""

    def __init__(self, path: Path | None, fields: list[str] | None = None):
        self.path = path
        self.fields: list[str] | None = None
        self.given = list(fields) if fields else None  # the columns of a new file, when the caller fixes them
        self.lock = threading.Lock()
        if path is not None and path.is_file() and path.stat().st_size > 0:
            with open(path, newline="", **CSV_TEXT) as f:
                self.fields = next(csv.reader(f), None)
        if path is not None and self.fields is None and self.given:
            self._start(self.given)

    def _start(self, fields: list[str]) -> None:
        """Begin the file with the header `fields` (the caller holds the lock, or no other thread runs yet). When
        another process sharing the file (--rank) began it meanwhile, its header is kept and taken, never truncated
        with the rows it has added."""
        assert self.path is not None  # a CSV without a path is never started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with locked_csv(self.path) as fd:
            if os.fstat(fd).st_size == 0:
                _append_locked(fd, b"", fields)
                self.fields = fields
                return
            with read_locked(fd) as f:
                header = next(csv.reader(f), None)
        self.fields = header or fields

    def drop(self, key_field: str, keys: set[str] | Callable[[str], bool]) -> None:
        """Remove the rows whose `key_field` is in `keys` (or for which `keys(value)` is true): jobs about to be
        redone, so that each keeps one row. The file is rewritten atomically, under its lock, and only when it holds
        such a row; when no row is left, the file starts again (with the given columns, else the redo's rows set
        them)."""
        if self.path is None or not keys or not self.path.is_file() or self.fields is None:
            return
        match = keys if callable(keys) else keys.__contains__
        with self.lock:
            with locked_csv(self.path, create=False) as fd:
                if fd is None:
                    return
                with read_locked(fd) as f:
                    reader = csv.reader(f)
                    header = next(reader, None)
                    rows = list(reader)
                if not header or key_field not in header:
                    return
                k = header.index(key_field)
                kept = [r for r in rows if not (len(r) > k and match(r[k]))]
                if len(kept) == len(rows):
                    return
                if not kept:
                    self.path.unlink()
                    self.fields = None
                else:
                    buf = io.StringIO()
                    w = csv.writer(buf)
                    w.writerow(header)
                    w.writerows(kept)
                    atomic_write_bytes(self.path, buf.getvalue().encode(**CSV_TEXT))
            if self.fields is None and self.given:
                self._start(self.given)

    def ensure_fields(self, rows: list[dict]) -> None:
        """Fix the columns, when no header fixes them yet, to every key of `rows` (in first-seen order)."""
        if self.path is None or not rows:
            return
        with self.lock:
            if self.fields is None:
                keys: list[str] = []
                for r in rows:
                    keys.extend(k for k in r if k not in keys)
                self._start(keys)

    def add(self, rows: list[dict]) -> None:
        if self.path is None or not rows:
            return
        self.ensure_fields(rows)
        buf = io.StringIO()
        fields = self.fields
        assert fields is not None  # ensure_fields fixed them
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writerows(rows)
        with self.lock, locked_csv(self.path) as fd:
            # the header again when another process sharing the file removed it meanwhile (it dropped every row)
            _append_locked(fd, buf.getvalue().encode(**CSV_TEXT), fields)


def call_process(process: Callable[[list[LoadedImage]], list[Outcome]], items: list[LoadedImage]) -> list[Outcome]:
    """Call a batch function robustly: one `Outcome` per item, in order.

    An exception from a batch of several retries the items one by one, so one bad image does not sink
    its batch mates; an item that still raises becomes `Outcome.fail`. A `PufaceError` (a user's
    mistake, e.g. missing weights) propagates.
    """
    try:
        outcomes = process(items)
        if len(outcomes) != len(items):
            raise RuntimeError(f"batch function returned {len(outcomes)} results for {len(items)} inputs")
        return outcomes
    except PufaceError:
        raise
    except Exception as e:
        if len(items) == 1:
            return [Outcome.fail(f"processing failed ({type(e).__name__}: {e})")]
    outcomes = []
    for it in items:
        try:
            one = process([it])
            if len(one) != 1:
                raise RuntimeError(f"batch function returned {len(one)} results for 1 input")
            outcomes.extend(one)
        except PufaceError:
            raise
        except Exception as e1:
            outcomes.append(Outcome.fail(f"processing failed ({type(e1).__name__}: {e1})"))
    return outcomes


def run_folder_job(
    jobs: Sequence[FileJob],
    process: Callable[[list[LoadedImage]], list[Outcome]],
    *,
    batch_size: int = 16,
    resume: bool = True,
    desc: str = "processing",
    verb: str = "written",
    stats_csv: Path | None = None,
    quality: int = 95,
    io_workers: int = 2,
    prefetch_batches: int = 2,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    is_done: Callable[[FileJob], bool] | None = None,
    stats_fields: list[str] | None = None,
    stats_key: str = "file",
    stats_status: bool = True,
) -> JobReport:
    """Stream `jobs` through `process` in batches and write the results.

    Args:
        jobs: from `plan_mirror` (or `shard` of it).
        process: maps a list of decoded inputs to one `Outcome` per input (same order).
        batch_size: images per call of `process`.
        resume: skip jobs whose output already exists (outputs are written atomically, so an
            existing output is complete).
        stats_csv: where per-image `Outcome.stats` rows are appended (columns: `stats_key` with the
            input's path relative to the input root, "status" unless `stats_status` is False, then the
            stats; `stats_fields` fixes the columns of a new file, else the first batch's keys do).
        is_done: with `resume`, which jobs are finished (default: their output file exists).
        quality: JPEG/WebP quality for lossy outputs.
        io_workers: decoding and encoding threads (they overlap with `process`).
    Returns:
        A `JobReport`; its `exit_code` is 1 when any file failed.
    """
    from tqdm import tqdm

    max_pixels()  # a bad $PUFACE_MAX_PIXELS: one error, not one failure per file
    report = JobReport(total=len(jobs))
    t0 = time.perf_counter()
    todo, report.resumed = resume_split(jobs, resume, is_done, stats_csv, stats_key)
    # a killed run's half-written outputs, under temporary names; not for jobs that write no file (`detect`: dst is the
    # input, whose folder is another program's to clean, maybe one writing it from another machine)
    remove_stale_temporaries(j.dst for j in todo if j.dst != j.src)
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    stats = _StatsCSV(stats_csv, stats_fields)
    stats.drop(stats_key, {j.rel.as_posix() for j in todo})  # rows of jobs done before and redone now
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)

    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            bar.write(msg, file=sys.stderr)

    def decode(job: FileJob) -> LoadedImage | Exception:
        try:
            return load_for_job(job)
        except ImageReadError as e:
            return e
        except Exception as e:  # never let one file stop the batch
            return ImageReadError(job.src, f"unexpected read error ({type(e).__name__}: {e})")

    lock = threading.Lock()

    def stats_rows(item: LoadedImage, out: Outcome) -> list[dict]:
        if not out.stats:
            return []
        head = {stats_key: item.job.rel.as_posix()}
        if stats_status:
            head["status"] = out.status
        return [{**head, **out.stats}]

    def write(item: LoadedImage, out: Outcome) -> bool:
        """Write one outcome; False when its output could not be written (reported as failed)."""
        try:
            _write_outcome(item, out, quality)
        except Exception as e:
            why = f"cannot write {shown_path(out.dst or item.job.dst)} ({getattr(e, 'reason', None) or e})"
            with lock:
                report.failed.append((item.job.src, why))
            say(f"error: {shown_path(item.job.src)}: {why}")
            return False
        with lock:
            if out.status in ("ok", "record"):
                report.written += 1
            elif out.status == "copy":
                report.copied.append((item.job.src, out.reason))
            elif out.status == "skip":
                report.skipped.append((item.job.src, out.reason))
        return True

    # each job's CSV row goes in only once its output is in place (a row never stands for a missing file), in the
    # jobs' order: a batch's rows wait until all its writes are done, and batches keep their order
    rows_due: deque[list[tuple[Future | None, list[dict]]]] = deque()

    def add_rows(wait: bool) -> None:
        while rows_due and (wait or all(f is None or f.done() for f, _ in rows_due[0])):
            for f, rows in rows_due.popleft():
                if f is None or f.result():
                    stats.add(rows)

    with ThreadPoolExecutor(max_workers=max(1, io_workers), thread_name_prefix="puface-io") as pool:
        pending: deque[list[Future]] = deque()
        # writes not known to be done, in order: those done are let go as the job goes (a finished future holds ~1.7 kB,
        # so keeping all of them held 1.7 GB per million images)
        writes: deque[Future] = deque()
        next_batch = 0

        def submit_next() -> None:
            nonlocal next_batch
            if next_batch < len(batches):
                pending.append([pool.submit(decode, j) for j in batches[next_batch]])
                next_batch += 1

        for _ in range(max(1, prefetch_batches)):
            submit_next()
        try:
            while pending:
                futures = pending.popleft()
                submit_next()
                items: list[LoadedImage] = []
                for f in futures:
                    r = f.result()
                    if isinstance(r, Exception):
                        src = getattr(r, "path", "?")
                        reason = getattr(r, "reason", str(r))
                        report.failed.append((Path(src), reason))
                        say(f"error: {shown_path(src)}: {reason}")
                        bar.update(1)
                    else:
                        items.append(r)
                if not items:
                    continue
                outcomes = call_process(process, items)
                rows = [stats_rows(item, out) for item, out in zip(items, outcomes)]
                # the first batch's rows set the columns (all their keys), though each row is added once written
                stats.ensure_fields([r for rs in rows for r in rs])
                due: list[tuple[Future | None, list[dict]]] = []
                for item, out, rs in zip(items, outcomes, rows):
                    if out.status == "fail":
                        report.failed.append((item.job.src, out.reason))
                        say(f"error: {shown_path(item.job.src)}: {out.reason}")
                        due.append((None, rs))
                    else:
                        if out.status in ("copy", "skip"):
                            verb = "copied" if out.status == "copy" else "skipped"
                            say(f"{verb}: {shown_path(item.job.src)}: {out.reason}")
                        writes.append(pool.submit(write, item, out))
                        due.append((writes[-1], rs))
                rows_due.append(due)
                add_rows(wait=False)
                while writes and writes[0].done():
                    writes.popleft().result()
                bar.update(len(items))
        finally:
            for w in writes:
                w.result()
            add_rows(wait=True)
            bar.close()
    report.seconds = time.perf_counter() - t0
    return report


def group_by_size(items: Iterable[LoadedImage]) -> dict[tuple[int, int], list[int]]:
    """Indices of `items` grouped by image (height, width), so each group stacks into one tensor."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(tuple(it.image.shape[:2]), []).append(i)
    return groups
