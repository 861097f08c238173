"""Evaluation efficiency: what the protocol's sharing saves.

Measured on real data (dlib ResNet-29 embeddings of LFW chips, or johns when the LFW chips are absent),
against a baseline run in the same process:

Shared embeddings. The protocol embeds the clean test set once per victim and the (defended)
natural training set once per defense; only the protected user's rows are re-embedded per user.
Baseline: the straightforward loop that embeds the whole training and test set for every run.
Same grid (users x defenses, nn trainer), same predictions required.

    python bench/bench_evaluation.py [--data DIR_OR_NAME] [--users 4] [--identities 60] [--threads 2] [--json OUT]

Writes bench/results/evaluation.{md,csv}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchtables import Table, write_tables
from puface.data.datasets import resolve_data_root
from puface.defenses import create_defense
from puface.evaluation.data import EvaluationData, choose_users
from puface.evaluation.metrics import protocol_scores
from puface.evaluation.protocol import AttackSpec, Protocol, TrainerSpec
from puface.evaluation.trainers import create_trainer
from puface.models.registry import create_embedder
from puface.utils.images import to_float, to_uint8


def naive_grid(data, users, defenses, emb, cloak):
    """Embed everything for every run (the baseline)."""
    rows = []
    for d_label, d in defenses.items():
        for u in users:
            rows_u = data.train.rows_of(u)
            x = data.train.images.clone()
            x[torch.from_numpy(rows_u)] = cloak[u]
            xd = torch.cat([to_uint8(d(to_float(x[i : i + 64]))) for i in range(0, len(x), 64)])
            tr = emb.embed(to_float(xd))
            te = emb.embed(to_float(data.test.images))
            pred = create_trainer("nn", emb).fit_embeddings(tr, data.train.labels).predict_embeddings(te)
            rows.append((d_label, u, protocol_scores(pred, data.test.labels, u)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="lfw-chips150", help="identity folders or a data set name (johns when not found)")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--identities", type=int, default=60, help="use the first N identities with >= 10 images (sorted)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--out-dir", type=Path, default=None, help="where the tables go (default bench/results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        root = resolve_data_root(args.data)
    except Exception:
        root = resolve_data_root("johns")
    t0 = time.perf_counter()
    from puface.data.layout import scan_identities

    ds = scan_identities(root, min_images=10, max_per_identity=20, seed=0)
    data = EvaluationData.prepare(ds.subset(ds.identities[: args.identities]), seed=0)
    users = choose_users(data, count=min(args.users, len(data.identities)), seed=0)
    print(f"data {root}: {len(data.identities)} identities, {len(data.train)} train / {len(data.test)} test; "
          f"{len(users)} users; loaded in {time.perf_counter() - t0:.1f} s")
    emb = create_embedder("dlib-resnet29")
    defenses = {"none": create_defense("none"), "jpeg-q75": create_defense("jpeg", quality=75)}

    # A fixed "cloak" for both paths: the user's images after a strong blur (deterministic, cheap).
    blur = create_defense("blur", sigma=2.0)
    cloak = {u: to_uint8(blur(to_float(data.train.images[data.train.rows_of(u)]))) for u in users}

    class Fixed:
        name = "blur2"

        def __init__(self):
            self.calls = 0

        def __call__(self, x):
            # map each input image back to its user's precomputed cloak by content
            out = []
            for im in to_uint8(x):
                for u in users:
                    rows = data.train.rows_of(u)
                    hit = [j for j, r in enumerate(rows) if torch.equal(data.train.images[r], im)]
                    if hit:
                        out.append(cloak[u][hit[0]])
                        break
            return to_float(torch.stack(out))

    t0 = time.perf_counter()
    naive = naive_grid(data, users, defenses, emb, cloak)
    t_naive = time.perf_counter() - t0

    t0 = time.perf_counter()
    proto = Protocol(data, users, [AttackSpec("blur2", Fixed())], {"dlib": emb}, [TrainerSpec("nn", "nn")], defenses,
                     cache=None, cloak_cache=None, progress=False)
    shared = proto.run()
    t_shared = time.perf_counter() - t0
    same = all(
        abs(a[2]["asr"] - b["asr"]) < 1e-12 and abs(a[2]["normal_acc"] - b["normal_acc"]) < 1e-12
        for a, b in zip(sorted(naive, key=lambda r: (r[0], r[1])), sorted(shared, key=lambda r: (r["defense"], r["user"])))
    )
    print(f"[1] grid {len(users)} users x {len(defenses)} defenses, nn: naive {t_naive:.1f} s, shared {t_shared:.1f} s "
          f"-> {t_naive / t_shared:.1f}x faster; identical scores: {same}")

    out = {
        "data": str(root), "identities": len(data.identities), "train": len(data.train), "test": len(data.test),
        "users": len(users), "threads": args.threads,
        "shared": {"naive_s": t_naive, "shared_s": t_shared, "speedup": t_naive / t_shared, "identical": same},
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    sh = out["shared"]
    rows = [
        {"what": f"grid of {len(users)} users x {len(defenses)} defenses (none, JPEG 75), 1-NN: embed everything per run vs the "
                 "protocol (test set embedded once per victim, natural training set once per defense, only the user's rows per run)",
         "baseline": f"{sh['naive_s']:.1f} s", "puface": f"{sh['shared_s']:.1f} s", "ratio": sh["speedup"],
         "same": "identical ASR and normal accuracy in all runs" if sh["identical"] else "SCORES DIFFER"},
    ]
    table = Table(f"{root.name}: {len(data.identities)} identities, {len(data.train)} training / {len(data.test)} test images, "
                  "dlib ResNet-29, a fixed stand-in cloak (the user's images blurred, sigma 2)", rows,
                  [("what", "what", "{}"), ("baseline", "baseline", "{}"), ("puface", "puface", "{}"),
                   ("ratio", "ratio (x faster)", "{:.1f}"), ("same", "same answers", "{}")])
    write_tables("evaluation", "Evaluation: what sharing work across runs saves", [table],
                 args.out_dir or Path(__file__).parent / "results",
                 baseline="each row's baseline is the straightforward computation, timed in the same process.")


if __name__ == "__main__":
    main()
