"""`align_adapter`: run a chip-level batch function on every face of full photos.

A chip-level function (`cloak`, `purify`) maps a list of `LoadedImage` face chips to one `Outcome`
each. The adapter detects and aligns the faces of each photo, calls the function once on all chips
of the batch, and writes back into each photo only the *change* each chip went through, through
the inverse transform and a feathered mask: the output has the photo's size, format and metadata,
and pixels away from faces are untouched.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..io.jobs import FileJob, LoadedImage, Outcome
from ..utils.errors import PufaceError
from .aligner import FaceAligner
from .detect import FaceDetector, rotations_entry
from .warp import fill_off_photo, paste_back

NO_FACE_ACTIONS = ("copy", "skip")

ChipProcess = Callable[[list[LoadedImage]], list[Outcome]]


def _face_job(job: FileJob, k: int) -> FileJob:
    rel = job.rel.with_name(f"{job.rel.stem}_face{k}{job.rel.suffix}")
    dst = job.dst.with_name(f"{job.dst.stem}_face{k}{job.dst.suffix}")
    return FileJob(job.src, dst, rel)


def _merge_stats(rows: list[dict]) -> dict:
    """One face: its stats as they are; several: the mean of each numeric stat."""
    if not rows:
        return {}
    if len(rows) == 1:
        return dict(rows[0])
    out: dict = {}
    for k in dict.fromkeys(k for r in rows for k in r):
        vals = [r[k] for r in rows if k in r]
        nums = [
            float(v) for v in vals if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        ]
        out[k] = float(np.mean(nums)) if len(nums) == len(vals) else vals[0]
    return out


def align_adapter(
    chip_process: ChipProcess,
    chip_size: int = 150,
    no_face: str = "copy",
    largest_face: bool = False,
    min_face: float = 40.0,
    *,
    aligner: FaceAligner | None = None,
    detector: str = "hog+cnn",
    rotations: str = "auto",
    feather: float = 4.0,
    refine_steps: int = 2,
    skip_photo: Callable[[list[Outcome]], str | None] | None = None,
    merge_stats: Callable[[list[dict]], dict] | None = None,
) -> ChipProcess:
    """Turn a chip-level batch function into a photo-level one.

    Args:
        chip_process: list of face chips (LoadedImage, uint8 (S, S, 3), job.rel named
            `<stem>_face<k><ext>`; the part of a chip off the photo continues the photo's edge,
            `warp.fill_off_photo`, where dlib's chip is black) -> one Outcome per chip. "ok" chips are
            pasted back; "copy" and "skip" leave that face unchanged; a "fail" fails the whole photo.
        chip_size: 150 (dlib chip, padding 0.25) or 112 (ArcFace layout); other sizes use dlib's.
        no_face: what to do with a photo without a usable face: "copy" it through unchanged
            (purify) or "skip" it (cloak); the per-file line says "no face found" or
            "face smaller than N px".
        largest_face: process only the largest face of each photo (default: every face).
        min_face: faces smaller than this many photo pixels (see `geometry.face_size`) are ignored.
        aligner: a ready `FaceAligner` (overrides chip_size, largest_face, min_face, detector, rotations).
        detector: "hog", "cnn" or "hog+cnn" (CNN only when HOG finds nothing).
        rotations: "auto": a photo without an upright face (or with a weak one) is searched turned 90, 270, 180
            degrees clockwise (`FaceDetector`); its faces are cut upright and their changes pasted back into the
            photo as it is (same size and pixel layout); "off": upright only.
        feather: chip pixels over which a change fades out towards the chip border.
        refine_steps: re-align-and-correct passes after pasting (see `warp.paste_back`).
        skip_photo: given a photo's chip outcomes, a reason to leave the whole photo out (written
            nowhere), or None (e.g. `purify --skip-cloaked`: any face judged cloaked).
        merge_stats: the photo's stats from all its chips' stats (default: the mean of each numeric
            stat over the processed chips).
    Returns:
        process(list[LoadedImage]) -> list[Outcome]; stats per photo: faces (detected),
        faces_processed, faces_too_small, face_px (largest processed), with rotations on `turned` (degrees
        clockwise the photo was turned to find its faces; 0: upright), plus the chip function's stats (averaged
        over faces).
    """
    if no_face not in NO_FACE_ACTIONS:
        raise PufaceError(f"no_face must be one of {', '.join(NO_FACE_ACTIONS)}, got {no_face!r}")
    if aligner is None:
        aligner = FaceAligner(
            chip_size, FaceDetector(detector, rotations=rotations), pick="largest" if largest_face else "all",
            min_face=min_face,
        )
    rotations = aligner.detector.rotations  # a given aligner's overrides the argument

    def process(items: list[LoadedImage]) -> list[Outcome]:
        found = []
        inputs: list[list[np.ndarray]] = []  # per photo, the chips as the chip function saw them
        chips: list[LoadedImage] = []
        owners: list[tuple[int, int]] = []  # (photo index, face index in that photo's list)
        for i, item in enumerate(items):
            pf = aligner.align(item.image)
            found.append(pf)
            shown = []
            for k, af in enumerate(pf.faces):
                # a face cut by the photo's edge is processed with the edge continued, not dlib's black (pasted only
                # inside the photo)
                chip = fill_off_photo(item.image, af.transform, af.chip)
                shown.append(chip)
                chips.append(
                    LoadedImage(_face_job(item.job, af.index), chip, None, None, item.format, palette=item.palette)
                )
                owners.append((i, k))
            inputs.append(shown)
        chip_out = chip_process(chips) if chips else []
        if len(chip_out) != len(chips):
            raise RuntimeError(f"chip function returned {len(chip_out)} results for {len(chips)} chips")
        per_photo: list[list[tuple[int, Outcome]]] = [[] for _ in items]
        for (i, k), out in zip(owners, chip_out):
            per_photo[i].append((k, out))
        results: list[Outcome] = []
        for item, pf, outs, shown in zip(items, found, per_photo, inputs):
            base = {"faces": pf.found, "faces_processed": 0, "faces_too_small": len(pf.too_small)}
            base.update(rotations_entry(rotations, turned=pf.turn))
            if not pf.faces:
                reason = pf.reason_if_empty(aligner.min_face)
                results.append(Outcome(no_face, reason=reason, stats=base))
                continue
            failed = [(k, o) for k, o in outs if o.status == "fail"]
            if failed:
                k, o = failed[0]
                results.append(Outcome.fail(f"face {pf.faces[k].index}: {o.reason}"))
                continue
            done = [(k, o) for k, o in outs if o.status == "ok" and o.image is not None]
            stats = {**base, "faces_processed": len(done), "face_px": round(max(f.size_px for f in pf.faces), 1)}
            if merge_stats is not None:
                stats.update(merge_stats([o.stats for _, o in outs]))
            else:
                stats.update(_merge_stats([o.stats for _, o in done]))
            why = skip_photo([o for _, o in outs]) if skip_photo is not None else None
            if why:
                results.append(Outcome.skip(why, **stats))
                continue
            if not done:
                statuses = {o.status for _, o in outs}
                reason = "; ".join(dict.fromkeys(o.reason for _, o in outs if o.reason)) or "no face processed"
                results.append(Outcome("skip" if "skip" in statuses else "copy", reason=reason, stats=stats))
                continue
            triples = []
            for k, o in done:
                af = pf.faces[k]
                cout = np.asarray(o.image)
                if cout.shape != af.chip.shape:
                    raise RuntimeError(f"chip function changed the chip size from {af.chip.shape} to {cout.shape}")
                # the change the function made to what it saw, added to the chip as cut (paste_back's refinement
                # compares that with chips cut again)
                change = cout.astype(np.float64) - shown[k].astype(np.float64)
                triples.append((af.transform, af.chip, af.chip.astype(np.float64) + change))
            photo = paste_back(item.image, triples, feather=feather, refine_steps=refine_steps)
            results.append(Outcome.ok(photo, **stats))
        return results

    process.aligner = aligner  # type: ignore[attr-defined]  # an attribute on a function: mypy cannot type it
    return process
