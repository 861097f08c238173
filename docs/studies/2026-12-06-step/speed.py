"""Does `puface purify`'s default step (1.5) cost time? The folder pipeline at step 1 and at the default, alternated
in one process (best of --repeats each), on every image under DATA (aligned chips), one torch thread by default.

    python docs/studies/2026-12-06-step/speed.py johns/ [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from puface.purifier import Purifier
from puface.purifier.folder import purify_folder
from puface.purifier.model import job_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    p = Purifier.load()
    best = {1.0: float("inf"), None: float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for step in best:
                t = time.perf_counter()
                rep = purify_folder(a.data, Path(tmp) / f"s{step}-{r}", purifier=p, device="cpu", batch_size=16,
                                    progress=False, step=step)
                best[step] = min(best[step], time.perf_counter() - t)
    n = rep.written
    s1, sd = n / best[1.0], n / best[None]
    print(f"{n} images, {a.threads} thread(s), best of {a.repeats}: step 1 {s1:.1f} images/s, default step "
          f"{job_step(p)} {sd:.1f} images/s (ratio {sd / s1:.3f})")


if __name__ == "__main__":
    main()
