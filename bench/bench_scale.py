"""Per-file costs of the folder jobs apart from the network: start-up and resume on large trees.

    python bench/bench_scale.py [--files 10000,50000,200000] [--work DIR] [--name scale]

Builds, under --work (default: a temporary folder, removed at the end), for each size N a tree of N chips in
identity folders of 50-500 files (one in five nested three deep): hard links to copies of the johns chips, so a
million files take no space; a second such tree as a finished output; a complete scores CSV for `puface detect`
(the shipped detector's columns). Then measures, each in its own process (wall seconds, CPU seconds, peak memory):
planning a fresh job (`plan_mirror`: listing, output checks, one output path per file), planning a fresh `puface
cloak` (the same, outputs renamed and checked for two inputs of one output name; the import of torch included),
`puface purify` resumed over the finished output (every image done: nothing for the network), `puface detect` resumed
over the complete CSV (every image scored). Writes bench/results/<name>.{md,csv}. With --world-size W the two CLI jobs run as rank 0 of W
processes (what one process of a multi-process job costs), and the plan measured is that rank's.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchtables import Table, write_tables
from puface.data.johns import fetch_johns

LINKS_PER_COPY = 50_000  # under ext4's 65,000 links per file
#: Planning a fresh job as rank 0 of {w} processes (a puface whose `plan_mirror` takes no rank: the whole plan, then
#: rank 0's share of it).
PLAN = """import sys
from puface.io.jobs import plan_mirror, shard
try:
    jobs = plan_mirror(sys.argv[1], sys.argv[2], rank=0, world_size={w})
except TypeError:
    jobs = shard(plan_mirror(sys.argv[1], sys.argv[2]), 0, {w})
assert len(jobs) == {share}
"""
#: Planning a fresh `puface cloak` as rank 0 of {w} processes: output names renamed to .png and checked for two inputs
#: of one output over every process's files (a puface whose `plan_mirror` takes no `clash`: the whole plan checked, then
#: rank 0's share of it, as `cloak_folder` did). Includes the import of torch (the attacks' module).
CLOAK_PLAN = """import sys
from puface.attacks.folder import output_namer
from puface.io.jobs import plan_mirror, shard
rename = output_namer("fawkes")
try:
    jobs = plan_mirror(sys.argv[1], sys.argv[2], rename=rename, rank=0, world_size={w}, clash="rename one")
except TypeError:
    jobs, seen = plan_mirror(sys.argv[1], sys.argv[2], rename=rename), set()
    for j in jobs:
        assert j.dst not in seen
        seen.add(j.dst)
    jobs = shard(jobs, 0, {w})
assert len(jobs) == {share}
"""


def build_tree(root: Path, n: int, chips: list[Path], pool: Path) -> None:
    """`n` files under `root` as hard links to copies of `chips` in `pool` (made as needed)."""
    rnd = random.Random(0)
    copies: list[Path] = []
    made = ident = 0
    while made < n:
        k = min(rnd.randint(50, 500), n - made)
        d = root / f"id{ident:06d}" / ("a/bb/ccc" if ident % 5 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        for j in range(k):
            c = (made + j) // LINKS_PER_COPY
            while len(copies) <= c:
                copies.append(pool / f"c{len(copies)}{chips[len(copies) % len(chips)].suffix}")
                shutil.copy(chips[len(copies) % len(chips)], copies[-1])
            os.link(copies[c], d / f"img_{j:05d}.jpg")
        made += k
        ident += 1


def write_scores(root: Path, path: Path, fields: list[str]) -> None:
    """A complete scores CSV for every file under `root` (scores drawn at random, decided at 1.8286)."""
    rnd = random.Random(1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for top, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                s = rnd.uniform(0.5, 2.2)
                row = {"path": os.path.relpath(os.path.join(top, name), root), "score": f"{s:.9g}",
                       "cloaked": int(s > 1.8285597562789917), "storage": "jpeg:quality=93,subsampling=4:2:0", "note": ""}
                w.writerow([row.get(k, "0.5") for k in fields])


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd` under GNU time: wall and CPU seconds and peak resident memory (MB) of that process alone (a
    child's own peak: this process, with torch loaded, would lend a forked child its high-water mark)."""
    time_bin = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"
    if not Path(time_bin).is_file():
        raise SystemExit("needs GNU time (/usr/bin/time): apt-get install time")
    p = subprocess.run([time_bin, "-f", "@@ %e %U %S %M", *cmd], cwd=cwd, capture_output=True, text=True)
    last = [line for line in p.stderr.splitlines() if line.startswith("@@ ")]
    if p.returncode != 0 or not last:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{(p.stdout + p.stderr)[-2000:]}")
    wall, user, system, kb = last[-1].split()[1:]
    return {"wall_s": float(wall), "cpu_s": float(user) + float(system), "peak_mb": int(kb) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="10000,50000,200000", help="tree sizes, comma-separated")
    ap.add_argument("--work", type=Path, default=None, help="where the trees go (default: a temporary folder)")
    ap.add_argument("--name", default="scale", help="results name: bench/results/<name>.{md,csv}")
    ap.add_argument("--world-size", type=int, default=1, help="run the jobs as rank 0 of this many processes")
    args = ap.parse_args()
    sizes = [int(s) for s in args.files.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="puface-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    chips = sorted(fetch_johns().glob("*/*.jpg"))[:8]
    from puface.detection import load_detector
    from puface.detection.folder import feature_columns

    fields = ["path", "score", "cloaked", *feature_columns(load_detector()), "storage", "note"]
    py = [sys.executable]
    w = args.world_size
    ranks = ["--rank", "0", "--world-size", str(w)] if w > 1 else []
    rows = []
    try:
        for n in sizes:
            src, done = work / f"in{n}", work / f"out{n}"
            if not src.exists():  # inputs and outputs link to separate copies: an output is never an input's file
                for tree, pool in ((src, work / f"pool-in{n}"), (done, work / f"pool-out{n}")):
                    pool.mkdir(exist_ok=True)
                    build_tree(tree, n, chips, pool)
            write_scores(src, work / f"scores{n}.csv", fields)
            plan = PLAN.format(w=w, share=len(range(0, n, w)))
            cloak_plan = CLOAK_PLAN.format(w=w, share=len(range(0, n, w)))
            for label, cmd in (
                ("plan a fresh job (plan_mirror)", [*py, "-c", plan, str(src), str(work / f"fresh{n}")]),
                ("plan a fresh cloak (with torch)", [*py, "-c", cloak_plan, str(src), str(work / f"fresh{n}")]),
                ("purify, resumed, all done", [*py, "-m", "puface", "purify", str(src), str(done), "--device", "cpu",
                                               "--no-progress", *ranks]),
                ("detect, resumed, all scored", [*py, "-m", "puface", "detect", str(src), "--out",
                                                 str(work / f"scores{n}.csv"), "--device", "cpu", "--no-progress",
                                                 *ranks]),
            ):
                (done / "purify_config.json").unlink(missing_ok=True)
                (work / f"scores{n}-run.json").unlink(missing_ok=True)
                r = measure(cmd, work)
                rows.append({"files": n, "world_size": w, "job": label, **r})
                print(f"{n:>9} {label:32s} {r['wall_s']:7.1f} s wall {r['cpu_s']:7.1f} s CPU {r['peak_mb']:7.0f} MB",
                      flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    table = Table("Start-up and resume costs by tree size", rows,
                  [("files", "files", "{:,}"), ("world_size", "processes", "{}"), ("job", "job", "{}"),
                   ("wall_s", "wall s", "{:.1f}"), ("cpu_s", "CPU s", "{:.1f}"), ("peak_mb", "peak MB", "{:.0f}")],
                  notes="Each job in its own process (with processes above 1: rank 0 of them); the two CLI jobs include the import of torch and the loading "
                        "of the models (about 2 s CPU and 250 MB at any size).")
    write_tables(args.name, "Per-file costs of the folder jobs at scale", [table])


if __name__ == "__main__":
    main()
