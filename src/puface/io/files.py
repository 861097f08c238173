"""Finding image files under a folder, and where an output folder may lie relative to its input."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..utils.errors import PufaceError, shown_path
from .images import is_image_file, is_unsupported_image_file, same_file

__all__ = [
    "is_within",
    "is_visible",
    "list_image_files",
    "iter_image_files",
    "check_output_folder",
    "check_output_root",
    "check_output_file",
    "check_inside_output",
    "is_case_insensitive",
    "Listing",
]

log = logging.getLogger(__name__)


def is_visible(p: Path) -> bool:
    """False for hidden entries (a leading dot; puface's own temporary files are hidden too)."""
    return not p.name.startswith(".")


def is_within(p: str | Path, folder: str | Path) -> bool:
    """True when `p` is `folder` or lies below it (links resolved)."""
    try:
        Path(p).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


@dataclass
class Listing:
    """What a walk of an input folder met (`iter_image_files(listing=)`), for `--dry-run`: the files it listed as
    images (`images`), of which `unsupported` cannot be read, as seen without opening them (formats puface cannot
    read, links to a file that does not exist: a job lists them as failed), and the visible files it left out as not
    images (`others`, the first `KEEP` of them by path in `other_paths`)."""

    KEEP = 5
    images: int = 0
    unsupported: int = 0
    others: int = 0
    other_paths: list[Path] = field(default_factory=list)

    def listed(self, p: Path) -> None:
        self.images += 1
        self.unsupported += is_unsupported_image_file(p) or (p.is_symlink() and not p.exists())

    def left_out(self, p: Path) -> None:
        self.others += 1
        if len(self.other_paths) < self.KEEP:
            self.other_paths.append(p)


def list_image_files(root: str | Path, exclude: Iterable[str | Path] = (), unsupported: bool = False) -> list[Path]:
    """All image files under `root` (recursive, sorted), skipping hidden entries and `exclude` folders;
    `unsupported`: image files puface cannot read too (GIF, HEIC, ..., and links to a file that does not exist: a
    folder job lists them as failed).

    Links to folders are followed, except a link back to a folder that is being listed (a folder loop,
    e.g. `a/b -> a`): it is skipped with a warning, so a loop cannot list the same images again and again.
    """
    return list(iter_image_files(root, exclude, unsupported))


def iter_image_files(root: str | Path, exclude: Iterable[str | Path] = (), unsupported: bool = False,
                     listing: Listing | None = None) -> Iterator[Path]:
    """`list_image_files` one file at a time, in the same (sorted) order, holding only the entries of the folders
    above the current one: a job that keeps some of the files (one rank's share) never holds the whole tree.
    listing: counts each file yielded and each visible file left out as not an image (`Listing`).

    The order is the sorted one because a folder's entries are visited in name order, each sub-folder's files where
    its name falls (a path sorts by its parts, and a folder's files share the folder's parts); a folder that cannot
    be listed raises when the walk reaches it.
    """
    root = Path(root)
    excl = [Path(e) for e in exclude]
    # a stack of (folder, the keys of the folders above its entries, its remaining entries (sorted, reversed))
    stack: list[tuple[Path, frozenset, list[os.DirEntry[str]]]] = []

    def enter(d: Path, above: frozenset) -> None:
        if any(is_within(d, e) for e in excl):
            return
        try:
            st = os.stat(d)
            key = (st.st_dev, st.st_ino)
            if key in above:
                log.warning("warning: skipping %s: a link back to the folder %s (a folder loop)", shown_path(d),
                            shown_path(d.resolve()))
                return
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError as e:
            raise PufaceError(f"{d}: cannot list folder ({e.strerror or e})") from None
        stack.append((d, above | {key}, entries))  # the folders above each entry of d

    enter(root, frozenset())
    while stack:
        d, below, entries = stack[-1]
        if not entries:
            stack.pop()
            continue
        entry = entries.pop()
        name = entry.name
        if name.startswith("."):  # hidden (`is_visible`)
            continue
        if _entry_is(entry, "dir"):  # the folder's own entry types: no stat per file (only per link)
            enter(d / name, below)
            continue
        if not (is_image_file(name) or (unsupported and is_unsupported_image_file(name))):
            if listing is not None and _entry_is(entry, "file"):
                listing.left_out(d / name)
            continue
        if _entry_is(entry, "file") or (unsupported and entry.is_symlink() and not (d / name).exists()):
            if listing is not None:  # (the second: a broken link)
                listing.listed(d / name)
            yield d / name


def _entry_is(entry: os.DirEntry[str], kind: str) -> bool:
    """`entry.is_dir()` / `entry.is_file()` (links followed; the type the folder listing gave, a `stat` only for a
    link), False where it cannot be looked at (a link loop), as `Path.is_dir` / `Path.is_file` say."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:
        return False


def _file_in_the_way(paths: Iterable[Path]) -> Path | None:
    """The first of `paths` (a path, then its parents) that exists, when it is not a folder; None otherwise."""
    for p in paths:
        if p.exists():
            return None if p.is_dir() else p
    return None


def check_output_root(out_folder: str | Path) -> None:
    """Refuse an output folder that is an existing file (or lies below one): one error, not one per output."""
    out = Path(out_folder)
    p = _file_in_the_way((out, *out.parents))
    if p is not None:
        where = "is a file" if p == out else f"lies below the file {p}"
        raise PufaceError(f"output folder {out} {where}, not a folder; choose another output folder")


def check_output_file(path: str | Path, what: str = "output file", inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before any work, an output file that is an existing folder, lies below a file, or is one of `inputs`
    (files the job reads: inputs are never overwritten)."""
    out = Path(path)
    if out.is_dir():
        raise PufaceError(f"{what} {out} is a folder; give a file name")
    p = _file_in_the_way(out.parents)
    if p is not None:
        raise PufaceError(f"{what} {out} lies below the file {p}; choose another place")
    for inp in inputs:
        if out.exists() and same_file(out, inp):
            raise PufaceError(f"{what} {out} is the input {inp}; write to another file (inputs are never overwritten)")


def check_inside_output(path: str | Path, out_root: str | Path) -> None:
    """Refuse to write `path` (below the output folder `out_root`) when a link among its folders leads outside
    `out_root` (OUT/A -> /elsewhere: OUT/A/x.jpg would land in /elsewhere): a `PufaceError` naming where it leads.
    `out_root` itself may be a link (the user named it); folders not made yet are fine (made below a real folder)."""
    folder, root = Path(path).parent, Path(out_root)
    if not is_within(folder, root):
        raise PufaceError(f"its folder {shown_path(folder)} leads outside the output folder {shown_path(root)} "
                          f"(a link, to {shown_path(folder.resolve())}); refusing to write through it")


def check_output_folder(in_folder: str | Path, out_folder: str | Path) -> None:
    """Refuse an output folder that is the input folder, lies inside it, or holds it.

    Inside the input, a later run over the input would read the outputs as inputs (and a data scan
    would take the output folder for an identity); holding it, outputs could overwrite inputs.
    """
    src, dst = Path(in_folder), Path(out_folder)
    if src.resolve() == dst.resolve():
        raise PufaceError(f"output folder {dst} is the input folder; choose another one (inputs are never overwritten)")
    if is_within(dst, src):
        raise PufaceError(f"output folder {dst} lies inside the input folder {src}; choose a folder outside it "
                          "(a later run over the input would read these outputs as inputs)")
    if is_within(src, dst):
        raise PufaceError(f"input folder {src} lies inside the output folder {dst}; choose another output folder")


def is_case_insensitive(folder: str | Path) -> bool | None:
    """Whether names in `folder` (one not made yet: in the nearest folder above it that exists) match without regard
    to letter case, as on macOS's and Windows' default disks, exFAT and FAT: True or False; None where it cannot be
    told (no name with a letter between it and its disk's mount point). Reads only: looks up a name above it with
    its letters' case swapped."""
    p = Path(os.path.abspath(folder))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        dev = p.stat().st_dev
        q = p
        while q != q.parent and q.parent.stat().st_dev == dev:  # the name is looked up on the disk in question
            swapped = q.name.swapcase()
            if swapped != q.name:
                other = q.parent / swapped
                return other.exists() and os.path.samefile(other, q)
            q = q.parent
    except OSError:
        return None
    return None
