"""Sharded data sets in and out: WebDataset tar shards and Parquet (Hugging Face `datasets`) files.

FR training sets often come as shards rather than image folders: WebDataset `.tar` files (each record
a group of files sharing a key: `000123.jpg`, `000123.cls`, ...) or Parquet files with an image column
(raw bytes, or the `datasets` Image struct {bytes, path}). `run_shard_job` streams each input shard
through a batch function (the same one the folder jobs use) and writes a shard of the same format with
the same records, keys, order and other fields; only the image changes.

- Reading and writing go through `webdataset` (tar grouping, `TarWriter`) and `pyarrow.parquet`; the
  `shards` extra installs them (`pip install puface[shards]`).
- Hidden tar members (`._000.jpg`: macOS's AppleDouble files) and `__MACOSX/` are not records: left out.
- Every image of a WebDataset record is processed (a record of several images, `000123.left.jpg` and
  `000123.right.jpg`, gets each purified; `--image-field left.jpg` names the ones to process, e.g. to leave a mask
  alone); a Parquet file with several image-struct columns is refused until `--image-field` names one.
- A record whose image (or one of its images) cannot be decoded or processed is reported (`shard:key`, or
  `shard:key.field` for a record of several images) and left out of the output whole; the others are written.
- A tar member that is not a regular file (a symbolic or hard link, a device) is never followed: its record is
  listed as failed, naming the member, and left out.
- Each output shard is written under a temporary hidden name and renamed when complete, so an existing
  output shard is a finished one: a rerun skips it (resume per shard). The output folder's settings record says
  which version of the job wrote it (`SHARD_VERSION`); a resume over shards an earlier version wrote with images
  left as they were is refused, naming them (`check_earlier_outputs`).
"""

from __future__ import annotations

import glob
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Container, Iterable, Iterator, Sequence


from ..utils.errors import ImageReadError, MissingDependencyError, PufaceError, shown_path
from ..utils.paths import create_temporary
from .files import check_output_folder, check_output_root, list_image_files
from .images import encode_image, max_pixels
from .jobs import (FileJob, JobReport, LoadedImage, Outcome, _read_settings, _StatsCSV, call_process, load_for_job,
                   split_done)

__all__ = ["SHARD_SUFFIXES", "SHARD_VERSION", "ShardJob", "ShardReport", "check_earlier_outputs", "find_shards",
           "is_shard_input", "plan_shards", "run_shard_job", "read_records", "image_fields_of"]

SHARD_SUFFIXES = {".tar": "webdataset", ".parquet": "parquet"}
#: the package each shard format (and the {a..b} pattern of shard names) needs: the `shards` extra
_FORMAT_MODULES = {"webdataset": "webdataset", "parquet": "pyarrow", "pattern": "braceexpand"}
#: WebDataset field extensions that hold an image, in the order they are looked for, and their Pillow format.
WDS_IMAGE_FIELDS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP"}
#: Parquet column names tried first for the image (then the first binary or {bytes, path} column).
PARQUET_IMAGE_NAMES = ("image", "img", "jpg", "png", "webp", "picture", "face")
_GLOB_CHARS = "*?[{"
#: What a shard job's outputs hold, recorded in its output folder's settings record ("shard_version"): 2, every image
#: of a WebDataset record processed. Folders without it were written by earlier versions, which processed the first
#: image of a record of several only (and the first of several Parquet image columns): `check_earlier_outputs`.
SHARD_VERSION = 2


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(f"WebDataset / Parquet shards need the '{module}' package, which is not "
                                     "installed; fix: pip install 'puface[shards]'") from None


@dataclass(frozen=True)
class ShardJob:
    """One input shard, the output shard it becomes, and its format ("webdataset" or "parquet")."""

    src: Path
    dst: Path
    format: str


@dataclass
class ShardReport(JobReport):
    """A `JobReport` over the records of the shards written (`total`, `written`, `failed` as "shard:key"), plus
    shard counts: a shard that cannot be read or written to the end is left out whole, listed in `shards_failed`
    (its records are not counted)."""

    shards: int = 0
    shards_written: int = 0
    shards_resumed: int = 0
    shards_failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.shards_failed else 0

    def summary(self, verb: str = "written", listed_in: dict[str, Path] | None = None) -> str:
        head = (f"{self.shards} shards: {self.shards_written} {verb}, {self.shards_resumed} already done (skipped), "
                f"{len(self.shards_failed)} failed; records of the shards written: ")
        lines = [head + super().summary(verb, listed_in)]
        if self.shards_failed:
            lines.append(f"FAILED shards, left out whole ({len(self.shards_failed)}):")
            lines.extend(f"  {shown_path(p)}: {why}" for p, why in self.shards_failed)
        return "\n".join(lines)


def _has_glob(text: str) -> bool:
    return any(c in text for c in _GLOB_CHARS)


def _expand(text: str) -> list[str]:
    """WebDataset's brace notation expanded (`braceexpand`, a dependency of webdataset); a plain glob as it is."""
    return list(_need(_FORMAT_MODULES["pattern"]).braceexpand(text)) if "{" in text else [text]


def _shard_format(path: Path) -> str | None:
    return SHARD_SUFFIXES.get(path.suffix.lower())


def find_shards(spec: str | Path) -> tuple[list[Path], Path]:
    """The shard files `spec` names and the base folder their output names are relative to.

    spec: one `.tar` / `.parquet` file; a folder (every shard below it, recursively); a glob
    (`data/*.tar`); or WebDataset's brace notation (`shard-{000000..000009}.tar`).
    """
    text = str(spec)
    if _has_glob(text) and not Path(text).exists():
        patterns = _expand(text)
        files = sorted(
            {
                Path(f)
                for pat in patterns
                for f in (glob.glob(pat) if _has_glob(pat) else [pat] if Path(pat).exists() else [])
            }
        )
        files = [f for f in files if f.is_file() and _shard_format(f)]
        if not files:
            raise PufaceError(f"{text}: no .tar or .parquet shard matches")
        parts = Path(text).parts
        fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if _has_glob(p))]]
        base = Path(*fixed) if fixed else Path(".")
        return files, base
    path = Path(text)
    if not path.exists():
        raise PufaceError(f"{path}: no such file or folder")
    if path.is_file():
        if not _shard_format(path):
            raise PufaceError(f"{path}: not a shard (expected .tar or .parquet)")
        return [path], path.parent
    files = sorted(p for p in path.rglob("*") if p.is_file() and _shard_format(p)
                   and not any(q.startswith(".") for q in p.relative_to(path).parts))
    return files, path


def _holds_shards(folder: Path) -> bool:
    """True when a .tar / .parquet file lies below `folder` (links to folders not followed, as `Path.rglob`). Names
    first: a `stat` only for a shard's name, none per image of an image folder (`purify` asks this of every input)."""
    for top, _, names in os.walk(folder):
        for name in names:
            if os.path.splitext(name)[1].lower() in SHARD_SUFFIXES and os.path.isfile(os.path.join(top, name)):
                return True
    return False


def is_shard_input(spec: str | Path) -> bool:
    """True when `spec` names shards (a .tar/.parquet file, a glob of them, or a folder holding shards
    and no images); False for an image file or an image folder. A folder holding both is refused."""
    text = str(spec)
    p = Path(text)
    if p.is_file():
        return _shard_format(p) is not None
    if p.is_dir():
        if not _holds_shards(p):
            return False
        if list_image_files(p):
            raise PufaceError(f"{p}: holds both image files and .tar/.parquet shards; pass the shards as a glob "
                              f"(e.g. '{p}/*.tar') or move them apart")
        return True
    if not _has_glob(text):
        return False
    patterns = _expand(text)  # 'data.{tar,parquet}' too
    return all(any(pat.lower().endswith(s) for s in SHARD_SUFFIXES) for pat in patterns)


def _known_format(path: Path) -> str:
    """The format of a shard `find_shards` found (it keeps only the files `_shard_format` knows)."""
    fmt = _shard_format(path)
    if fmt is None:
        raise PufaceError(f"{path}: not a shard (expected .tar or .parquet)")
    return fmt


def plan_shards(spec: str | Path, out_root: str | Path) -> list[ShardJob]:
    """Map every shard `spec` names to the same relative path under `out_root` (see `find_shards`)."""
    files, base = find_shards(spec)
    for fmt in sorted({_known_format(f) for f in files}):  # a missing extra is one line before any output
        _need(_FORMAT_MODULES[fmt])
    out_root = Path(out_root)
    check_output_root(out_root)
    if base.is_dir() and Path(spec).is_dir():
        check_output_folder(base, out_root)
    if not all(f.absolute().is_relative_to(base.absolute()) for f in files):
        # shards from several folders ({a,b}/data.tar): names relative to the folder they all lie in
        base = Path(os.path.commonpath([str(f.parent.absolute()) for f in files]))
    jobs: list[ShardJob] = []
    seen: dict[Path, Path] = {}
    for f in files:
        dst = out_root / f.absolute().relative_to(base.absolute())
        if dst.resolve() == f.resolve():
            raise PufaceError(f"{dst}: output shard equals an input shard; choose another output folder")
        if dst in seen:
            raise PufaceError(
                f"{seen[dst]} and {f} would both be written to {dst}; purify them into separate output folders"
            )
        seen[dst] = f
        jobs.append(ShardJob(f, dst, _known_format(f)))
    return jobs


# ---- reading ------------------------------------------------------------------------------------

@dataclass
class Record:
    """One record of a shard: its key, its fields as stored, and which fields hold its images.

    WebDataset: `fields` maps extension -> bytes; `images` maps each image field to process (`image_fields_of`) to
    its bytes (None: a field named by `--image-field` that the record lacks). Parquet: `fields` is the row
    (column -> value) and `row` its index in the file; `images` holds the one image column's bytes. `image_field` and
    `image_bytes` are the first image's.
    """

    key: str
    fields: dict
    images: dict[str, bytes | None]
    row: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def image_field(self) -> str | None:
        return next(iter(self.images), None)

    @property
    def image_bytes(self) -> bytes | None:
        return next(iter(self.images.values()), None)


def _is_image_field(name: str) -> bool:
    return not name.startswith("__") and name.rsplit(".", 1)[-1].lower() in WDS_IMAGE_FIELDS


def image_fields_of(fields: dict, wanted: str | None = None) -> list[str]:
    """The WebDataset fields of a record that hold its images, in the record's order: those named in `wanted` (one
    field, or several separated by commas: "left.jpg,right.jpg"), else every field whose extension is an image's
    (jpg, jpeg, png, webp, bmp; "face.jpg" style too)."""
    if wanted:
        return [w.strip() for w in wanted.split(",") if w.strip()]
    return [k for k in fields if _is_image_field(k)]


def _wds_member(name: str) -> bool:
    """False for OS junk in a tar: hidden members (a component with a leading dot, e.g. macOS's AppleDouble
    `._000.jpg` that `tar` adds beside each file with extended attributes) and anything under `__MACOSX/`.
    Read as records, they split each real record in two (WebDataset groups consecutive members by key)."""
    parts = PurePosixPath(name).parts
    return not any((q.startswith(".") and q not in (".", "..")) or q == "__MACOSX" for q in parts)


@dataclass(frozen=True)
class _NotAFile:
    """A tar member that is not a regular file (a link, a device, a FIFO), in place of its bytes."""

    what: str


def _not_a_file(m: Any) -> str:
    """What a non-regular tar member `m` (a `tarfile.TarInfo`) is, e.g. "a symbolic link to /etc/passwd"."""
    if m.issym():
        return f"a symbolic link to {m.linkname}"
    if m.islnk():
        return f"a hard link to {m.linkname}"
    if m.ischr() or m.isblk():
        return "a device file"
    return "a FIFO" if m.isfifo() else "not a regular file"


def _tar_members(f: Any, url: str) -> Iterator[dict]:
    """The members of a tar stream as webdataset's `tar_file_iterator` gives them ({"fname", "data", "__url__"}; its
    metadata members `__*__` and folders left out), and OS junk (`_wds_member`) left out too; a link, device or FIFO
    is given as a `_NotAFile` instead of being dropped without a word (its record would vanish from the output)."""
    import tarfile

    with tarfile.open(fileobj=f, mode="r|*") as stream:
        for m in stream:
            name = m.name
            meta = "/" not in name and name.startswith("__") and name.endswith("__")  # webdataset's metadata
            if m.isdir() or meta or not _wds_member(name):
                continue
            if m.isreg():
                data: bytes | _NotAFile = stream.extractfile(m).read()  # type: ignore[union-attr]  # a file has one
            else:
                data = _NotAFile(_not_a_file(m))
            yield {"fname": name, "data": data, "__url__": url}
            stream.members = []  # type: ignore[attr-defined]  # typeshed lacks it; streaming: forget headers read


def _read_wds(path: Path, image_field: str | None) -> Iterator[Record]:
    _need("webdataset")
    from webdataset.tariterators import group_by_keys

    with open(path, "rb") as f:
        for i, sample in enumerate(group_by_keys(_tar_members(f, str(path)), lcase=False)):
            key = sample["__key__"]
            fields = {k: v for k, v in sample.items() if not k.startswith("__")}
            bad = [f"member {key}.{k} is {v.what}, not a file" for k, v in fields.items() if isinstance(v, _NotAFile)]
            yield Record(key, fields, {f: fields.get(f) for f in image_fields_of(fields, image_field)}, row=i,
                         extra={"not_files": "; ".join(bad)} if bad else {})


def _parquet_image_column(schema, wanted: str | None) -> tuple[str, bool]:
    """(column name, is_struct) of the image column of a Parquet schema."""
    import pyarrow as pa

    def kind(t) -> str | None:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "bytes"
        if pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)):
            return "struct"
        return None

    names = [f.name for f in schema]
    if wanted and "," in wanted:
        raise PufaceError(f"--image-field {wanted}: a Parquet file is purified one image column at a time; name one "
                          "column and run again on the output for the next")
    if wanted:
        if wanted not in names:
            raise PufaceError(f"no column {wanted!r} in the Parquet file (columns: {', '.join(names)})")
        k = kind(schema.field(wanted).type)
        if k is None:
            raise PufaceError(
                f"column {wanted!r} is {schema.field(wanted).type}, not image bytes or a {{bytes, path}} struct"
            )
        return wanted, k == "struct"
    cands = [(n, kind(schema.field(n).type)) for n in names if kind(schema.field(n).type)]
    if not cands:
        raise PufaceError(f"no image column (binary, or a {{bytes, path}} struct) among {', '.join(names)}; "
                          "pass --image-field")
    structs = [n for n, k in cands if k == "struct"]
    if len(structs) > 1:  # never purify one and pass the others on as they are without a word
        raise PufaceError(f"several image columns ({', '.join(structs)}); puface purifies one column at a time: pass "
                          f"--image-field {structs[0]}, then run again on the output with the next")
    for pref in PARQUET_IMAGE_NAMES:
        for n, k in cands:
            if n.lower() == pref:
                return n, k == "struct"
    return cands[0][0], cands[0][1] == "struct"


def _parquet_key(row: dict, index: int) -> str:
    for name in ("__key__", "key", "id", "image_id", "filename", "file_name", "path"):
        v = row.get(name)
        if isinstance(v, (str, int)):
            return str(v)
    return f"row{index}"


def _iter_parquet_batches(path: Path, image_field: str | None, batch_size: int):
    _need("pyarrow")
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    col, is_struct = _parquet_image_column(pf.schema_arrow, image_field)
    row0 = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        rows = batch.to_pylist()
        recs = []
        for i, r in enumerate(rows):
            v = r[col]
            data = (v or {}).get("bytes") if is_struct else v
            recs.append(Record(_parquet_key(r, row0 + i), r, {col: data}, row=row0 + i))
        row0 += len(rows)
        yield batch, recs


def read_records(path: str | Path, image_field: str | None = None) -> Iterator[Record]:
    """Every record of a shard in order (WebDataset tar or Parquet), with its image bytes."""
    path = Path(path)
    fmt = _shard_format(path)
    if fmt == "webdataset":
        yield from _read_wds(path, image_field)
    elif fmt == "parquet":
        for _, recs in _iter_parquet_batches(path, image_field, 256):
            yield from recs
    else:
        raise PufaceError(f"{path}: not a shard (expected .tar or .parquet)")


# ---- outputs of earlier versions ------------------------------------------------------------------

def _wds_several_images(path: Path) -> str | None:
    """The key of the first record of a WebDataset tar that holds several image fields, None when none does. Reads the
    members' headers only (names, as `_read_wds` groups them), not their data."""
    import re
    import tarfile

    key, images = None, 0
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if not m.isfile() or not _wds_member(m.name):
                continue
            match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", m.name)  # webdataset's base_plus_ext
            if match is None:
                continue
            if match.group(1) != key:
                key, images = match.group(1), 0
            images += _is_image_field(match.group(2))
            if images > 1:
                return key
    return None


def _parquet_image_structs(path: Path) -> list[str]:
    """The {bytes, path} struct columns of a Parquet file (its schema only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return [f.name for f in schema
            if pa.types.is_struct(f.type) and any(f.type.field(i).name == "bytes" for i in range(f.type.num_fields))]


def check_earlier_outputs(record_path: Path, jobs: Sequence[ShardJob], image_field: str | None) -> None:
    """Refuse to resume into an output folder whose settings record (`record_path`) an earlier version of the shard job
    wrote (no "shard_version", or one below `SHARD_VERSION`) when one of its output shards of `jobs` holds images that
    version left as they were: a WebDataset record of several images (it processed the first one only) or a Parquet
    file of several image structs (the first column only), where no `image_field` was named. Other output shards of
    such a folder are what this version writes and stay done. Every job's output is looked at, whichever process
    (--rank) takes it, so that the processes of a job agree. The refusal names the shards: delete them and resume
    (only they are redone), or redo every shard with --no-resume."""
    try:
        old = _read_settings(record_path)
    except PufaceError:
        return  # unreadable: `check_settings` says so
    if old is None or image_field or int(old.get("shard_version") or 1) >= SHARD_VERSION:
        return
    stale: list[str] = []
    for job in jobs:
        if not job.dst.is_file():
            continue
        try:
            if job.format == "webdataset":
                key = _wds_several_images(job.dst)
                why = None if key is None else f"record {key} holds several images"
            else:
                cols = _parquet_image_structs(job.dst)
                why = f"image columns {', '.join(cols)}" if len(cols) > 1 else None
        except Exception as e:  # an output shard that cannot be read is named too
            why = f"unreadable ({type(e).__name__})"
        if why is not None:
            stale.append(f"{job.dst} ({why})")
    if stale:
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise PufaceError(
            f"{record_path.parent}: {len(stale)} output shard(s) written by an earlier puface, which processed only "
            f"the first image of a record (or column) of several and left the others as they were: "
            f"{'; '.join(stale[:3])}{more}; delete them and resume (only they are redone), or pass --no-resume to "
            "redo every shard")


# ---- the job ------------------------------------------------------------------------------------

def _decode(label: Path, rec: Record, image_field: str | None) -> LoadedImage | ImageReadError:
    """Image `image_field` of `rec` decoded (None: the record has no image field); `label` names it in errors. A record
    holding a tar member that is not a regular file (a link, a device) fails whole: it cannot be written as it was."""
    if rec.extra.get("not_files"):
        return ImageReadError(label, f"{rec.extra['not_files']} (links and devices in a tar are not read); the record "
                                     "is left out")
    data = rec.images.get(image_field) if image_field is not None else None
    if data is None:
        if image_field is None:
            what = "no image field (jpg, jpeg, png, webp, bmp)"
        else:
            what = f"field {image_field!r} is empty" if image_field in rec.fields else f"no field {image_field!r}"
        return ImageReadError(label, what)
    try:
        item = load_for_job(FileJob(label, label, Path(rec.key)), data=bytes(data))
    except ImageReadError as e:
        return e
    except Exception as e:  # never let one record stop the shard
        return ImageReadError(label, f"unexpected read error ({type(e).__name__}: {e})")
    return item


def _pil_format(item: LoadedImage, image_field: str, fmt: str) -> str:
    if fmt == "webdataset":
        ext = image_field.rsplit(".", 1)[-1].lower()
        if ext in WDS_IMAGE_FIELDS:
            return WDS_IMAGE_FIELDS[ext]
    return item.format if item.format in ("JPEG", "PNG", "WEBP", "BMP") else "PNG"


def _remove_stale_temporaries(dsts: Iterable[Path]) -> None:
    """Delete the partial shards (`.NAME.PID.tmp`) of the output shards `dsts` that a killed process left, when no
    process of that id runs on this machine (a live one may be another process writing it). Each folder is listed
    once (not once per shard: a folder of 10,000 shards was listed 10,000 times)."""
    names: dict[Path, set[str]] = {}
    for dst in dsts:
        names.setdefault(dst.parent, set()).add(dst.name)
    for folder, mine in names.items():
        try:
            entries = [e.name for e in os.scandir(folder)]
        except OSError:
            continue
        for entry in entries:
            if not (entry.startswith(".") and entry.endswith(".tmp")):
                continue
            name, _, pid = entry[1 : -len(".tmp")].rpartition(".")
            pid = pid.partition("-")[0]  # `.NAME.PID-N.tmp`: a fresh name (`utils.paths.create_temporary`)
            if name not in mine or not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
                continue  # alive
            except ProcessLookupError:
                pass
            except OSError:  # alive but not ours (EPERM)
                continue
            (folder / entry).unlink(missing_ok=True)


class _ShardWriter:
    """Writes the records of one output shard under a temporary name; `commit` renames it into place."""

    ROW_GROUP = 1024  # Parquet rows per row group written
    _pq: Any  # Parquet: the pyarrow ParquetWriter, None until the first row group
    _buffer: list[Any]  # Parquet: the pyarrow tables not written yet

    def __init__(self, job: ShardJob):
        self.job = job
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = create_temporary(job.dst, thread=False)  # a new file: never through a link at its name
        self._file = open(fd, "wb")
        self.count = 0
        if job.format == "webdataset":
            from webdataset import TarWriter

            # a fixed mtime: the same records give the same bytes on every run and engine
            self._tar = TarWriter(self._file, encoder=False, mtime=int(job.src.stat().st_mtime))
        else:
            self._pq = None

    def write_wds(self, rec: Record, images: dict[str, bytes]) -> None:
        """Write `rec` with the image fields in `images` replaced (the others as they were)."""
        fields = {**rec.fields, **images}
        self._tar.write({"__key__": rec.key, **fields})
        self.count += 1

    def write_parquet(self, batch, recs: list[Record], images: list[bytes | None], keep: list[bool]) -> None:
        import pyarrow as pa

        col = recs[0].image_field if recs else None
        if col is not None and any(keep):
            idx = [i for i, k in enumerate(keep) if k]
            table = pa.Table.from_batches([batch]).take(pa.array(idx, type=pa.int64()))
            ci = table.schema.get_field_index(col)
            old = table.column(ci)
            is_struct = pa.types.is_struct(old.type)
            new_vals = [images[i] if images[i] is not None else recs[i].image_bytes for i in idx]
            if is_struct:
                rows = old.to_pylist()
                new = pa.array([{**(r or {}), "bytes": b} for r, b in zip(rows, new_vals)], type=old.type)
            else:
                new = pa.array(new_vals, type=old.type)
            self._buffer.append(table.set_column(ci, table.schema.field(ci), new).cast(self._schema))
            self._buffered += len(idx)
            self.count += len(idx)
            if self._buffered >= self.ROW_GROUP:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._pq is None:
            self._pq = pq.ParquetWriter(self._file, self._schema)
        if self._buffer:
            self._pq.write_table(pa.concat_tables(self._buffer))
        self._buffer, self._buffered = [], 0

    def open_parquet(self, schema) -> None:
        self._schema = schema
        self._buffer = []
        self._buffered = 0

    def commit(self) -> None:
        if self.job.format == "webdataset":
            self._tar.close()  # both leave self._file open
        else:
            self._flush()  # also when no record survived: an empty file with the input's schema
            self._pq.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.job.dst)

    def abort(self) -> None:
        try:
            if self.job.format != "webdataset" and self._pq is not None:
                self._pq.close()
            self._file.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


def _batched(it: Iterator[Record], n: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for r in it:
        batch.append(r)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def shard_of(label: str, shards: Container[str]) -> str | None:
    """The shard of a record's label ("SHARD:key", `run_shard_job`) when it is one of `shards`, else None: the text
    before each colon looked up in turn (a shard's path or a key may hold colons), so a row costs a lookup per colon of
    its label, not a comparison per shard (a resume's stats CSV of a million rows over thousands of shards)."""
    i = label.find(":")
    while i != -1:
        if label[:i] in shards:
            return label[:i]
        i = label.find(":", i + 1)
    return None


def run_shard_job(
    jobs: Sequence[ShardJob],
    process: Callable[[list[LoadedImage]], list[Outcome]],
    *,
    batch_size: int = 16,
    resume: bool = True,
    image_field: str | None = None,
    desc: str = "processing",
    verb: str = "written",
    stats_csv: Path | None = None,
    quality: int = 95,
    io_workers: int = 2,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ShardReport:
    """Stream every record of every shard in `jobs` through `process` and write same-format shards.

    Args:
        jobs: from `plan_shards`.
        process: the folder jobs' batch function (decoded images -> one `Outcome` each).
        image_field: the WebDataset field extension (e.g. "jpg"; several separated by commas) or Parquet column of
            the image (default: every image field of a WebDataset record, `image_fields_of`; the Parquet column
            found by name, `PARQUET_IMAGE_NAMES`).
        resume: skip a shard whose output exists (outputs are renamed into place when complete).
    Records keep their key, order and every other field; a record whose image (any of its images) cannot be
    decoded or processed is listed in `failed` and left out; "copy" and "skip" outcomes keep the original image
    or leave the record out. Counts are of images (a record of several images counts each; one left out with its
    record because another failed or was skipped is listed as skipped). Returns a `ShardReport` (exit_code 1
    when a record failed).
    """
    from tqdm import tqdm

    max_pixels()  # a bad $PUFACE_MAX_PIXELS: one error, not one failure per record
    report = ShardReport(shards=len(jobs))
    t0 = time.perf_counter()
    stats = _StatsCSV(stats_csv)
    todo, report.shards_resumed = split_done(jobs, resume)
    _remove_stale_temporaries(j.dst for j in todo)
    redo = {str(j.src) for j in todo}  # rows of shards written before and redone now (an interrupted one)
    stats.drop("file", lambda label: shard_of(label, redo) is not None)
    bar = tqdm(desc=desc, unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr)

    def say(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            bar.write(msg, file=sys.stderr)

    def handle(
        job: ShardJob, recs: list[Record], pool: ThreadPoolExecutor
    ) -> tuple[list[dict[str, bytes]], list[bool]]:
        """Decode, process and encode every image of a batch of records; returns each record's new image bytes (by
        field) and which records to keep (those whose every image was written or copied)."""
        units: list[tuple[int, str | None]] = [(i, f) for i, r in enumerate(recs)
                                                for f in (list[str | None](r.images) or [None])]

        def label(u: int) -> str:
            i, f = units[u]
            return f"{job.src}:{recs[i].key}" + (f".{f}" if len(recs[i].images) > 1 else "")

        decoded = list(pool.map(lambda u: _decode(Path(label(u)), recs[units[u][0]], units[u][1]), range(len(units))))
        items, where = [], []
        results: list[tuple[str, str]] = [("fail", "")] * len(units)  # (status, reason) per image
        images: list[dict[str, bytes]] = [{} for _ in recs]
        for u, d in enumerate(decoded):
            if isinstance(d, Exception):
                results[u] = ("fail", d.reason)
            else:
                items.append(d)
                where.append(u)
        outcomes = call_process(process, items) if items else []
        rows = []
        for u, item, out in zip(where, items, outcomes):
            i, f = units[u]
            results[u] = (out.status, out.reason)
            if out.status == "ok":
                assert out.image is not None and f is not None
                try:
                    images[i][f] = encode_image(out.image, _pil_format(item, f, job.format), quality=quality,
                                                **item.encoding())
                except Exception as e:
                    results[u] = ("fail", f"cannot encode ({e})")
            if out.stats:
                rows.append({"file": label(u), "status": out.status, **out.stats})
        stats.add(rows)
        keep = [False] * len(recs)
        for i in range(len(recs)):
            mine = [u for u, (j, _) in enumerate(units) if j == i]
            cause = next((u for u in mine if results[u][0] == "fail"), None)
            if cause is None:
                cause = next((u for u in mine if results[u][0] not in ("ok", "copy")), None)
            keep[i] = cause is None
            for u in mine:
                status, why = results[u]
                if status == "fail":
                    report.failed.append((Path(label(u)), why))
                    say(f"error: {label(u)}: {why}")
                elif status not in ("ok", "copy"):
                    report.skipped.append((Path(label(u)), why))
                elif cause is not None:  # processed, but its record is left out: never dropped without a word
                    gone = "failed" if results[cause][0] == "fail" else "was skipped"
                    report.skipped.append((Path(label(u)), f"left out with its record ({label(cause)} {gone})"))
                elif status == "ok":
                    report.written += 1
                else:
                    report.copied.append((Path(label(u)), why))
        report.total += len(units)
        bar.update(len(units))
        return images, keep

    with ThreadPoolExecutor(max_workers=max(1, io_workers), thread_name_prefix="puface-io") as pool:
        for job in todo:
            writer = _ShardWriter(job)
            several: set[str] = set()  # the image fields of records holding several images
            n_several = 0
            mark = (report.total, report.written, len(report.copied), len(report.skipped), len(report.failed))
            try:
                if job.format == "webdataset":
                    _need("webdataset")
                    for recs in _batched(_read_wds(job.src, image_field), batch_size):
                        images, keep = handle(job, recs, pool)
                        for rec, img, k in zip(recs, images, keep):
                            if k:
                                writer.write_wds(rec, img)
                                if len(rec.images) > 1:
                                    several.update(rec.images)
                                    n_several += 1
                else:
                    _need("pyarrow")
                    import pyarrow.parquet as pq

                    writer.open_parquet(pq.ParquetFile(job.src).schema_arrow)
                    for batch, recs in _iter_parquet_batches(job.src, image_field, batch_size):
                        images, keep = handle(job, recs, pool)
                        writer.write_parquet(batch, recs, [im.get(r.image_field) for im, r in zip(images, recs)], keep)
                writer.commit()
            except BaseException as e:
                writer.abort()
                if isinstance(e, (PufaceError, KeyboardInterrupt)) or not isinstance(e, Exception):
                    raise
                # the shard is left out whole: its records, written or not, are not counted
                report.total, report.written = mark[0], mark[1]
                del report.copied[mark[2]:], report.skipped[mark[3]:], report.failed[mark[4]:]
                report.shards_failed.append((job.src, f"cannot read or write the shard ({type(e).__name__}: {e})"))
                say(f"error: {job.src}: cannot read or write the shard ({type(e).__name__}: {e})")
                continue
            report.shards_written += 1
            many = (f" ({n_several} of several images, each image {verb}: {', '.join(sorted(several))})"
                    if n_several else "")
            say(f"{job.dst}: {writer.count} records{many}")
    bar.close()
    report.seconds = time.perf_counter() - t0
    return report

