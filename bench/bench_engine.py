"""The Ray engine against the local engine: `puface purify` (or `puface detect`) throughput on the same chips,
in one process.

    python bench/bench_engine.py [--data lfw-chips150] [--n 300] [--batch-size 16] [--job purify|detect]

Runs, each into a fresh output folder: the local engine with 1 torch thread (the baseline) and with the
default threads; a local Ray cluster (2 CPUs) is started once (its start-up timed), then the Ray engine
with 1 and 2 model actors (1 CPU, 1 torch thread each), and a 4-image Ray job whose time is the engine's
fixed cost (actor start-up, pipeline set-up). Every Ray output is checked byte for byte against the
local engine's (with --job detect: the scores CSV, path, decision and score to 1e-3 relative). Writes
bench/results/engine.{md,csv} (engine-detect.{md,csv} for --job detect).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import puface.detection.folder as detection  # before ray: its import may reorder sys.path
import puface.purifier.folder as folder
from benchtables import Table, shown, write_tables
from puface.data.datasets import resolve_data_root


def _files(root: Path, n: int) -> list[Path]:
    files = sorted(p for p in root.rglob("*.jpg"))
    step = max(1, len(files) // n)
    return files[::step][:n]


def _link_tree(files: list[Path], root: Path, dst: Path) -> Path:
    for f in files:
        d = dst / f.relative_to(root)
        d.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f.resolve(), d)
    return dst


def _same(a: Path, b: Path) -> bool:
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all((a / r).read_bytes() == (b / r).read_bytes() for r in fa)


def _rows(csv_path: Path) -> list[dict]:
    import csv

    with open(csv_path, newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["path"])


def _same_scores(a: Path, b: Path) -> bool:
    ra, rb = _rows(a / "scores.csv"), _rows(b / "scores.csv")
    return [r["path"] for r in ra] == [r["path"] for r in rb] and all(
        x["cloaked"] == y["cloaked"] and abs(float(x["score"]) - float(y["score"])) <= 1e-3 * (1 + abs(float(x["score"])))
        for x, y in zip(ra, rb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="lfw-chips150")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    ap.add_argument("--job", choices=["purify", "detect"], default="purify")
    args = ap.parse_args()
    root = resolve_data_root(args.data)
    files = _files(root, args.n)
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    src = _link_tree(files, root, tmp / "in")
    n = len(files)
    rows = []
    default_threads = torch.get_num_threads()

    same = _same if args.job == "purify" else _same_scores

    def run(label: str, **kw) -> tuple[float, Path]:
        out = tmp / label.replace(" ", "-")
        inp = src if kw.pop("small", None) is None else tiny
        t = time.perf_counter()
        if args.job == "purify":
            rep = folder.purify_folder(inp, out, device="cpu", batch_size=args.batch_size, progress=False, **kw)
            failed, done = rep.failed, rep.written
        else:
            det = detection.detect_folder(inp, out / "scores.csv", device="cpu", batch_size=args.batch_size,
                                          progress=False, **kw)
            rep, failed, done = det, det.job.failed, det.scored
        dt = time.perf_counter() - t
        assert not failed, rep.summary()
        print(f"{label}: {done} images in {dt:.1f} s", file=sys.stderr)
        return dt, out

    torch.set_num_threads(1)
    t_local1, ref = run("local 1 thread")
    torch.set_num_threads(default_threads)
    t_local, _ = run(f"local {default_threads} threads")
    torch.set_num_threads(1)
    rows.append({"engine": "local", "workers": "1 thread", "seconds": t_local1, "img_s": n / t_local1, "ratio": 1.0,
                 "identical": "baseline"})
    rows.append({"engine": "local", "workers": f"{default_threads} threads", "seconds": t_local, "img_s": n / t_local,
                 "ratio": t_local1 / t_local, "identical": "yes" if same(ref, tmp / f"local-{default_threads}-threads") else "NO"})

    import ray

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    t_init = time.perf_counter() - t
    tiny = _link_tree(files[:4], root, tmp / "tiny")
    t_fixed, _ = run("ray fixed", engine="ray", workers=1, small=True)
    for w in (1, 2):
        dt, out = run(f"ray {w}", engine="ray", workers=w)
        rows.append({"engine": "ray", "workers": f"{w} actor{'s' if w > 1 else ''}", "seconds": dt, "img_s": n / dt,
                     "ratio": t_local1 / dt, "identical": "yes" if same(ref, out) else "NO"})
        if w == 1:
            t_ray1 = dt
    ray.shutdown()
    per_image_ms = ((t_ray1 - t_fixed) - t_local1 * (n - 4) / n) / (n - 4) * 1000
    shutil.rmtree(tmp, ignore_errors=True)
    notes = (f"{n} chips of {shown(root)} (every {max(1, len(sorted(root.rglob('*.jpg'))) // args.n)}-th), batch size "
             f"{args.batch_size}. Times include everything a user waits for except the cluster start-up: "
             f"starting the local 2-CPU Ray cluster took {t_init:.1f} s; a 4-image Ray job (actor start-up, pipeline "
             f"set-up: the engine's fixed cost) took {t_fixed:.1f} s; beyond that, the Ray engine with 1 actor spends "
             f"{per_image_ms:+.1f} ms per image more than the local engine with 1 thread "
             f"({t_local1 / n * 1000:.1f} ms per image). ratio: throughput / the local engine's with 1 thread.")
    table = Table(f"`puface {args.job}`: local vs Ray engine", rows, [
        ("engine", "engine", "{}"), ("workers", "workers", "{}"), ("seconds", "seconds", "{:.1f}"),
        ("img_s", "images/s", "{:.1f}"), ("ratio", "ratio", "{:.2f}x"), ("identical", "outputs identical" if args.job == "purify" else "scores identical", "{}")],
        notes=notes)
    write_tables("engine" if args.job == "purify" else "engine-detect", "Ray engine vs local engine", [table], args.out or Path(__file__).resolve().parent / "results",
                 baseline=f"the local engine, 1 torch thread: {n / t_local1:.1f} images/s")


if __name__ == "__main__":
    main()
