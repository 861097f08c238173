"""Output claims: what a job's start and end cost in the lock file (`puface.io.jobs.claim_output`).

    python bench/bench_claims.py [--ranks 16] [--rounds 10] [--alone 300]

`--ranks` processes (one per rank of one world size) claim one output folder at the same instant, hold it for
0.1 s and release it, `--rounds` times; then one process claims and releases the whole folder `--alone` times
in a loop (no other process). Reports the claim and the release time per start (median, 90th percentile and
largest, ms) and how many starts were refused (there should be none). Writes bench/results/claims.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchtables import Table, write_tables

_RANK = """
import json, sys, time
from pathlib import Path
from puface.io.jobs import claim_output
from puface.utils.errors import PufaceError
out, rank, world, t0, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
got = []
for k in range(rounds):
    start = t0 + 0.25 * k
    time.sleep(max(0.0, start - time.time()))
    a = time.perf_counter()
    try:
        c = claim_output(out, rank, world)
    except PufaceError:
        got.append(None)
        continue
    b = time.perf_counter()
    time.sleep(max(0.0, start + 0.1 - time.time()))
    d = time.perf_counter()
    c()
    got.append((b - a, time.perf_counter() - d))
print(json.dumps(got))
"""


def _spread(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": 1e3 * statistics.median(xs), "p90_ms": 1e3 * xs[int(0.9 * (len(xs) - 1))],
            "max_ms": 1e3 * xs[-1]}


def together(ranks: int, rounds: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        t0 = time.time() + 3.0  # every process imported and waiting
        procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(out), str(r), str(ranks), str(t0), str(rounds)],
                                  stdout=subprocess.PIPE, text=True) for r in range(ranks)]
        runs = [json.loads(p.communicate()[0]) for p in procs]
        left = (out / ".puface.lock").exists()
    done = [x for run in runs for x in run if x is not None]
    refused = sum(x is None for run in runs for x in run)
    rows = []
    for what, k in (("claim", 0), ("release", 1)):
        rows.append({"step": what, "starts": len(done) + refused, "refused": refused, "lock_file_left": left,
                     **_spread([x[k] for x in done])})
    return rows


def alone(n: int) -> list[dict]:
    from puface.io.jobs import claim_output

    with tempfile.TemporaryDirectory() as tmp:
        out, claims, releases = Path(tmp) / "out", [], []
        for _ in range(n):
            a = time.perf_counter()
            c = claim_output(out)
            b = time.perf_counter()
            c()
            claims.append(b - a)
            releases.append(time.perf_counter() - b)
    return [{"step": "claim", "starts": n, "refused": 0, **_spread(claims)},
            {"step": "release", "starts": n, "refused": 0, **_spread(releases)}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=16, help="processes starting together, one per rank (16)")
    ap.add_argument("--rounds", type=int, default=10, help="times they start together (10)")
    ap.add_argument("--alone", type=int, default=300, help="claims of one process in a loop (300)")
    args = ap.parse_args()
    cols = [("step", "step", "{}"), ("starts", "starts", "{}"), ("refused", "refused", "{}"),
            ("median_ms", "median ms", "{:.3f}"), ("p90_ms", "p90 ms", "{:.3f}"), ("max_ms", "max ms", "{:.3f}")]
    tables = [
        Table(f"{args.ranks} ranks of one world size starting together, {args.rounds} times", together(
            args.ranks, args.rounds), cols + [("lock_file_left", "lock file left", "{}")], csv="together"),
        Table(f"One process claiming the whole folder, {args.alone} times in a loop", alone(args.alone), cols,
              csv="alone"),
    ]
    for t in tables:
        print(t.markdown(), "\n")
    write_tables("claims", "Output claims: start and end cost", tables)


if __name__ == "__main__":
    main()
