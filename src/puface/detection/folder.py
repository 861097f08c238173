"""Folder jobs with the detector: `detect_folder` (a scores CSV per image, a summary per identity) and
`purify_folder_detected` (`puface purify --skip-cloaked / --report`: purify what is judged natural, leave
out or list what is judged cloaked). Both stream through `io.jobs.run_folder_job` (decoding ahead in
threads, batches, resume, broken files reported and skipped).

Scores CSV columns: path (relative to the input), score, cloaked (1/0 at the row's threshold), psnr,
shift_<embedder>, net (when the detector has one), faces (with `align`), storage, note. storage: how the file
stores a chip scored at its own size ("jpeg:quality=75,subsampling=4:2:0", "palette"; `io.images.storage_of`),
empty for lossless files, photos (`align`) and other sizes; a row's threshold is the detector's for that storage
(`CloakDetector.threshold(storage=)`, `detection.storage`: higher than the default for storages that make natural
photos score high), the default one when it is empty or with `one_threshold`. A photo's score, with
`align`, is the highest of its faces' (a photo with one cloaked face is called cloaked); a photo without
a usable face gets an empty score and a note; without `align`, an image that is not a chip of the detector's size is
scored resized to one and its note says so (`RESIZED_NOTE`; the report counts them: `DetectReport.resized`); a
palette or black-and-white chip gets a note on what its decision is worth (`PALETTE_NOTE`, `TWO_LEVEL_NOTE`).
Identity summary (<scores>-identities.csv): per first-level folder (an identity folder): images scored, flagged,
share flagged, mean and highest score.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from array import array
from typing import Any, Callable, Iterable, Iterator, SupportsFloat

import numpy as np
import torch

from ..io.images import atomic_write_bytes
from ..io.files import Listing, check_output_file
from ..io.jobs import (CSV_TEXT, Claim, DryRun, FileJob, JobReport, LoadedImage, Outcome, claim_file, group_by_size,
                       iter_image_inputs, keep_input_mode, locked_csv, plan_mirror, read_locked, resume_split,
                       run_folder_job, share)
from ..utils.errors import PufaceError, shown_path
from ..purifier.model import extrapolate
from ..utils.images import tensor_to_image
from .detector import CloakDetector, detector_path, load_detector
from .storage import describe

__all__ = [
    "detect_folder",
    "detect_batch_process",
    "purify_folder_detected",
    "calibrate_on_folder",
    "DetectReport",
    "identity_of",
    "summarise_identities",
    "Thresholds",
    "chip_storage",
]


def feature_columns(det: CloakDetector) -> list[str]:
    cols = ["psnr"] + [f"shift_{e}" for e in det.config.embedders]
    return cols + (["net"] if det.net is not None else [])


def _fmt(v: SupportsFloat, digits: int = 6) -> float | str:
    v = float(v)
    return "" if math.isnan(v) else round(v, digits)


def _score_text(v: float) -> float | str:
    """A score as the CSV keeps it: 9 significant digits, so that the float32 score reads back exactly and a
    decision made from the file (`decide`) is the detector's own (`CloakDetector.is_cloaked`)."""
    v = float(v)
    return "" if math.isnan(v) else float(f"{v:.9g}")


def decide(score: float, threshold: float) -> int:
    """1 when `score` is above `threshold`, compared in float32 as `CloakDetector.is_cloaked` compares them."""
    return int(np.float32(score) > np.float32(threshold))


def identity_of(rel: str | Path, root_name: str) -> str:
    """The identity a file belongs to: its first-level folder under the input (the input's own name for
    files directly inside it)."""
    parts = rel.split("/") if isinstance(rel, str) else Path(rel).parts  # a row's path is POSIX (`as_posix`)
    return parts[0] if len(parts) > 1 else root_name


def summarise_identities(rows: Iterable[dict], root_name: str) -> list[dict]:
    """Per identity: images scored, flagged as cloaked, share flagged, mean and highest score."""
    tally = IdentityTally(root_name)
    for r in rows:
        tally.add(r)
    return tally.summary()


class IdentityTally:
    """`summarise_identities` a row at a time: per identity the flagged count and the scores (8 bytes each, not the
    rows), so that a summary of a million rows is made while they stream past."""

    def __init__(self, root_name: str):
        self.root_name = root_name
        self.scores: dict[str, array] = {}
        self.flagged: dict[str, int] = {}

    def add(self, row: dict) -> None:
        """Count a scores row (one without a score is left out)."""
        if row.get("score", "") == "":
            return
        ident = identity_of(row["path"], self.root_name)
        if ident not in self.scores:
            self.scores[ident], self.flagged[ident] = array("d"), 0
        self.scores[ident].append(float(row["score"]))
        self.flagged[ident] += int(row["cloaked"])

    def summary(self) -> list[dict]:
        out = []
        for ident in sorted(self.scores):
            scores = np.frombuffer(self.scores[ident], dtype=np.float64)
            flagged = self.flagged[ident]
            out.append(
                {
                    "identity": ident,
                    "images": len(scores),
                    "flagged": flagged,
                    "share_flagged": round(flagged / len(scores), 4),
                    "mean_score": round(float(np.mean(scores)), 4),
                    "max_score": round(float(np.max(scores)), 4),
                }
            )
        return out


def _write_csv(path: Path, rows: Iterable[dict], fields: list[str]) -> None:
    """Write `rows` to the CSV `path` atomically, streamed (`rows` may be a generator over another file's rows)."""

    def chunks() -> Iterator[bytes]:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for i, r in enumerate(rows, 1):
            w.writerow(r)
            if i % 256 == 0:
                yield buf.getvalue().encode(**CSV_TEXT)
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue().encode(**CSV_TEXT)

    atomic_write_bytes(path, chunks())


#: What `puface detect` tells a user whose scores CSV it cannot resume (`_check_columns`).
DETECT_AGAIN = "pass --restart to score again, or choose another --out"
#: The same for `puface purify --report/--skip-cloaked` (no --restart there: --no-resume redoes every photo).
PURIFY_AGAIN = "pass --no-resume to purify and score every photo again, or choose another OUT"


def _check_columns(path: Path, header: list[str] | None, fields: list[str], again: str = DETECT_AGAIN) -> None:
    """Refuse to resume the scores CSV `path` whose `header` (None: an empty file, fine) is not `fields`: one line
    naming the file, why, and `again` (what the user's command takes to start it afresh)."""
    if header is None or header == fields:
        return
    for column, why in (("storage", ": its decisions did not know how each file is stored"), ("turned", "")):
        if column in fields and header == [f for f in fields if f != column]:
            raise PufaceError(f"{path}: written by an earlier puface (no '{column}' column{why}); {again}")
    raise PufaceError(f"{path}: written by another detector or with other options (columns {header}, expected "
                      f"{fields}); {again}")


def _header(path: Path) -> list[str] | None:
    """The header row of the CSV `path` (None: no file, empty or unreadable: the job's own read says so)."""
    try:
        with open(path, newline="", **CSV_TEXT) as f:
            return next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _records(path: Path, fields: list[str], fd: int | None = None) -> Iterator[dict | None]:
    """Each record of an earlier run's CSV after its header: the row, or None for one cut by an interruption (or
    blank, or with a score that is no number); a CSV with other columns is an error (another detector or other options
    wrote it). fd: the file, locked (`io.jobs.locked_csv`), read through that descriptor."""
    if fd is None and (not path.is_file() or path.stat().st_size == 0):
        return
    with (read_locked(fd) if fd is not None else open(path, newline="", **CSV_TEXT)) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        _check_columns(path, header, fields)
        for rec in reader:
            if len(rec) != len(fields):
                yield None  # cut short (or blank)
                continue
            r = dict(zip(fields, rec))
            if r.get("score", "") != "":
                try:
                    float(r["score"])
                except ValueError:
                    yield None
                    continue
            elif not (r.get("note") or r.get("status")):
                yield None
                continue
            yield r


def _last_rows(path: Path, fields: list[str], fd: int | None = None) -> tuple[dict[str, int], int]:
    """A first pass over an earlier run's CSV (`_records`): {path: the number of its last complete row among the
    complete rows} and how many records the file holds. `_rows` then reads the rows themselves."""
    last: dict[str, int] = {}
    stored = i = 0
    for r in _records(path, fields, fd):
        stored += 1
        if r is not None:
            last[r["path"]] = i
            i += 1
    return last, stored


def _rows(path: Path, fields: list[str], last: dict[str, int], fd: int | None = None) -> Iterator[dict]:
    """The complete rows of an earlier run's CSV, one at a time; of several rows of one path the last, in its place
    (`last` from `_last_rows` over the same file)."""
    i = 0
    for r in _records(path, fields, fd):
        if r is not None:
            if last.get(r["path"]) == i:
                yield r
            i += 1


def _earlier_rows(path: Path, fields: list[str], fd: int | None = None) -> tuple[dict[str, str], int]:
    """{path: status ("" without a status column)} of the complete rows of an earlier run's CSV (`_rows`: of several
    rows of one path the last), and how many records the file holds (it needs rewriting when they differ). Reads
    only; fd: the file, locked (`io.jobs.locked_csv`)."""
    last, stored = _last_rows(path, fields, fd)
    return {r["path"]: r.get("status", "") for r in _rows(path, fields, last, fd)}, stored


def _load_rows(path: Path, fields: list[str], fd: int | None = None) -> tuple[list[dict], int]:
    """Complete rows of an earlier run's CSV (`_rows`), all at once, and how many records the file holds (it needs
    rewriting when they differ)."""
    last, stored = _last_rows(path, fields, fd)
    return list(_rows(path, fields, last, fd)), stored


def _start_rows(path: Path, fields: list[str], resume: bool, mine: set[str] | None = None) -> dict[str, str]:
    """{path: status ("" without a status column)} of the rows an earlier run left in the scores CSV `path` that this
    run keeps (with `resume`), the file rewritten under its lock (`io.jobs.locked_csv`) to hold just them when it holds
    others (a row cut by an interruption, one repeated) or, without `resume`, any row. mine: this process's files when
    processes (--rank) share the file: a run without `resume` then drops only their rows (the others' rows, maybe just
    added, stay). The rows stream through: a file of a million rows is never held."""
    with locked_csv(path, create=False) as fd:
        if fd is None:
            return {}
        if resume:
            kept, stored = _earlier_rows(path, fields, fd)
            if len(kept) != stored:  # drop a row cut by an interruption (or repeated) before appending
                _write_csv(path, _rows(path, fields, _last_rows(path, fields, fd)[0], fd), fields)
            return kept
        try:
            last = _last_rows(path, fields, fd)[0] if mine is not None else {}
        except PufaceError:  # other columns: the file starts again
            last = {}
        others = (r for r in _rows(path, fields, last, fd) if r["path"] not in (mine or ())) if last else iter(())
        _write_csv(path, others, fields)
        return {}


class Thresholds:
    """A detector's threshold per storage (`CloakDetector.threshold(fpr, storage=)`), computed once each; with
    `one` every storage gets the default threshold."""

    def __init__(self, det: CloakDetector, fpr: float | None, one: bool = False):
        self.det, self.fpr, self.one = det, fpr, one
        self.default = det.threshold(fpr)
        self._by: dict[str, float] = {"": self.default}

    def __call__(self, storage: str = "") -> float:
        storage = "" if self.one else (storage or "")
        if storage not in self._by:
            self._by[storage] = self.det.threshold(self.fpr, storage=storage)
        return self._by[storage]

    def used_by(self, storages: Iterable[str]) -> dict[str, float]:
        """{storage: threshold} over these storages (of the scored rows) whose threshold is not the default one."""
        out = {}
        for st in storages:
            st = "" if self.one else (st or "")
            if st and self(st) != self.default:
                out[st] = self(st)
        return dict(sorted(out.items()))


def _is_chip(det: CloakDetector, item: LoadedImage) -> bool:
    """Whether the image is a chip of the detector's size (scored at its own pixels, not resampled)."""
    s = det.config.chip_size
    return item.image.shape[:2] == (s, s)


def chip_storage(det: CloakDetector, item: LoadedImage) -> str:
    """The storage a decision may use: the file's (`LoadedImage.storage`) when the image is a chip of the detector's
    size (`_is_chip`), else "" (the storage column says so too)."""
    return item.storage if _is_chip(det, item) else ""


@dataclass
class DetectReport:
    """A finished (or interrupted) detection job: the job's counts, the thresholds, and where things went."""

    job: JobReport
    threshold: float
    fpr: float
    identities: list[dict] = field(default_factory=list)
    scores_csv: Path | None = None
    identities_csv: Path | None = None
    gone: int = 0  # rows of an earlier run for files no longer in the input, dropped
    thresholds: dict[str, float] = field(default_factory=dict)  # {storage: threshold} used besides the default
    scored: int = 0  # rows with a score
    flagged: int = 0  # rows judged cloaked
    no_face: int = 0  # rows without a score (no usable face)
    by_storage: dict[str, int] = field(default_factory=dict)  # scored rows judged by each of `thresholds`
    fields: list[str] = field(default_factory=list)  # the scores CSV's columns
    others_running: int = 0  # processes sharing the scores CSV (--rank) still scoring when this one ended
    cloaked_csv: Path | None = None  # `purify --skip-cloaked`: the list of the photos judged cloaked (and left out)
    mixed: dict[str, str] = field(default_factory=dict)  # {rank: detector fingerprint} of ranks scored by another one
    resized: int = 0  # scored rows of images that are not chips of the detector's size (`RESIZED_NOTE`)
    chip_size: int = 150  # the detector's chip size (px), as those rows' notes say

    @property
    def exit_code(self) -> int:
        return self.job.exit_code

    @property
    def rows(self) -> list[dict]:
        """The rows of the scores CSV (values as the file holds them), read from `scores_csv` when asked: the job
        counts them as they stream past and holds none (a million rows took ~1.4 GB)."""
        if self.scores_csv is None:
            return []
        return _load_rows(self.scores_csv, self.fields)[0]

    def summary(self, verb: str = "scored") -> str:
        n, k = self.scored, self.flagged
        lines = [
            self.job.summary(verb, {"skipped": self.cloaked_csv} if self.cloaked_csv else None),
            f"cloak detection: {k} of {n} images judged cloaked ({k / max(n, 1):.1%}) "
            f"at threshold {self.threshold:.4f} "
            f"(false-positive rate {self.fpr:.1%} on natural calibration photos)",
        ]
        if self.thresholds:
            lines.append(
                "chips judged against natural photos stored the same way (a higher threshold): "
                + "; ".join(f"{describe(st)} {t:.4f} ({self.by_storage.get(st, 0)})"
                            for st, t in self.thresholds.items())
            )
        if n >= 5 and k / n > max(0.05, 10 * self.fpr):
            lines.append(
                f"that is far above the {self.fpr:.1%} expected of natural photos: many photos are cloaked, or they "
                "come from a source unlike the calibration photos (edited: sharpened, more contrast, other gamma; "
                "other cameras). Compare with `--detector edits`, or calibrate on natural photos of this source "
                "(`puface calibrate-detector`)."
            )
        if self.resized:
            c = self.chip_size
            lines.append(
                f"warning: {self.resized} of {n} images are not {c}x{c} face chips (see their note): each was scored "
                f"resized to {c}x{c}, and the threshold holds only for aligned face chips (resized ones included), not "
                "for whole photos or other face crops (112x112 ArcFace); pass --align if they are photos"
            )
        if self.gone:
            lines.append(f"{self.gone} row(s) of an earlier run for files no longer in the input dropped")
        if self.no_face:
            lines.append(f"{self.no_face} image(s) without a usable face (empty score)")
        top = sorted((i for i in self.identities if i["flagged"]), key=lambda i: (-i["share_flagged"], i["identity"]))
        if top:
            lines.append(f"identities with flagged images ({len(top)} of {len(self.identities)}):")
            lines += [f"  {shown_path(i['identity'])}: {i['flagged']}/{i['images']} ({i['share_flagged']:.0%})"
                      for i in top[:20]]
            if len(top) > 20:
                lines.append(f"  ... {len(top) - 20} more in {self.identities_csv}")
        if self.scores_csv:
            lines.append(
                f"scores: {self.scores_csv}" + (f"; per identity: {self.identities_csv}" if self.identities_csv else "")
            )
        if self.mixed:
            lines.append(f"warning: {self.scores_csv} holds rows of rank(s) {', '.join(self.mixed)} scored by another "
                         f"detector ({', '.join(sorted(set(self.mixed.values())))}), judged here at this detector's "
                         "thresholds: run those ranks with this detector and --restart too")
        if self.others_running:
            lines.append(f"{self.others_running} other process(es) sharing {self.scores_csv} (--rank) still running: "
                         "these counts are of the rows written so far; the last process to end writes the summaries "
                         "of the whole input")
        return "\n".join(lines)


def _chip_features(det: CloakDetector, arrays: list[np.ndarray], batch_size: int,
                   step: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Features of uint8 (H, W, 3) images (any sizes; each resized to the chip size) and their purified chips,
    x + step (P(x) - x) when step is not 1 (`purifier.model.extrapolate`; the features are those of P(x))."""
    n = len(arrays)
    feats: dict[str, list] = {}
    purified: list[torch.Tensor] = []  # per size group, in `order`
    items = [LoadedImage(FileJob(Path(), Path(), Path()), a) for a in arrays]
    order = []
    for _, idx in group_by_size(items).items():
        x = det.to_chips(torch.from_numpy(np.stack([arrays[i] for i in idx])).permute(0, 3, 1, 2))
        px = det.purify_chips(x, batch_size)
        f = det.features(x, purified=px, batch_size=batch_size)
        for k, v in f.items():
            feats.setdefault(k, []).append(v)
        if step != 1.0:
            px = extrapolate(x, px.to(x.device), step)
        purified.append(px)
        order += idx
    inv = torch.empty(n, dtype=torch.long)
    inv[torch.as_tensor(order)] = torch.arange(n)
    return {k: torch.cat(v)[inv] for k, v in feats.items()}, torch.cat(purified)[inv]


def _row(
    det: CloakDetector, feats: dict[str, torch.Tensor], i: int, threshold: Thresholds, storage: str = ""
) -> dict[str, Any]:
    s = float(feats["score"][i])
    row: dict[str, Any] = {
        "score": _score_text(s),
        "cloaked": decide(s, threshold(storage)),
        "psnr": _fmt(feats["psnr"][i], 3),
    }
    for e in det.config.embedders:
        row[f"shift_{e}"] = _fmt(feats[f"shift:{e}"][i])
    if det.net is not None:
        row["net"] = _fmt(feats["net"][i], 4)
    row["storage"] = storage
    return row


def _photo_row(chip_rows: list[dict]) -> dict:
    """A photo's row from its faces' rows: the highest-scoring face's features."""
    best = max(chip_rows, key=lambda r: float(r["score"]))
    return {**best, "cloaked": int(any(int(r["cloaked"]) for r in chip_rows))}


def _align_columns(align: bool, rotations: str) -> list[str]:
    """The scores CSV's columns of an --align run: faces, and with rotations on `turned` as `purify --align --stats`
    and align.csv have it (`align_adapter`: degrees clockwise the photo was turned to find its faces, 0 upright)."""
    if not align:
        return []
    from ..align.detect import rotations_entry  # here: the align package loads with --align only

    return ["faces", *rotations_entry(rotations, turned=0)]


def _make_aligner(align: bool, largest_face: bool, rotations: str = "auto"):
    if not align:
        return None
    from ..align import FaceAligner, FaceDetector

    return FaceAligner(150, FaceDetector("hog+cnn", rotations=rotations), pick="largest" if largest_face else "all")


def _prepare_detector(detector: CloakDetector | None, weights: str | Path | None, device: str | None,
                      purifier: str | Path | None = None) -> CloakDetector:
    from ..utils.device import resolve_device

    det = detector if detector is not None else load_detector(weights, device=None, purifier=purifier)
    return det.to(resolve_device(device)).eval()


def _jobs(in_path: Path, rank: int = 0, world_size: int = 1, names: set[str] | None = None,
          listing: Listing | None = None) -> list[FileJob]:
    """`detect`'s jobs (the output is the input itself: the row is the result): process `rank` of `world_size`'s share
    (`io.jobs.plan_mirror`'s), every listed file's relative POSIX path added to `names`, what the walk met counted in
    `listing`."""
    base = in_path.parent if in_path.is_file() else in_path
    return [FileJob(f, f, f.relative_to(base))
            for f in share(iter_image_inputs(in_path, names, listing), rank, world_size)]


def run_file_of(out_csv: Path) -> Path:
    """The run file beside a scores CSV (`NAME-run.json`): which detector, input and face options wrote it."""
    return out_csv.with_name(out_csv.stem + "-run.json")


def _check_same_run(out_csv: Path, old: dict, det_id: str, run: dict) -> None:
    """Refuse to resume `out_csv` when its run file says another detector, input or face option wrote it."""
    how = "choose another --out or pass --restart"
    if old.get("detector") and old["detector"] != det_id:
        raise PufaceError(f"{out_csv}: scored by another detector ({old['detector']}, this one {det_id}); {how}")
    was = old.get("input")
    if was and Path(was).is_absolute() and was != run["input"]:  # earlier files kept the path as typed: not comparable
        raise PufaceError(f"{out_csv}: scores of another input ({was}, this run {run['input']}); {how}")
    for key, flag in (("align", "--align"), ("largest_face", "--largest-face")):
        if key in old and bool(old[key]) != run[key]:
            raise PufaceError(f"{out_csv}: scored {'with' if old[key] else 'without'} {flag}, this run "
                              f"{'with' if run[key] else 'without'}; {how}")
    if run["align"] and old.get("align"):
        from ..align.detect import recorded_rotations  # here: the align package loads with --align only

        if recorded_rotations(old) != recorded_rotations(run):
            raise PufaceError(f"{out_csv}: scored with --rotations {recorded_rotations(old)}, this run --rotations "
                              f"{recorded_rotations(run)}; {how}")


def _load_run(state: Path) -> dict:
    """An earlier run's run file: {} when empty (made by its lock, `_write_run`, and never written: a kill at that
    instant); a `PufaceError` naming it when it holds no run record."""
    try:
        text = state.read_text(encoding="utf-8")
        old = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict):
        raise PufaceError(f"{state}: unreadable run file of {state.name.removesuffix('-run.json')}.csv; pass --restart "
                          "to score again, or delete it to keep the rows")
    return old


def _rank_detectors(old: dict, world_size: int) -> dict[str, str]:
    """{rank: the fingerprint of the detector that scored that rank's files} of a scores CSV that processes (--rank)
    share, from its run file `old`: its record per rank when written with this world size; when written with another
    (or read for one process: `world_size` 1), each rank's files may hold rows of any rank of that run, so every rank
    gets all its detectors ("A+B" where they differ: no detector's own); else (a run of one process, or an earlier
    puface) every rank's rows by its one detector; {} without one."""
    ranks = old.get("ranks")
    if isinstance(ranks, dict):
        if old.get("world_size") == world_size:
            return {str(r): str(d) for r, d in ranks.items()}
        # another split of the files: a rank's files may hold rows of any rank of that run, so of all its detectors
        return {str(r): "+".join(sorted({str(d) for d in ranks.values()})) for r in range(world_size)} if ranks else {}
    return {str(r): str(old["detector"]) for r in range(world_size)} if old.get("detector") else {}


def _read_run(fd: int) -> dict:
    """The run file open as `fd` (`io.jobs.locked_csv`), {} when empty or unreadable."""
    try:
        with read_locked(fd) as f:
            old = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return old if isinstance(old, dict) else {}


def _write_run(state: Path, info: dict, det_id: str, rank: tuple[int, int] | None = None) -> dict[str, str]:
    """Write the run file `state` of a scores CSV as `info`; for a process sharing the CSV (rank: (rank, world size)),
    plus which detector scored each rank's files, this rank's now `det_id`, the others' as the file said (under the
    run file's lock: the ranks write it one at a time, none losing another's record). Returns {rank: fingerprint} of
    the ranks scored by another detector ({} for one process)."""
    if rank is None:
        atomic_write_bytes(state, json.dumps(info, indent=2).encode())
        return {}
    r, world_size = rank
    with locked_csv(state) as fd:
        ranks = _rank_detectors(_read_run(fd), world_size)
        ranks[str(r)] = det_id
        atomic_write_bytes(state, json.dumps({**info, "world_size": world_size, "ranks": ranks}, indent=2).encode())
    return {k: d for k, d in sorted(ranks.items(), key=lambda kv: int(kv[0])) if d != det_id}


def detect_folder(in_path: str | Path, out_csv: str | Path, *, detector: CloakDetector | None = None,
                  weights: str | Path | None = None, device: str | None = None, fpr: float | None = None,
                  batch_size: int = 32, resume: bool = True, restart: bool = False, io_workers: int = 2,
                  progress: bool = True, align: bool = False, largest_face: bool = False,
                  identities_csv: str | Path | None = None, rank: int = 0, world_size: int = 1,
                  engine: str = "local", address: str | None = None, workers: int | None = None,
                  cpus_per_worker: float = 1.0, purifier: str | Path | None = None,
                  one_threshold: bool = False, shared: bool = True, rotations: str = "auto",
                  dry_run: bool = False) -> DetectReport | DryRun:
    """Score every image under `in_path` (a folder tree or one file) into `out_csv`.

    detector: a ready `CloakDetector` (else `weights`: a detector file, None = the shipped one, with `purifier`:
    the purifier file it was calibrated with, None = the shipped one).
    fpr: false-positive rate of the decision (None: the detector's default, 1%); a chip whose file is stored in a way
    that makes natural photos score high (4:4:4 JPEG below quality 90, a palette) gets the higher threshold of its
    storage's calibration kinds (`CloakDetector.threshold(storage=)`; never lower than the default), every image the
    default threshold with `one_threshold`. resume: keep the rows an
    earlier run wrote to `out_csv` and score only the rest; restart: start the CSV afresh. align: photos,
    not chips: detect and align each face first (needs the `align` extra); rotations ("auto" or "off"): also look for
    the faces of a photo without an upright one in the photo turned (`align.FaceDetector`). identities_csv: the
    per-identity summary (default: <out_csv stem>-identities.csv). engine: "local" (threads in this process)
    or "ray" (a Ray Data pipeline on the cluster at `address`, a new local one when None, with `workers`
    detector actors of `cpus_per_worker` CPUs, or one GPU each on CUDA; same CSV rows). shared: with `world_size`
    above 1, whether the other ranks write into `out_csv` too (one --out given to every rank): a restart or a run
    without resume then drops only this rank's files' rows; False: the file is this rank's alone (the CLI's
    scores.rank<r>.csv) and starts afresh, rows of files another rank now takes included. dry_run: list IN, load the
    detector and check `out_csv` and its run file as the job would, writing nothing (no CSV, run file or lock), and
    return what it would do (`io.jobs.DryRun`: the images whose rows a resume keeps are done). Returns a
    `DetectReport` (exit code 1 when some file could not be read).
    """
    if engine not in ("local", "ray"):
        raise PufaceError(f"unknown engine {engine!r}; choose local or ray")
    in_path, out_csv = Path(in_path), Path(out_csv)
    if out_csv.suffix.lower() != ".csv":
        raise PufaceError(f"{out_csv}: the scores file must end in .csv")
    if out_csv.is_dir():
        raise PufaceError(f"{out_csv} is a folder; give a .csv file name")
    check_output_file(out_csv, "scores file")  # below a file: one line, not the lock's NotADirectoryError
    if align:  # no dlib: an error before the run file and the CSV are written
        from ..align import require_alignment

        require_alignment()
    current: set[str] = set()  # every shard's: processes may share one CSV
    listing = Listing() if dry_run else None
    jobs = _jobs(in_path, rank, world_size, current, listing)  # this process's share
    # one process per scores file (or per rank of the processes sharing it): two runs on one --out by mistake are
    # refused before either scores anything, as for an output folder
    claim = None if dry_run else claim_file(out_csv, rank, world_size)
    try:
        det = _prepare_detector(detector, weights, device, purifier)
        thresholds = Thresholds(det, fpr, one_threshold)
        fpr_v = det.default_fpr if fpr is None else float(fpr)
        fields = ["path", "score", "cloaked", *feature_columns(det), *_align_columns(align, rotations), "storage",
                  "note"]
        state = run_file_of(out_csv)
        det_id = det.fingerprint()
        run = {"input": str(in_path.resolve()), "align": align, "largest_face": largest_face,
               **({"rotations": rotations} if align else {})}  # "off" too; a file from before them has none
        shared = shared and world_size > 1
        if restart and not shared:
            if not dry_run:
                out_csv.unlink(missing_ok=True)
        elif resume and not restart and out_csv.exists() and state.is_file():
            old = _load_run(state)
            _check_same_run(out_csv, old, det_id, run)
            mine = _rank_detectors(old, world_size if shared else 1).get(str(rank) if shared else "0", det_id)
            if mine != det_id:  # the file's last run used this detector, another rank's restart: these rows are older
                if shared and old.get("world_size") == world_size:
                    raise PufaceError(f"{out_csv}: the rows of rank {rank}'s files were scored by another detector "
                                      f"({mine}, this one {det_id}); pass --restart")
                raise PufaceError(f"{out_csv}: its rows were scored by {old.get('world_size')} ranks (--rank) with "
                                  f"more than one detector ({mine.replace('+', ', ')}; this one {det_id}), and this "
                                  f"run {'splits the files otherwise' if shared else 'is one process'}; pass --restart")
        if dry_run:
            kept = _earlier_rows(out_csv, fields)[0] if resume and not restart else {}
            todo, done_n = resume_split(jobs, resume, is_done=lambda j: j.rel.as_posix() in kept)
            how = ("new" if not out_csv.exists() else "restarted" if restart else "resumed" if resume
                   else "these rows redone")
            return DryRun("photos" if align else "images", len(jobs), done_n, {
                "detector": det_id, "purifier": det.fingerprints()["purifier"],
                "fpr": f"{fpr_v:g} (threshold {thresholds.default:.4f}"
                       f"{'' if one_threshold else '; higher for chips stored as 4:4:4 JPEG or with a palette'})",
                "align": DryRun.align_text(align, rotations, largest_face),
                "scores": f"{out_csv} ({how})",
                "device": str(det.device)}, listing, rank=rank, world_size=world_size, resume=resume and not restart)
        # the paths alone: the rows themselves are read again at the end (`_finish`), not held meanwhile. Processes
        # sharing the file (--rank) drop only their own files' rows without resume, --restart too (the whole file
        # deleted the rows the other ranks had just written); a rank's own file starts afresh
        done = set(_start_rows(out_csv, fields, resume and not restart,
                               {j.rel.as_posix() for j in jobs} if shared else None))
        _write_run(state, {"detector": det_id, **run}, det_id, (rank, world_size) if shared else None)
        common: dict[str, Any] = dict(
            batch_size=batch_size, resume=resume, desc="detecting", verb="scored", stats_csv=out_csv, progress=progress,
            is_done=lambda j: j.rel.as_posix() in done, stats_fields=fields, stats_key="path", stats_status=False)
        if engine == "ray":
            import copy
            from functools import partial

            from ..io.raydata import run_ray_job

            # each actor loads the detector file itself (None: the shipped one; a shipped name travels as its file),
            # so Ray can restart a lost actor from small arguments; a detector given as an object, or with its own
            # purifier, travels as a CPU copy
            what = (
                copy.deepcopy(det).cpu()
                if detector is not None or purifier is not None
                else (str(detector_path(weights).resolve()) if weights else None)
            )
            factory = partial(detect_batch_process, what, str(det.device), fpr, batch_size, align, largest_face, fields,
                              one_threshold, rotations=rotations)
            job = run_ray_job(jobs, factory, address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                              gpus_per_worker=1.0 if det.device.type == "cuda" else 0.0, **common)
        else:
            process = detect_batch_process(det, None, fpr, batch_size, align, largest_face, fields, one_threshold,
                                           rotations=rotations)
            job = run_folder_job(jobs, process, io_workers=io_workers, **common)
        return _finish(out_csv, fields, thresholds, fpr_v, job, in_path, identities_csv, det_id, state=run,
                       current=current, claim=claim, rank=(rank, world_size) if shared else None)
    finally:
        if claim is not None:
            claim()


#: The note of a photo whose colours come from a palette (8-bit PNG, BMP, TIFF with a colour table, as GIF encoders make
#: them) when no palette calibration kind judges it (a detector without one, a photo with `align`, a chip of another
#: size, `one_threshold`): the quantisation moves it under purification as a cloak does, so the detectors flag nearly
#: all such natural photos at their default threshold (bench/results/detect-palette.md).
PALETTE_NOTE = (
    "palette image (<= 256 colours): its colour quantisation scores like a cloak, so the decision says little"
)
#: ... and when the palette kinds judge it: natural palette photos pass, and so do most cloaks.
PALETTE_KIND_NOTE = (
    "palette image (<= 256 colours): judged against natural palette photos, which score like cloaks: "
    "few cloaks are caught"
)


#: The note of a chip scored at its own pixels whose pixels are all 0 or 255 (a 1-bit, black-and-white file): no
#: calibration kind holds such photos, and natural ones score far above the threshold (8 johns chips saved as 1-bit:
#: scores 26 to 34 against 1.83, every one flagged).
TWO_LEVEL_NOTE = (
    "black-and-white image (every pixel 0 or 255, as a 1-bit file holds them): its two levels score like a cloak, "
    "so the decision says little"
)


def _two_level(image: np.ndarray) -> bool:
    """True when every value of the image is 0 or 255."""
    return bool(np.all((image == 0) | (image == 255)))


def _palette_kind_judged(thresholds: Thresholds, storage: str) -> bool:
    return storage == "palette" and thresholds("palette") != thresholds.default


#: The note of an image that is not a chip of the detector's size, scored resized to one (`_size_note`)
RESIZED_NOTE = "{w}x{h}: not a {s}x{s} face chip, scored resized to one"
_RESIZED = re.compile(r"^\d+x\d+: not a (\d+)x\1 face chip, scored resized to one")


def _size_note(det: CloakDetector, item: LoadedImage) -> str:
    """`RESIZED_NOTE` for an image that is not a chip of `det`'s size (a photo not aligned, a 112 px crop), else ""."""
    if _is_chip(det, item):
        return ""
    h, w = item.image.shape[:2]
    return RESIZED_NOTE.format(w=w, h=h, s=det.config.chip_size)


def _note(item: LoadedImage, thresholds: Thresholds, aligned: bool = False) -> str:
    """A row's note on the file: an image not of the chip size scored resized (`_size_note`; not with `aligned`:
    its faces were cut as chips), that a chip of two levels cannot be judged (`TWO_LEVEL_NOTE`), and whether a palette
    image was judged by the palette kinds or not ("; " between)."""
    if aligned:
        return PALETTE_NOTE if item.palette else ""
    size = _size_note(thresholds.det, item)
    if not size and _two_level(item.image):  # a chip of the detector's size scored at its own pixels
        return TWO_LEVEL_NOTE
    if not item.palette:
        return size
    judged = _palette_kind_judged(thresholds, chip_storage(thresholds.det, item))
    palette = PALETTE_KIND_NOTE if judged else PALETTE_NOTE
    return f"{size}; {palette}" if size else palette


def detect_batch_process(det: CloakDetector | str | None, device: str | None, fpr: float | None, batch_size: int,
                         align: bool, largest_face: bool, fields: list[str],
                         one_threshold: bool = False,
                         rotations: str = "auto") -> Callable[[list[LoadedImage]], list[Outcome]]:
    """`detect_folder`'s batch function: decoded images -> one `Outcome.record` row each (score, decision at the
    threshold for `fpr` and the chip's storage (`Thresholds`), features; with `align` per photo over its faces). det:
    a detector, or its file (None: the shipped one). device: move the detector there first (None: where it is).
    rotations: with `align`, as `align.FaceDetector` (a face found in the photo turned says so in the note, and with
    rotations on in the column `turned`, as `purify --align --report` has it).
    Module level, so `functools.partial` of it is the Ray engine's picklable factory."""
    if not isinstance(det, CloakDetector):
        det = _prepare_detector(None, det, device)
    elif device is not None:
        det = _prepare_detector(det, None, device)
    aligner = _make_aligner(align, largest_face, rotations)
    threshold = Thresholds(det, fpr, one_threshold)

    def process(items: list[LoadedImage]) -> list[Outcome]:
        if aligner is None:
            feats, _ = _chip_features(det, [it.image for it in items], batch_size)
            return [Outcome.record(**_row(det, feats, i, threshold, chip_storage(det, it)), note=_note(it, threshold))
                    for i, it in enumerate(items)]
        from ..align import fill_off_photo
        from ..align.detect import rotations_entry

        chips, owner, found = [], [], []
        for i, it in enumerate(items):
            pf = aligner.align(it.image)
            found.append(pf)
            for af in pf.faces:
                # as `purify --align --report` scores it (`align_adapter`): a face cut by the edge, the edge continued
                chips.append(fill_off_photo(it.image, af.transform, af.chip))
                owner.append(i)
        per: list[list[dict]] = [[] for _ in items]
        if chips:
            feats, _ = _chip_features(det, chips, batch_size)
            for j, i in enumerate(owner):
                per[i].append(_row(det, feats, j, threshold))
        out = []
        for it, pf, rows in zip(items, found, per):
            if rows:
                note = "; ".join(n for n in (pf.turn_note(), _note(it, threshold, aligned=True)) if n)
                turned = rotations_entry(rotations, turned=pf.turn)
                out.append(Outcome.record(**_photo_row(rows), faces=len(rows), **turned, note=note))
            else:
                blank = {k: "" for k in fields if k not in ("path",)}
                out.append(Outcome.record(**{**blank, "faces": 0, **rotations_entry(rotations, turned=pf.turn),
                                             "note": pf.reason_if_empty(aligner.min_face)}))
        return out

    return process


def calibrate_on_folder(detector: CloakDetector, in_path: str | Path, kind: str, *, scores_csv: str | Path,
                        **options: Any) -> tuple[float, float, DetectReport]:
    """Add a folder of photos known to be natural (a user's own collection) to `detector`'s calibration as
    kind `kind` (`CloakDetector.add_natural_kind`): the default threshold then holds the false-positive rate
    on such photos too. Scores go to `scores_csv` (resumable, as `detect_folder`; `options` are its options).
    Returns (threshold before, threshold after, the scoring report); unreadable files are left out."""
    before = detector.threshold()
    rep = detect_folder(in_path, scores_csv, detector=detector, **options)
    if not isinstance(rep, DetectReport):
        raise PufaceError("a calibration has no dry run")
    scores = [float(r["score"]) for r in rep.rows if r.get("score", "") != ""]
    if not scores:
        raise PufaceError(f"{in_path}: no image could be scored, nothing to calibrate on")
    return before, detector.add_natural_kind(scores, kind), rep


def _finish(out_csv: Path, fields: list[str], thresholds: Thresholds, fpr: float, job: JobReport, in_path: Path,
            identities_csv: str | Path | None, det_id: str, *, state: dict | None = None,
            current: set[str] | None = None, claim: Claim | None = None,
            cloaked_csv: Path | None = None, rank: tuple[int, int] | None = None) -> DetectReport:
    """Rewrite the scores with the decision at this run's thresholds (each row's storage's), write the identity
    summary (and with `cloaked_csv` the list of the rows judged cloaked). current: the paths (relative to the input) of
    this run's files; rows of other files (gone from the input since an earlier run) are dropped from the scores and
    the summary. The rows stream through, counted as they pass (two or three reads of the file; none is held).
    claim: this process's claim on the output, shared with other processes (--rank): the summaries are left to the
    last of them to end (`Claim.others_running`), whose rows are all in by then. rank: (rank, world size) of a process
    sharing the file: the run file records the detector per rank, and the ranks whose rows another detector scored
    (one rank restarted with another detector, the others not yet) are named in the report (`DetectReport.mixed`)."""
    tally = IdentityTally(in_path.resolve().name if in_path.is_dir() else in_path.resolve().parent.name)
    rep = DetectReport(job, thresholds.default, fpr, scores_csv=out_csv, fields=fields, cloaked_csv=cloaked_csv)
    storages: dict[str, int] = {}  # scored rows per storage
    cloaked: list[dict] = []

    def decided(r: dict) -> bool:
        """Decide row `r` at this run's thresholds (its note follows); True when that changed it."""
        changed = False
        if r.get("score", "") != "":
            now = decide(float(r["score"]), thresholds(r.get("storage", "")))
            changed = str(r.get("cloaked")) != str(now)
            r["cloaked"] = now
        if r.get("note") in (PALETTE_NOTE, PALETTE_KIND_NOTE):  # a resume with(out) --one-threshold: the note follows
            note = PALETTE_KIND_NOTE if _palette_kind_judged(thresholds, r.get("storage", "")) else PALETTE_NOTE
            changed = changed or r["note"] != note
            r["note"] = note
        return changed

    def kept_rows(fd: int, last: dict[str, int]) -> Iterator[dict]:
        for r in _rows(out_csv, fields, last, fd):
            if current is None or r["path"] in current:
                decided(r)
                yield r

    with locked_csv(out_csv, create=False) as fd:  # processes sharing the file (--rank) may still append to it
        last, stored = _last_rows(out_csv, fields, fd) if fd is not None else ({}, 0)
        kept = 0
        changed = False
        for r in _rows(out_csv, fields, last, fd) if fd is not None else ():
            if current is not None and r["path"] not in current:
                rep.gone += 1
                continue
            kept += 1
            changed = decided(r) or changed
            tally.add(r)
            if r.get("score", "") == "":
                rep.no_face += 1
                continue
            rep.scored += 1
            resized = _RESIZED.match(r.get("note") or "")
            if resized:
                rep.resized, rep.chip_size = rep.resized + 1, int(resized.group(1))
            st = r.get("storage", "")
            storages[st] = storages.get(st, 0) + 1
            if str(r.get("cloaked", "")) == "1":
                rep.flagged += 1
                if cloaked_csv is not None:
                    cloaked.append({"path": r["path"], "score": r["score"], "status": r.get("status", "")})
        if fd is not None and (changed or kept != stored):
            _write_csv(out_csv, kept_rows(fd, last), fields)
        if claim is not None:
            claim.ended()
            rep.others_running = claim.others_running()
    rep.identities = tally.summary()
    rep.identities_csv = Path(identities_csv) if identities_csv else out_csv.with_name(out_csv.stem + "-identities.csv")
    rep.thresholds = thresholds.used_by(storages)
    rep.by_storage = {st: storages[st] for st in rep.thresholds}
    if not rep.others_running:
        _write_csv(rep.identities_csv, rep.identities,
                   ["identity", "images", "flagged", "share_flagged", "mean_score", "max_score"])
        if cloaked_csv is not None:
            _write_csv(cloaked_csv, cloaked, ["path", "score", "status"])
    info = {"detector": det_id, "input": str(in_path.resolve()), "threshold": thresholds.default,
            "thresholds_by_storage": rep.thresholds, "one_threshold": thresholds.one, "fpr": fpr, "images": kept,
            "scored": rep.scored, "flagged": rep.flagged, "failed": [[str(p), why] for p, why in job.failed],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **(state or {})}
    rep.mixed = _write_run(run_file_of(out_csv), info, det_id, rank)
    return rep


def purify_folder_detected(
    in_path: str | Path,
    out_path: str | Path,
    *,
    skip_cloaked: bool,
    detector: CloakDetector | None = None,
    detector_weights: str | Path | None = None,
    device: str | None = None,
    fpr: float | None = None,
    batch_size: int = 16,
    resume: bool = True,
    rank: int = 0,
    world_size: int = 1,
    quality: int = 95,
    io_workers: int = 2,
    progress: bool = True,
    align: bool = False,
    largest_face: bool = False,
    scores_csv: str | Path | None = None,
    weights: str | Path | None = None,
    step: float | None = None,
    one_threshold: bool = False,
    rotations: str = "auto",
) -> DetectReport:
    """Purify every image under `in_path` into the mirrored tree `out_path`, scoring each for a cloak first.

    skip_cloaked: photos judged cloaked are left out (not written; listed in OUT/cloaked.csv), so a
    trainer respects the opt-out; otherwise they are purified like the rest. Every image's score goes to
    `scores_csv` (default OUT/detection.csv, with a `status` column: ok = purified, skip = left out), the
    per-identity summary to OUT/detection-identities.csv. The purified image is the detector's own P(x),
    so detection costs no second purification. Images that are not chips of the detector's size (112 px ArcFace
    crops, ...) are written as `puface purify` writes them (each layout to its purifier; `weights` as there,
    None = the shipped ones); their score is that of the image resized to a chip. `align`: photos, not chips
    (faces detected, purified and pasted back; with skip_cloaked a photo with any cloaked face is left out;
    `rotations` as `purify_folder`, and when not "off" a `turned` column as `purify_folder`'s stats have it).
    step: how far along the purifier's change the written images go (`Purifier.purify`; None: each purifier's
    default, `job_step`: 1.5 for the shipped dlib150 one); the score is that of P(x) either way.
    A chip stored as 4:4:4 JPEG or with a palette is judged by its storage's threshold, as `detect_folder` judges
    it (every image by the default threshold with `one_threshold`).
    """
    in_path, out_path = Path(in_path), Path(out_path)
    current: set[str] = set()  # every process's files: processes (--rank) share the scores CSV
    jobs = plan_mirror(in_path, out_path, rank=rank, world_size=world_size, names=current)  # this process's share
    det = _prepare_detector(detector, detector_weights, device)
    threshold = Thresholds(det, fpr, one_threshold)
    fpr_v = det.default_fpr if fpr is None else float(fpr)
    scores = Path(scores_csv) if scores_csv else out_path / "detection.csv"
    fields = (
        ["path", "status", "score", "cloaked", *feature_columns(det)]
        + _align_columns(align, rotations)
        + ["storage", "note"]
    )
    det_id = det.fingerprint()
    from ..purifier.folder import make_batch_process, open_output, purify_settings
    from ..purifier.model import Purifier, as_layouts, is_shipped, job_step

    chip_step = job_step(det.purifier, step)

    # chips of the detector's size get its own P(x); other images `puface purify`'s purifier for their layout
    layouts = Purifier.load_layouts(weights, device=det.device) if is_shipped(weights) else det.purifier
    serving = {**as_layouts(layouts), det.purifier.template: det.purifier}
    left_out = ({"detector": det_id, "threshold": round(float(threshold.default), 6), "by_storage": not one_threshold}
                if skip_cloaked else None)
    finish = open_output(
        out_path,
        purify_settings(
            in_path, serving, align=align, largest_face=largest_face, quality=quality, step=step, rotations=rotations,
            skip_cloaked=left_out,
        ),
        resume,
        rank,
        world_size,
    )
    with finish.on_failure():
        if resume:  # a scores CSV it cannot resume: purify's own remedy (detect's --restart is not purify's)
            _check_columns(scores, _header(scores), fields, PURIFY_AGAIN)
        previous = _start_rows(scores, fields, resume, {j.rel.as_posix() for j in jobs} if world_size > 1 else None)
        skipped = {p for p, status in previous.items() if status == "skip"}
        scored = {p for p, status in previous.items() if status != "fail"}
        del previous  # the paths alone: the rows themselves are read again at the end (`_finish`), not held meanwhile
        other_sizes: list[Callable] = []  # `puface purify`'s batch function, for images that are not chips, made once

        def purify_others(items: list[LoadedImage]) -> list[np.ndarray]:
            if not other_sizes:
                other_sizes.append(make_batch_process(layouts, det.device, step=step))
            return [o.image for o in other_sizes[0](items)]

        def chip_process(items: list[LoadedImage]) -> list[Outcome]:
            feats, purified = _chip_features(det, [it.image for it in items], batch_size, chip_step)
            images = [tensor_to_image(p) for p in purified]
            others = [i for i, it in enumerate(items) if images[i].shape != it.image.shape]
            for i, img in zip(others, purify_others([items[i] for i in others]) if others else []):
                images[i] = img
            outs = []
            for i, it in enumerate(items):
                storage = chip_storage(det, it)
                row = _row(det, feats, i, threshold, storage)
                out = images[i]
                note = _note(it, threshold, aligned=align)  # (with `align`: a face's chip, cut at 150 px)
                if skip_cloaked and row["cloaked"]:
                    outs.append(
                        Outcome.skip(
                            f"judged cloaked (score {row['score']} > {threshold(storage):.4f})", **row, note=note
                        )
                    )
                else:
                    outs.append(Outcome.ok(out, **row, note=note))
            return outs

        process: Callable = chip_process
        if align:
            from ..align import align_adapter

            def skip_photo(outs: list[Outcome]) -> str | None:
                bad = [o for o in outs if o.status == "skip"]
                return f"{len(bad)} face(s) judged cloaked" if skip_cloaked and bad else None

            process = align_adapter(chip_process, chip_size=150, no_face="copy", largest_face=largest_face,
                                    rotations=rotations, skip_photo=skip_photo, merge_stats=_merge_face_stats)
        job = run_folder_job(
            jobs,
            keep_input_mode(process),
            batch_size=batch_size,
            resume=resume,
            desc="detecting + purifying",
            verb="purified",
            stats_csv=scores,
            quality=quality,
            io_workers=io_workers,
            progress=progress,
            # done: purified and scored (an output written without --report is scored again), or left out
            is_done=lambda j: (j.dst.is_file() and j.rel.as_posix() in scored) or j.rel.as_posix() in skipped,
            stats_fields=fields,
            stats_key="path",
        )
        rep = _finish(scores, fields, threshold, fpr_v, job, in_path, out_path / "detection-identities.csv", det_id,
                      current=current, claim=finish.claim, cloaked_csv=out_path / "cloaked.csv")
    finish()
    return rep


def _merge_face_stats(rows: list[dict]) -> dict:
    """With `align`: a photo's detection row from its faces' rows (the highest score; cloaked if any face is)."""
    rows = [r for r in rows if r.get("score", "") != ""]
    if not rows:
        return {}
    return {**_photo_row(rows), "faces": len(rows)}
