"""The Ray engine: a folder job (`plan_mirror` + a batch function) as a streaming Ray Data pipeline.

    files -> read + decode (tasks) -> the batch function (an actor pool: one actor per GPU or per CPU
    share, each loads its model once) -> encode + atomic write (tasks) -> per-file outcomes to the driver

It writes what `run_folder_job` writes (same names, formats, sizes, metadata, stats CSV, report) and
resumes the same way (finished outputs are skipped before the pipeline starts). Fault tolerance is
Ray's: a dead actor is restarted and its batch retried, tasks are retried; outputs are written
atomically and deterministically, so a retried batch rewrites the same bytes and the report still
lists every file once. Needs the `ray` extra (`pip install puface[ray]`); the local engine never imports ray.

The batch function cannot be shipped as a closure over a loaded model: the caller passes `factory`, a
picklable zero-argument callable (e.g. `functools.partial` of a module-level function) that builds
the batch function inside each actor.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..utils.errors import ImageReadError, MissingDependencyError, PufaceError, shown_path
from .images import atomic_write_bytes, encode_image, pil_format_for
from .jobs import (
    FileJob,
    JobReport,
    LoadedImage,
    Outcome,
    _StatsCSV,
    call_process,
    check_job_output,
    load_for_job,
    resume_split,
)

__all__ = ["run_ray_job", "init_ray"]

BatchFn = Callable[[list[LoadedImage]], list[Outcome]]


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray Data: pip install 'puface[ray]'") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to the Ray cluster at `address` ("auto", "ray://host:10001", "host:6379"), or start a local
    one when None; returns True when this call started it (the caller then shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    except ConnectionError as e:
        raise PufaceError(f"cannot connect to the Ray cluster at {address!r} ({e})") from None
    return True


def _obj(values) -> np.ndarray:
    """An object array (bytes and strings stay as they are: numpy's fixed-width 'S' would drop trailing NULs)."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def _decode_stage(batch: dict) -> dict:
    """Ray task: read and decode each file; decoded pixels travel as raw bytes + shape."""
    n = len(batch["src"])
    pixels, h, w, exif, icc, fmt, error, alpha, gray, palette, storage, color, lossless, dpi, compression = (
        [] for _ in range(15)
    )
    for i in range(n):
        job = FileJob(Path(batch["src"][i]), Path(batch["dst"][i]), Path(batch["rel"][i]))
        try:
            item = load_for_job(job)
            pixels.append(np.ascontiguousarray(item.image).tobytes())
            h.append(item.image.shape[0])
            w.append(item.image.shape[1])
            exif.append(item.exif or b"")
            icc.append(item.icc_profile or b"")
            fmt.append(item.format)
            alpha.append(b"" if item.alpha is None else np.ascontiguousarray(item.alpha).tobytes())
            gray.append(item.gray)
            palette.append(item.palette)
            storage.append(item.storage)
            color.append(b"" if item.color is None else np.ascontiguousarray(item.color).tobytes())
            lossless.append(item.lossless)
            dpi.append(json.dumps(item.dpi) if item.dpi else "")
            compression.append(item.compression)
            error.append("")
        except Exception as e:  # ImageReadError, or anything a hostile file provokes
            reason = e.reason if isinstance(e, ImageReadError) else f"unexpected read error ({type(e).__name__}: {e})"
            pixels.append(b"")
            h.append(0)
            w.append(0)
            exif.append(b"")
            icc.append(b"")
            fmt.append("")
            alpha.append(b"")
            gray.append(False)
            palette.append(False)
            storage.append("")
            color.append(b"")
            lossless.append(False)
            dpi.append("")
            compression.append("")
            error.append(reason)
    return {"src": batch["src"], "dst": batch["dst"], "rel": batch["rel"], "pixels": _obj(pixels),
            "h": np.asarray(h, np.int64), "w": np.asarray(w, np.int64), "exif": _obj(exif), "icc": _obj(icc),
            "fmt": _obj(fmt), "error": _obj(error), "alpha": _obj(alpha), "gray": np.asarray(gray, bool),
            "palette": np.asarray(palette, bool), "storage": _obj(storage), "color": _obj(color),
            "lossless": np.asarray(lossless, bool), "dpi": _obj(dpi), "compression": _obj(compression)}


class _BatchActor:
    """Ray actor: builds the batch function once (`factory()`), then maps decoded batches to outcomes."""

    def __init__(self, factory: Callable[[], BatchFn], threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.process = factory()

    def __call__(self, batch: dict) -> dict:
        n = len(batch["src"])
        batch = {**batch, "h": np.array(batch["h"]), "w": np.array(batch["w"])}  # Ray's arrays may be read-only
        items, where = [], []
        status = ["fail"] * n
        reason = list(batch["error"])
        out_pixels: list[bytes] = [b""] * n
        stats = ["{}"] * n
        channels = np.full(n, 3, np.int64)
        for i in range(n):
            if batch["error"][i]:
                continue
            h, w = int(batch["h"][i]), int(batch["w"][i])
            img = np.frombuffer(batch["pixels"][i], np.uint8).reshape(h, w, 3)
            job = FileJob(Path(batch["src"][i]), Path(batch["dst"][i]), Path(batch["rel"][i]))
            alpha = np.frombuffer(batch["alpha"][i], np.uint8).reshape(h, w) if batch["alpha"][i] else None
            color = np.frombuffer(batch["color"][i], np.uint8).reshape(h, w, 3) if batch["color"][i] else None
            items.append(LoadedImage(job, img, batch["exif"][i] or None, batch["icc"][i] or None, batch["fmt"][i],
                                     alpha, bool(batch["gray"][i]), bool(batch["palette"][i]),
                                     str(batch["storage"][i]), color))
            where.append(i)
        outcomes = call_process(self.process, items) if items else []
        for i, out in zip(where, outcomes):
            status[i], reason[i] = out.status, out.reason
            stats[i] = json.dumps(out.stats)
            if out.status == "ok":
                img = np.ascontiguousarray(out.image, dtype=np.uint8)
                if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (2, 3, 4))):
                    status[i], reason[i] = "fail", f"batch function returned an image of shape {img.shape}"
                    continue
                out_pixels[i] = img.tobytes()
                batch["h"][i], batch["w"][i] = img.shape[0], img.shape[1]
                channels[i] = 1 if img.ndim == 2 else img.shape[2]
        return {"src": batch["src"], "dst": batch["dst"], "rel": batch["rel"], "pixels": _obj(out_pixels),
                "h": batch["h"], "w": batch["w"],
                "c": channels,
                "exif": batch["exif"], "icc": batch["icc"], "lossless": batch["lossless"], "dpi": batch["dpi"],
                "compression": batch["compression"], "status": _obj(status), "reason": _obj(reason),
                "stats": _obj(stats)}


def _write_stage(quality: int) -> Callable[[dict], dict]:
    def write(batch: dict) -> dict:
        """Ray task: encode each "ok" image like the original and write it atomically; copy "copy" inputs."""
        n = len(batch["src"])
        status, reason = list(batch["status"]), list(batch["reason"])
        for i in range(n):
            dst = Path(batch["dst"][i])
            try:
                if status[i] in ("ok", "copy"):
                    check_job_output(FileJob(Path(batch["src"][i]), dst, Path(batch["rel"][i])), dst)
                if status[i] == "ok":
                    c = int(batch["c"][i])
                    img = np.frombuffer(batch["pixels"][i], np.uint8).reshape(int(batch["h"][i]), int(batch["w"][i]), c)
                    dpi = batch["dpi"][i]
                    data = encode_image(
                        img[..., 0] if c == 1 else img,
                        pil_format_for(dst),
                        quality=quality,
                        exif=batch["exif"][i] or None,
                        icc_profile=batch["icc"][i] or None,
                        lossless=bool(batch["lossless"][i]),
                        dpi=tuple(json.loads(dpi)) if dpi else None,
                        tiff_compression=batch["compression"][i] or None,
                    )
                    atomic_write_bytes(dst, data)
                elif status[i] == "copy":
                    atomic_write_bytes(dst, Path(batch["src"][i]).read_bytes())
            except Exception as e:
                status[i], reason[i] = "fail", f"cannot write {dst} ({e})"
        return {"src": batch["src"], "status": _obj(status), "reason": _obj(reason), "stats": batch["stats"]}

    return write


def run_ray_job(
    jobs: Sequence[FileJob],
    factory: Callable[[], BatchFn],
    *,
    batch_size: int = 16,
    resume: bool = True,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    threads: int | None = None,
    desc: str = "processing",
    verb: str = "written",
    stats_csv: Path | None = None,
    quality: int = 95,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    is_done: Callable[[FileJob], bool] | None = None,
    stats_fields: list[str] | None = None,
    stats_key: str = "file",
    stats_status: bool = True,
) -> JobReport:
    """Run a folder job on Ray Data; same outputs and report as `jobs.run_folder_job` (also for jobs whose
    batch function records rows instead of writing images: `Outcome.record`, as `puface detect`).

    Args:
        jobs: from `plan_mirror`.
        factory: picklable zero-argument callable returning the batch function (built once per actor).
        address: the Ray cluster to use (None: the one this process is connected to, else a new local one).
        workers: actors in the pool (default: one per GPU when gpus_per_worker > 0, else the cluster's
            CPUs minus one, at least 1).
        cpus_per_worker, gpus_per_worker: Ray resources each actor holds.
        threads: torch threads per actor (default: cpus_per_worker rounded up).
        is_done, stats_fields, stats_key, stats_status: as `run_folder_job`.
    """
    ray = _ray()
    from tqdm import tqdm

    report = JobReport(total=len(jobs))
    t0 = time.perf_counter()
    todo, report.resumed = resume_split(jobs, resume, is_done, stats_csv, stats_key)
    say = log or (lambda m: print(m, file=sys.stderr))
    if not todo:
        report.seconds = time.perf_counter() - t0
        return report
    started = init_ray(address)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = True  # outcomes (and the stats CSV) in file order, as locally
        res = ray.cluster_resources()
        if workers is None:
            if gpus_per_worker > 0:
                workers = max(1, int(res.get("GPU", 0) // gpus_per_worker))
            else:
                workers = max(1, int(res.get("CPU", 1) // max(cpus_per_worker, 1e-9)) - 1)
        if workers < 1:
            raise PufaceError("--workers must be >= 1")
        import pyarrow as pa

        # Blocks of whole batches: every batch the actors see is one the local engine would make (the same
        # files together), so batch-dependent outputs (cloaks) are the same bytes too.
        n_batches = math.ceil(len(todo) / batch_size)
        per_block = max(1, math.ceil(n_batches / max(workers * 4, 1))) * batch_size
        tables = [pa.table({"src": [str(j.src) for j in part], "dst": [str(j.dst) for j in part],
                            "rel": [str(j.rel) for j in part]})
                  for part in (todo[i : i + per_block] for i in range(0, len(todo), per_block))]
        ds = ray.data.from_arrow(tables)
        ds = ds.map_batches(_decode_stage, batch_size=batch_size, batch_format="numpy")
        remote: dict = {"num_cpus": cpus_per_worker}
        if gpus_per_worker:
            remote["num_gpus"] = gpus_per_worker
        ds = ds.map_batches(
            _BatchActor,
            fn_constructor_kwargs={"factory": factory, "threads": threads or max(1, math.ceil(cpus_per_worker))},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            **remote,
        )
        ds = ds.map_batches(_write_stage(quality), batch_size=batch_size, batch_format="numpy")
        stats = _StatsCSV(stats_csv, stats_fields)
        stats.drop(stats_key, {j.rel.as_posix() for j in todo})  # rows of jobs done before and redone now
        bar = tqdm(total=len(todo), desc=f"{desc} (ray, {workers} workers)", unit="img", disable=not progress,
                   dynamic_ncols=True, file=sys.stderr)
        rel_of = {str(j.src): j.rel for j in todo}
        try:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                rows_csv = []
                for src, st, why, js in zip(out["src"], out["status"], out["reason"], out["stats"]):
                    p = Path(src)
                    if st in ("ok", "record"):
                        report.written += 1
                    elif st == "copy":
                        report.copied.append((p, why))
                    elif st == "skip":
                        report.skipped.append((p, why))
                    else:
                        report.failed.append((p, why))
                        msg = f"error: {shown_path(p)}: {why}"
                        bar.write(msg, file=sys.stderr) if log is None else say(msg)
                    s = json.loads(js) if js else {}
                    if s:
                        head = {stats_key: Path(rel_of.get(src, src)).as_posix()}
                        if stats_status:
                            head["status"] = st
                        rows_csv.append({**head, **s})
                stats.add(rows_csv)
                bar.update(len(out["src"]))
        finally:
            bar.close()
    finally:
        if started:
            ray.shutdown()
    report.seconds = time.perf_counter() - t0
    return report
