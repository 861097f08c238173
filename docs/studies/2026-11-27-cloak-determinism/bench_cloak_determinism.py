"""Are cloaks bit-identical when remade? `puface cloak` run several times on the same chips, in fresh
processes with 1 or 2 OpenMP threads and two batch sizes; reports how many 8-bit pixel values differ
from the first run and by how much, and how far dlib's batched forward pass is from one image at a time
(docs/RESULTS.md, "The same grid from an empty cache").

    python docs/studies/2026-11-27-cloak-determinism/bench_cloak_determinism.py --data $PUFACE_DATA/johns --images 4 --out cloak-determinism.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def cloak(src: Path, out: Path, threads: int, batch: int, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "puface", "cloak", "--mode", mode, "--surrogate", "dlib-resnet29",
           "--batch-size", str(batch), "--no-progress", str(src), str(out)]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def pixels(folder: Path) -> dict[str, np.ndarray]:
    from puface.io.images import read_image

    return {str(p.relative_to(folder)): read_image(p).astype(np.int16) for p in sorted(folder.rglob("*.png"))}


def forward_batch_gap(files: list[Path]) -> float:
    """Largest |dlib-resnet29(batch) - dlib-resnet29(one image at a time)| over the embedding values."""
    import torch

    from puface.data.loading import load_images
    from puface.models import load_embedder

    x, _, _ = load_images(files, size=150)
    model = load_embedder("dlib-resnet29").eval()
    with torch.no_grad():
        batch = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    return float((batch - single).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="identity folders; the first --images files are used")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--mode", default="high")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = ap.parse_args()

    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.images]
    runs = [("1 thread, batch 4", 1, 4), ("1 thread, batch 4, again", 1, 4), ("2 threads, batch 4", 2, 4),
            ("1 thread, batch 1", 1, 1)]
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in" / "person"
        src.mkdir(parents=True)
        for i, f in enumerate(files):
            shutil.copy(f, src / f"{i:02d}{f.suffix}")
        outs = {}
        for label, threads, batch in runs:
            out = Path(tmp) / label.replace(" ", "_").replace(",", "")
            cloak(src.parent, out, threads, batch, args.mode)
            outs[label] = pixels(out)
    ref = outs[runs[0][0]]
    rows = []
    for label, threads, batch in runs[1:]:
        diff = np.concatenate([np.abs(outs[label][k] - ref[k]).ravel() for k in ref])
        rows.append({"run": label, "vs": runs[0][0], "values": int(diff.size), "differing": int((diff > 0).sum()),
                     "max_levels": int(diff.max()), "images": len(ref)})
        print(f"{label:28s} vs {runs[0][0]}: {rows[-1]['differing']:>7d} of {diff.size} values differ, max {rows[-1]['max_levels']} levels")
    gap = forward_batch_gap(files)
    print(f"dlib-resnet29 embedding, batch of {len(files)} vs one at a time: max difference {gap:.3g}")
    if args.out:
        args.out.write_text(json.dumps({"mode": args.mode, "images": [str(f) for f in files], "rows": rows,
                                        "dlib_forward_batch_vs_single_max_abs": gap}, indent=1) + "\n")


if __name__ == "__main__":
    main()
