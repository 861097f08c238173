"""Face model quality and CPU cost; writes bench/results/models.{md,csv}.

For each built-in embedder: leave-one-out 1-NN identification accuracy (cosine) and verification ROC
AUC over all pairs, on the johns chips and on lfw-chips150 (capped images per person, seeded), plus
CPU milliseconds per image for forward and for forward+backward w.r.t. the input at batch 16.

    python bench/bench_models.py --lfw lfw-chips150 --cap 20 --seed 0 --threads 2

--lfw is a folder or a data set name ($PUFACE_DATA/<name>); without it only johns is measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchtables import Table, write_tables
from puface.data.datasets import resolve_data_root
from puface.data.johns import fetch_johns
from puface.data.layout import scan_identities
from puface.data.loading import load_images
from puface.models import list_embedders
from puface.models.registry import load_embedder


def nn_and_auc(emb: torch.Tensor, labels: list[str]) -> tuple[float, float]:
    """Leave-one-out 1-NN accuracy and all-pairs verification AUC of L2-normalised embeddings (N, D)."""
    y = np.array(labels)
    sim = (emb @ emb.T).numpy().astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    nn_acc = float((y[sim.argmax(1)] == y).mean())
    iu = np.triu_indices(len(y), 1)
    same = (y[:, None] == y[None, :])[iu]
    auc = float(roc_auc_score(same, sim[iu]))
    return nn_acc, auc


def time_ms(emb, size: int, backward: bool, batch: int = 16, reps: int = 5) -> float:
    """Median wall ms per image of a forward (and backward w.r.t. the input) pass at `batch`."""
    x0 = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(reps + 1):
        x = x0.clone().requires_grad_(backward)
        t = time.perf_counter()
        if backward:
            emb(x).sum().backward()
        else:
            with torch.no_grad():
                emb(x)
        if i:  # first run warms up
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)) / batch


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """fp32 n x n matmul rate (GFLOP/s, best of `reps`): the machine baseline the timings are read against."""
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw", default=None, help="lfw-chips150 folder or data set name (skipped when absent)")
    ap.add_argument("--cap", type=int, default=20, help="images per person on LFW (seeded choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default=",".join(list_embedders()), help="registry names or model files (a path, or a file name in $PUFACE_MODELS)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the tables go (default bench/results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    sets = {"johns": scan_identities(fetch_johns())}
    if args.lfw:
        sets["lfw-chips150"] = scan_identities(resolve_data_root(args.lfw), min_images=2, max_per_identity=args.cap, seed=args.seed)
    loaded = {}
    for name, ds in sets.items():
        imgs, kept, errors = load_images([im.path for im in ds.images], size=150, progress=True, desc=name)
        loaded[name] = (imgs, [ds.images[i].identity for i in kept])
        print(f"{name}: {len(kept)} images, {len(set(loaded[name][1]))} identities, {len(errors)} unreadable")

    results = []
    gflops = matmul_gflops()
    print(f"baseline: fp32 2048x2048 matmul {gflops:.1f} GFLOP/s ({args.threads} threads)")
    for model in args.models.split(","):
        emb = load_embedder(model)
        row = {"model": model, "input": f"{emb.input_size[0]}x{emb.input_size[1]}", "dim": emb.embedding_dim}
        for name, (imgs, labels) in loaded.items():
            t = time.perf_counter()
            e = emb.embed(imgs, batch_size=32)
            row[f"{name}_embed_s"] = time.perf_counter() - t
            row[f"{name}_nn"], row[f"{name}_auc"] = nn_and_auc(e, labels)
        row["fwd_ms"] = time_ms(emb, 150, backward=False)
        row["fwdbwd_ms"] = time_ms(emb, 150, backward=True)
        results.append(row)
        print(row)

    names = list(loaded)
    for r in results:
        r["fwdbwd_over_fwd"] = r["fwdbwd_ms"] / r["fwd_ms"]
    cols = [("model", "model", "{}"), ("input", "input", "{}"), ("dim", "dim", "{}")]
    for n in names:
        cols += [(f"{n}_nn", f"{n} 1-NN", "{:.4f}"), (f"{n}_auc", f"{n} AUC", "{:.4f}")]
    cols += [("fwd_ms", "fwd ms/img", "{:.1f}"), ("fwdbwd_ms", "fwd+bwd ms/img", "{:.1f}"), ("fwdbwd_over_fwd", "fwd+bwd / fwd", "{:.2f}")]
    sizes = "; ".join(f"{n}: {len(loaded[n][0])} images, {len(set(loaded[n][1]))} identities" for n in names)
    table = Table("Leave-one-out 1-NN identification (cosine), all-pairs verification ROC AUC, CPU cost", results, cols,
                  notes=f"Data: {sizes}" + (f" (lfw-chips150: identities with >= 2 chips, at most {args.cap} each, seed "
                                             f"{args.seed})" if "lfw-chips150" in loaded else "") + ". "
                        "Timings: median wall ms per image at batch 16, 150x150 input; fwd+bwd = backward with respect to the input.")
    write_tables("models", "Face models: quality and CPU cost", [table], args.out_dir or Path(__file__).parent / "results",
                 baseline=f"fp32 2048x2048 matmul {gflops:.1f} GFLOP/s at {args.threads} threads.")
    print(table.markdown())


if __name__ == "__main__":
    main()
