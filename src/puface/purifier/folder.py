"""Folder purification: every image under a folder, streamed through a `Purifier` into a mirrored tree
(names, formats and sizes kept; resumable; broken files reported, never fatal), with optional face
alignment and paste-back for ordinary photos."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ..align import align_adapter, require_alignment
from ..align.detect import recorded_rotations, rotations_entry
from ..io.files import Listing
from ..io.jobs import (
    DryRun,
    JobFinish,
    LoadedImage,
    Outcome,
    begin_settings,
    check_settings,
    group_by_size,
    input_identity,
    keep_input_mode,
    plan_mirror,
    resume_split,
    run_folder_job,
    shard,
    split_done,
)
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from ..utils.fingerprint import module_fingerprint
from ..utils.images import tensor_to_image, to_float
from ..utils.version import __version__
from .model import TEMPLATES, Purifier, as_layouts, is_shipped, job_step, primary_purifier

__all__ = ["ENGINES", "CONFIG_NAME", "make_batch_process", "purify_folder", "purify_shards", "purify_settings",
           "open_output", "ray_batch_process"]

ENGINES = ("local", "ray")
#: The settings record of an output folder (`purify_settings`): a resume with other settings is refused.
CONFIG_NAME = "purify_config.json"


#: Pixels a purification job puts through the network at once: a same-size group is purified in chunks of at most
#: this many (one image at least). The activations take about 0.33 GB per megapixel on a CPU, so 16 phone photos
#: of 12 MP stacked whole needed some 60 GB and the job was killed; chips (372 of 150 px) are not cut.
CHUNK_PIXELS = 1 << 23

#: `puface purify --template auto`: the face layout a chip of this size is taken to be in.
AUTO_TEMPLATES = {(150, 150): "dlib150", (112, 112): "arcface112"}


def template_for(shape: tuple[int, int], template: str) -> str | None:
    """The face layout to purify an (H, W) image as: `template` itself, or with "auto" the layout its size
    says (150x150 dlib150, 112x112 arcface112), None when the size says neither."""
    if template != "auto":
        return template
    return AUTO_TEMPLATES.get((shape[0], shape[1]))


def make_batch_process(
    purifier: Purifier | Mapping[str, Purifier],
    device: torch.device,
    channels_last: bool = True,
    template: str = "auto",
    warn: Callable[[str], None] | None = None,
    step: float | None = None,
) -> Callable:
    """A `run_folder_job` batch function: purify each same-size group of decoded images at once.

    purifier: one purifier, or one per face layout (`Purifier.load_layouts`: images of a layout go to the
    purifier trained on it, others to the dlib150 one, else the first). template: the chips' face layout,
    "dlib150" or "arcface112" (a purifier trained on another layout serves it by resampling to its face
    scale, `Purifier.forward_template`), or "auto": by size (150x150 dlib150, 112x112 arcface112; other sizes
    are purified at their own size as the purifier's layout, and `warn` is told once). step: how far along the
    purifier's change (`Purifier.purify`; 1 = P(x)); None: each purifier's default (`job_step`: 1.5 for the
    shipped dlib150 one, else 1).
    """
    if template != "auto" and template not in TEMPLATES:
        raise PufaceError(f"unknown template {template!r}; choose auto or one of {', '.join(TEMPLATES)}")
    # the job's own copies, on `device` and in the memory layout it runs: the caller's purifier is left as it was
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    own = {id(p): copy.deepcopy(p).to(device, memory_format=fmt).eval()  # type: ignore[call-overload]  # stubs lack it
           for p in as_layouts(purifier).values()}
    layouts = {t: own[id(p)] for t, p in as_layouts(purifier).items()}
    main = own[id(primary_purifier(purifier))]
    steps = {id(p): job_step(p, step) for p in layouts.values()}
    warned: list[tuple[int, int]] = []

    def process(items: list[LoadedImage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        for (h, w), idx in group_by_size(items).items():
            t = template_for((h, w), template)
            purifier = layouts.get(t, main) if t is not None else main
            if t is None and not warned:
                warned.append((h, w))
                (warn or (lambda m: print(m, file=sys.stderr)))(
                    f"warning: {w}x{h} images match neither face template (150x150 dlib150, 112x112 arcface112): "
                    f"purified at their own size as {purifier.template} chips; pass --template to say their layout, "
                    "or --align if they are photos rather than face chips")
            arr = np.stack([items[i].image for i in idx])  # (n, H, W, 3) uint8
            x = to_float(torch.from_numpy(arr).permute(0, 3, 1, 2))
            y = purifier.purify(x, batch_size=max(1, CHUNK_PIXELS // (h * w)), channels_last=channels_last, template=t,
                                step=steps[id(purifier)])
            for j, i in enumerate(idx):
                out = tensor_to_image(y[j])
                change = np.abs(out.astype(np.int16) - items[i].image.astype(np.int16))
                outcomes[i] = Outcome.ok(
                    out, mean_abs_change=round(float(change.mean()), 3), max_abs_change=int(change.max())
                )
        return outcomes  # type: ignore[return-value]  # no None left: the size groups cover every item

    return process


def ray_batch_process(purifier: Purifier | Mapping[str, Purifier] | str | None, device: str | None = None,
                      align: bool = False, largest_face: bool = False, no_face: str = "copy",
                      template: str = "auto", step: float | None = None, rotations: str = "auto") -> Callable:
    """The batch function `make_batch_process` (with `align_adapter` when align) for a purifier (or one per
    layout), a checkpoint path or a shipped name (None: the shipped ones, one per layout,
    `Purifier.load_layouts`); `functools.partial` of this is the Ray engine's picklable factory (a path keeps
    the actors' constructor arguments small: each actor loads the weights itself). rotations: with align, also
    look for the faces of a photo without an upright one in the photo turned ("auto"; `align.FaceDetector`) or not
    ("off")."""
    dev = resolve_device(device)
    if not isinstance(purifier, (Purifier, Mapping)):
        purifier = Purifier.load_layouts(purifier, device=dev)
    if align:  # photos: puface cuts dlib150 chips itself
        purifier = primary_purifier(purifier)
    process = make_batch_process(purifier, dev, template="dlib150" if align else template, step=step)
    if align:
        process = align_adapter(process, chip_size=150, no_face=no_face, largest_face=largest_face,
                                rotations=rotations)
    return keep_input_mode(process)


def purify_settings(in_path: str | Path, purifier: Purifier | Mapping[str, Purifier], *, template: str = "auto",
                    align: bool = False, largest_face: bool = False, no_face: str = "copy", quality: int = 95,
                    step: float | None = None, rotations: str = "auto", **more) -> dict:
    """What an output folder's images depend on, for its settings record (OUT/purify_config.json): the purifier
    of each face layout (its weights' fingerprint), the template, the alignment options, the quality of lossy
    outputs, the step each purifier takes (`job_step`; one number when they agree, else {layout: step};
    recorded when not 1, so that folders made at step 1 before steps existed still resume), and `more`
    (e.g. `unmask`, the detection that leaves photos out); with align, `rotations` when not "off" (so that folders made
    before rotations existed resume with "off"). Not the batch size, device, threads or the process's
    rank: those change no output."""
    if align:  # no dlib: an error before any record, which would refuse a rerun without --align
        require_alignment()
    steps = {t: job_step(p, step) for t, p in sorted(as_layouts(purifier).items())}
    taken = set(steps.values())
    recorded = None if taken == {1.0} else (taken.pop() if len(taken) == 1 else steps)
    return {
        "puface_version": __version__,
        "input": input_identity(in_path),
        "purifier": {t: module_fingerprint(p) for t, p in sorted(as_layouts(purifier).items())},
        "template": template,
        "align": {"align": align, "largest_face": largest_face, "no_face": no_face,
                  **rotations_entry(rotations)} if align else {"align": False},
        "quality": quality,
        **({"step": recorded} if recorded is not None else {}),
        **more,
    }


def open_output(out_path: str | Path, record: dict, resume: bool, rank: int = 0, world_size: int = 1) -> JobFinish:
    """Check `record` (`purify_settings`) against the one in `out_path` (a resume with other settings or another
    input is refused: `--no-resume` redoes every image) and write it there; returns the function to call when
    the job has ended (`io.jobs.begin_settings`: a redo over other settings is marked unfinished until then)."""
    return begin_settings(Path(out_path) / CONFIG_NAME, record, resume=resume, kind="purifying", rank=rank,
                          world_size=world_size)


def check_output(out_path: str | Path, record: dict, resume: bool) -> None:
    """`open_output`'s check alone, nothing written or claimed (`--dry-run`): the refusals a job would meet."""
    check_settings(Path(out_path) / CONFIG_NAME, record, resume=resume, kind="purifying")


def shown_settings(record: dict, purifier: Purifier | Mapping[str, Purifier], step: float | None,
                   device: torch.device) -> dict[str, str]:
    """A purification job's settings as a dry run prints them (name -> text): its record (`purify_settings`: each
    layout's purifier fingerprint, the template, alignment, quality, other settings), the step each purifier takes
    (`job_step`) and the device."""
    al = record["align"]
    aligned = DryRun.align_text(al.get("align"), recorded_rotations(al), al.get("largest_face"))
    shown = {"purifier": ", ".join(f"{t} {fp}" for t, fp in record["purifier"].items()),
             "step": ", ".join(f"{t} {job_step(p, step):g}" for t, p in sorted(as_layouts(purifier).items())),
             "template": str(record["template"]), "align": aligned, "quality": str(record["quality"])}
    skip = {"puface_version", "input", "purifier", "template", "align", "quality", "step"}
    shown.update((k, str(v)) for k, v in record.items() if k not in skip and v is not None)
    shown["device"] = str(device)
    return shown


def purify_folder(in_path: str | Path, out_path: str | Path, *, purifier: Purifier | None = None,
                  weights: str | Path | None = None, device: str | None = None, batch_size: int = 16,
                  resume: bool = True, rank: int = 0, world_size: int = 1, quality: int = 95,
                  io_workers: int = 2, progress: bool = True, stats_csv: Path | None = None,
                  align: bool = False, largest_face: bool = False, no_face: str = "copy",
                  engine: str = "local", address: str | None = None, workers: int | None = None,
                  cpus_per_worker: float = 1.0, template: str = "auto",
                  prepare: Callable[[], Callable[[LoadedImage], np.ndarray]] | None = None,
                  settings: Mapping | None = None, step: float | None = None, rotations: str = "auto",
                  dry_run: bool = False):
    """Purify every image under `in_path` into the mirrored tree `out_path` (names, formats and sizes kept).

    rank/world_size: this process handles every world_size-th file (multi-process purification).
    align: detect faces, purify aligned 150x150 chips and paste them back (needs `puface.align`); rotations ("auto" or
    "off"): also look for the faces of a photo without an upright one in the photo turned (`align.FaceDetector`).
    engine: "local" (threads in this process) or "ray" (a Ray Data pipeline on the cluster at `address`,
    a new local one when None, with `workers` actors of `cpus_per_worker` CPUs, or one GPU each when
    `device` is CUDA; `puface.io.raydata`). template: the chips' face layout ("auto": by size, see
    `make_batch_process`). prepare: a factory, called once the output folder is checked (its work may be slow,
    e.g. reading all of IN), that returns a step: each decoded input -> the uint8 image to purify instead (e.g. a
    folder's shared pattern subtracted, `defenses.shared`; local engine; the change statistics are then the
    purifier's). A ready step `f` is passed as `prepare=lambda: f`.
    step: how far along the purifier's change to go (`Purifier.purify`: x + step (P(x) - x); 1 = P(x)); None:
    each purifier's default (`job_step`: 1.5 for the shipped dlib150 purifier, 1 for others).
    settings: more output-changing settings for OUT's record (`purify_settings`, e.g. {"unmask": True});
    resuming into a folder made with other settings is refused (`resume=False` redoes every image).
    dry_run: plan, load the purifier and check the output folder as the job would, write nothing (no folder, record,
    lock or output; `prepare` is not called) and return what it would do (`io.jobs.DryRun`).
    Returns the `JobReport`.
    """
    if engine not in ENGINES:
        raise PufaceError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "ray" and prepare is not None:
        raise PufaceError("a prepare step runs on the local engine only")
    dev = resolve_device(device)
    given = purifier
    layouts: Purifier | dict[str, Purifier] = purifier if purifier is not None else \
        Purifier.load_layouts(weights, device="cpu" if engine == "ray" else dev)  # checks the file here
    listing = Listing() if dry_run else None
    jobs = plan_mirror(in_path, out_path, rank=rank, world_size=world_size, listing=listing)  # this process's share
    record = purify_settings(in_path, layouts, template=template, align=align, largest_face=largest_face,
                             no_face=no_face, quality=quality, step=step, rotations=rotations, **(settings or {}))
    if dry_run:
        check_output(out_path, record, resume)
        return DryRun("photos" if align else "chips", len(jobs), resume_split(jobs, resume, stats_csv=stats_csv)[1],
                      shown_settings(record, layouts, step, dev), listing, rank=rank, world_size=world_size,
                      resume=resume)
    finish = open_output(out_path, record, resume, rank, world_size)
    with finish.on_failure():
        prep = prepare() if prepare is not None else None
        if engine == "ray":
            from functools import partial

            from ..io.raydata import run_ray_job

            # a shipped name (None: the shipped ones) or a path lets each actor load the weights itself
            what: Purifier | str | None
            if given is not None:
                what = copy.deepcopy(given).cpu()
            elif weights is None or is_shipped(weights):
                what = str(weights) if weights else None
            else:
                what = str(Path(weights).resolve())
            factory = partial(ray_batch_process, what, str(dev), align, largest_face, no_face, template, step,
                              rotations=rotations)
            report = run_ray_job(
                jobs,
                factory,
                batch_size=batch_size,
                resume=resume,
                address=address,
                workers=workers,
                cpus_per_worker=cpus_per_worker,
                gpus_per_worker=1.0 if dev.type == "cuda" else 0.0,
                desc="purifying",
                verb="purified",
                stats_csv=stats_csv,
                quality=quality,
                progress=progress,
            )
            finish()
            return report
        process = ray_batch_process(layouts, str(dev), align, largest_face, no_face, template, step,
                                    rotations=rotations)
        if prep is not None:
            purify_batch = process

            def process(items: list[LoadedImage]) -> list[Outcome]:
                for it in items:
                    new = prep(it)
                    if it.color is not None and it.color.shape == new.shape == it.image.shape:
                        # the colour under an alpha channel takes the step's change too: the output is that colour plus
                        # the change processing made (`in_input_mode`), and the step is part of the processing
                        change = new.astype(np.int16) - it.image.astype(np.int16)
                        it.color = np.clip(it.color.astype(np.int16) + change, 0, 255).astype(np.uint8)
                    it.image = new
                return purify_batch(items)

        report = run_folder_job(jobs, process, batch_size=batch_size, resume=resume, desc="purifying", verb="purified",
                                stats_csv=stats_csv, quality=quality, io_workers=io_workers, progress=progress)
    finish()
    return report


def purify_shards(in_spec: str | Path, out_path: str | Path, *, purifier: Purifier | None = None,
                  weights: str | Path | None = None, device: str | None = None, batch_size: int = 16,
                  resume: bool = True, rank: int = 0, world_size: int = 1, quality: int = 95, io_workers: int = 2,
                  progress: bool = True, stats_csv: Path | None = None, image_field: str | None = None,
                  align: bool = False, largest_face: bool = False, no_face: str = "copy", template: str = "auto",
                  step: float | None = None, rotations: str = "auto", dry_run: bool = False):
    """Purify every record of the WebDataset / Parquet shards `in_spec` names (a shard, a folder of
    shards, a glob or `{000..009}` braces) into same-format shards under `out_path` (same keys, order
    and other fields; `puface.io.shards`). rank/world_size: this process takes every world_size-th shard.
    step, rotations: as `purify_folder`. dry_run: check as the job would and write nothing; returns the `io.jobs.DryRun`
    of this process's shards (their records are not counted: that would read every shard). Returns the `ShardReport`.
    """
    from ..io.shards import SHARD_VERSION, check_earlier_outputs, plan_shards, run_shard_job

    dev = resolve_device(device)
    layouts = purifier if purifier is not None else Purifier.load_layouts(weights, device=dev)
    jobs = plan_shards(in_spec, out_path)
    if resume:  # before the record says this version: every process must see the earlier version's outputs
        check_earlier_outputs(Path(out_path) / CONFIG_NAME, jobs, image_field)
    # the folder the output shards' names are relative to identifies the input (a folder, a glob or braces in it)
    base = jobs[0].src.absolute().parents[len(jobs[0].dst.relative_to(out_path).parts) - 1] if jobs else in_spec
    record = purify_settings(base, layouts, template=template, align=align, largest_face=largest_face, no_face=no_face,
                             quality=quality, step=step, rotations=rotations, image_field=image_field,
                             shard_version=SHARD_VERSION)
    if dry_run:
        check_output(out_path, record, resume)
        mine = shard(jobs, rank, world_size)
        return DryRun("shards", len(mine), split_done(mine, resume)[1], shown_settings(record, layouts, step, dev),
                      total=len(jobs), rank=rank, world_size=world_size, resume=resume,
                      notes=["(shards are counted, not their records: counting those would read every shard)"])
    finish = open_output(out_path, record, resume, rank, world_size)
    with finish.on_failure():
        jobs = shard(jobs, rank, world_size)
        process = ray_batch_process(layouts, str(dev), align, largest_face, no_face, template, step,
                                    rotations=rotations)
        report = run_shard_job(jobs, process, batch_size=batch_size, resume=resume, image_field=image_field,
                               desc="purifying", verb="purified", stats_csv=stats_csv, quality=quality,
                               io_workers=io_workers, progress=progress)
    finish()
    return report
