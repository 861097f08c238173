"""Folder purification: every image under a folder, streamed through a `Purifier` into a mirrored tree
(names, formats and sizes kept; resumable; broken files reported, never fatal), with optional face
alignment and paste-back for ordinary photos."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..align import align_adapter
from ..io.jobs import LoadedImage, Outcome, group_by_size, plan_mirror, run_folder_job, shard
from ..utils.device import resolve_device
from ..utils.errors import PufaceError
from ..utils.images import tensor_to_image, to_float
from .model import Purifier

__all__ = ["ENGINES", "make_batch_process", "purify_folder", "purify_shards", "ray_batch_process"]

ENGINES = ("local", "ray")


def make_batch_process(purifier: Purifier, device: torch.device, channels_last: bool = True) -> Callable:
    """A `run_folder_job` batch function: purify each same-size group of decoded images at once."""
    purifier.to(device).eval()

    def process(items: list[LoadedImage]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(items)
        for _, idx in group_by_size(items).items():
            arr = np.stack([items[i].image for i in idx])  # (n, H, W, 3) uint8
            x = to_float(torch.from_numpy(arr).permute(0, 3, 1, 2))
            y = purifier.purify(x, batch_size=len(idx), channels_last=channels_last)
            for j, i in enumerate(idx):
                out = tensor_to_image(y[j])
                change = np.abs(out.astype(np.int16) - items[i].image.astype(np.int16))
                outcomes[i] = Outcome.ok(out, mean_abs_change=round(float(change.mean()), 3), max_abs_change=int(change.max()))
        return outcomes  # type: ignore[return-value]

    return process


def ray_batch_process(purifier: Purifier | str | None, device: str | None = None, align: bool = False,
                      largest_face: bool = False, no_face: str = "copy") -> Callable:
    """The batch function `make_batch_process` (with `align_adapter` when align) for a purifier, a checkpoint
    path or None (the shipped one); `functools.partial` of this is the Ray engine's picklable factory (a
    path keeps the actors' constructor arguments small: each actor loads the weights itself)."""
    dev = resolve_device(device)
    if not isinstance(purifier, Purifier):
        purifier = Purifier.load(purifier, device=dev)
    process = make_batch_process(purifier, dev)
    if align:
        process = align_adapter(process, chip_size=150, no_face=no_face, largest_face=largest_face)
    return process


def purify_folder(in_path: str | Path, out_path: str | Path, *, purifier: Purifier | None = None,
                  weights: str | Path | None = None, device: str | None = None, batch_size: int = 16,
                  resume: bool = True, rank: int = 0, world_size: int = 1, quality: int = 95,
                  io_workers: int = 2, progress: bool = True, stats_csv: Path | None = None,
                  align: bool = False, largest_face: bool = False, no_face: str = "copy",
                  engine: str = "local", address: str | None = None, workers: int | None = None,
                  cpus_per_worker: float = 1.0):
    """Purify every image under `in_path` into the mirrored tree `out_path` (names, formats and sizes kept).

    rank/world_size: this process handles every world_size-th file (multi-process purification).
    align: detect faces, purify aligned 150x150 chips and paste them back (needs `puface.align`).
    engine: "local" (threads in this process) or "ray" (a Ray Data pipeline on the cluster at `address`,
    a new local one when None, with `workers` actors of `cpus_per_worker` CPUs, or one GPU each when
    `device` is CUDA; `puface.io.raydata`). Returns the `JobReport`.
    """
    if engine not in ENGINES:
        raise PufaceError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    dev = resolve_device(device)
    given = purifier
    if purifier is None:
        purifier = Purifier.load(weights, device="cpu" if engine == "ray" else dev)  # checks the file here
    jobs = plan_mirror(in_path, out_path)
    if world_size > 1:
        jobs = shard(jobs, rank, world_size)
    if engine == "ray":
        from functools import partial

        from ..io.raydata import run_ray_job

        # a path (or None: the shipped weights) lets each actor load the weights itself
        what = copy.deepcopy(given).cpu() if given is not None else (str(Path(weights).resolve()) if weights else None)
        factory = partial(ray_batch_process, what, str(dev), align, largest_face, no_face)
        return run_ray_job(jobs, factory, batch_size=batch_size, resume=resume, address=address, workers=workers,
                           cpus_per_worker=cpus_per_worker, gpus_per_worker=1.0 if dev.type == "cuda" else 0.0,
                           desc="purifying", verb="purified", stats_csv=stats_csv, quality=quality, progress=progress)
    process = ray_batch_process(purifier, str(dev), align, largest_face, no_face)
    return run_folder_job(jobs, process, batch_size=batch_size, resume=resume, desc="purifying", verb="purified",
                          stats_csv=stats_csv, quality=quality, io_workers=io_workers, progress=progress)


def purify_shards(in_spec: str | Path, out_path: str | Path, *, purifier: Purifier | None = None,
                  weights: str | Path | None = None, device: str | None = None, batch_size: int = 16,
                  resume: bool = True, rank: int = 0, world_size: int = 1, quality: int = 95, io_workers: int = 2,
                  progress: bool = True, stats_csv: Path | None = None, image_field: str | None = None,
                  align: bool = False, largest_face: bool = False, no_face: str = "copy"):
    """Purify every record of the WebDataset / Parquet shards `in_spec` names (a shard, a folder of
    shards, a glob or `{000..009}` braces) into same-format shards under `out_path` (same keys, order
    and other fields; `puface.io.shards`). rank/world_size: this process takes every world_size-th shard.
    Returns the `ShardReport`."""
    from ..io.shards import plan_shards, run_shard_job

    dev = resolve_device(device)
    if purifier is None:
        purifier = Purifier.load(weights, device=dev)
    jobs = plan_shards(in_spec, out_path)
    if world_size > 1:
        jobs = jobs[rank::world_size]
    process = make_batch_process(purifier, dev)
    if align:
        process = align_adapter(process, chip_size=150, no_face=no_face, largest_face=largest_face)
    return run_shard_job(jobs, process, batch_size=batch_size, resume=resume, image_field=image_field,
                         desc="purifying", verb="purified", stats_csv=stats_csv, quality=quality,
                         io_workers=io_workers, progress=progress)
