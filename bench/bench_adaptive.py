"""What an adaptive attacker spends: seconds per 150 px chip for Fawkes high made plainly, through the shipped
purifier, through {photo, purifier} at once (the attacker of a `views` defender) and through an ensemble of K
published purifiers, each timed in the same process on the same chips; and what the defender spends (purifying
one chip). Writes bench/results/adaptive-cost.{md,csv}.

    python bench/bench_adaptive.py --data johns --n 4 --threads 1 [--published runs/published] [--embedder sface]

--embedder: the attacker's face model (default dlib-resnet29); another one writes adaptive-cost-NAME.{md,csv}.

--published: the folder `tools/published_purifiers.sh` fills (v1-v6); without it the ensemble rows are skipped.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchtables import Table, write_tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="johns", help="identity folders or a data set name")
    ap.add_argument("--n", type=int, default=4, help="chips to cloak per row")
    ap.add_argument("--steps", type=int, default=0, help="Fawkes steps (0: the high mode's 150)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--published", type=Path, default=None, help="folder with v1..v6.safetensors (ensemble rows)")
    ap.add_argument("--embedder", default="dlib-resnet29", help="the attacker's face model (surrogate)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the tables go (default bench/results)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from puface.attacks import create_attack
    from puface.data.datasets import resolve_data_root
    from puface.data.layout import scan_identities
    from puface.data.loading import load_images
    from puface.defenses import create_defense

    root = resolve_data_root(args.data)
    paths = [im.path for im in scan_identities(root).images][: args.n]
    x, _, _ = load_images(paths, size=150)
    knobs = dict(mode="custom", th=0.017, lr=15.0, steps=args.steps or 150)
    rows_spec = [("plain", {}), ("through the shipped purifier (b, e)", {"through": "default"}),
                 ("through {photo, shipped purifier}, weakest view (e for views)", {"through": ["none", "default"], "ensemble": "min"})]
    if args.published:
        pub = [str(args.published / f"v{k}.safetensors") for k in range(1, 6)]
        rows_spec += [("through 2 published purifiers v4, v5 (c, K=2)", {"through": pub[3:5]}),
                      ("through 5 published purifiers v1-v5 (c, K=5)", {"through": pub})]
    rows = []
    base = None
    for label, extra in rows_spec:
        atk = create_attack("fawkes", embedders=[args.embedder], seed=0, device="cpu", batch_size=args.n, **knobs, **extra)
        atk(x[:1])  # warm-up: weights loaded, first-call costs paid
        t0 = time.perf_counter()
        atk(x)
        s = (time.perf_counter() - t0) / len(x)
        base = base or s
        rows.append({"attack": label, "s_per_image": s, "ratio": s / base, "steps": knobs["steps"]})
        print(rows[-1], flush=True)
    d = create_defense("puface")
    d(x[:1])
    t0 = time.perf_counter()
    for _ in range(3):
        d(x)
    purify_s = (time.perf_counter() - t0) / (3 * len(x))
    rows.append({"attack": "defender: purify one chip (the shipped purifier)", "s_per_image": purify_s, "ratio": purify_s / base,
                 "steps": 1})
    table = Table(f"Fawkes high against {args.embedder} ({knobs['steps']} steps), {len(x)} chips of {root.name}, "
                  f"{args.threads} thread(s); ratio to the plain attack in the same process", rows,
                  [("attack", "attacker's row", "{}"), ("s_per_image", "s / chip", "{:.2f}"), ("ratio", "x plain", "{:.1f}")])
    name = "adaptive-cost" if args.embedder == "dlib-resnet29" else f"adaptive-cost-{Path(args.embedder).stem}"
    write_tables(name, "Adaptive attacks: what the attacker and the defender spend", [table],
                 args.out_dir or Path(__file__).parent / "results", baseline="plain Fawkes high on the same chips.")
    print(table.markdown())


if __name__ == "__main__":
    main()
