"""How much one Fawkes cloak depends on its random start: the same images cloaked with several seeds.

Fawkes v1.0.2 starts from a modifier of uniform noise of size 1e-4 and then takes Adadelta steps at a
large learning rate (mid: lr 20, 75 steps; high: lr 15, 150 steps). This script cloaks a seeded random
sample of the protected users' training photos (not chosen by how their cloaks came out) once per
attack seed and reports, per image and mode, the spread of the cloak's effect on the surrogate:

- shift: L2 distance between the cloaked and the clean embedding (unit vectors; 0 = unchanged);
- weak: the cloak's embedding stayed nearer its clean photo than that photo is to the nearest training
  photo of any other person (as in fawkes_geometry_stats.py), so a 1-NN victim still matches them.

With `--cached-weak LABEL`, the photos are instead every training photo of the draw whose cached cloak
of that config attack (made by `puface reproduce`) came out weak: is a weak cloak a property of the
photo, or of its random start?

It also re-runs seed 0 of each mode with another number of CPU threads: the same seed, the same
settings, only the order of floating-point sums differs.

    OMP_NUM_THREADS=1 python docs/studies/2026-11-27-fawkes-weak-cloaks/fawkes_restart_spread.py lfw-fawkes-cap \\
        --data $PUFACE_DATA/lfw-chips150 --seed 1 --images 8 --attack-seeds 0,1,2,3,4
    OMP_NUM_THREADS=1 python docs/studies/2026-11-27-fawkes-weak-cloaks/fawkes_restart_spread.py lfw-fawkes-cap \\
        --data $PUFACE_DATA/lfw-chips150 --seed 1 --cached-weak fawkes-mid-sface-square112-project --modes mid
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="experiment config whose users are sampled (its [data] and draw)")
    ap.add_argument("--data", default=None, help="identity folders (default: the config's [data] root)")
    ap.add_argument("--seed", type=int, default=None, help="user draw (default: the config's first seed)")
    ap.add_argument("--images", type=int, default=8, help="how many training photos to sample")
    ap.add_argument("--sample-seed", type=int, default=0, help="seed of the photo sample")
    ap.add_argument("--cached-weak", default=None, metavar="LABEL",
                    help="instead of a sample: the photos whose cached cloak of this config attack is weak")
    ap.add_argument("--attack-seeds", default="0,1,2,3,4", help="comma-separated Fawkes seeds")
    ap.add_argument("--modes", default="mid,high")
    ap.add_argument("--surrogate", default="sface")
    ap.add_argument("--geometry", default="square112")
    ap.add_argument("--cap", default="project")
    ap.add_argument("--other-threads", type=int, default=2, help="thread count of the seed-0 re-run")
    args = ap.parse_args()

    import torch

    from fawkes_geometry_stats import nearest_other_person  # this folder is on sys.path when this script runs
    from puface.attacks.cache import CloakCache
    from puface.attacks.fawkes import Fawkes
    from puface.data.loading import load_images
    from puface.data.datasets import resolve_data_root
    from puface.experiments import load_config
    from puface.experiments.build import build_attack, draw_users
    from puface.models.registry import create_embedder

    cfg = load_config(args.config)
    seed = cfg.seeds[0] if args.seed is None else args.seed
    data, users = draw_users(cfg, resolve_data_root(args.data or cfg.data["root"]), seed)
    emb = create_embedder(args.surrogate)
    rows = [i for u in users for i in data.train.rows_of(u)]
    paths = [data.train.paths[i] for i in rows]
    x, kept, errors = load_images(paths, size=(150, 150))
    assert not errors and len(kept) == len(paths)
    clean = emb.embed(x, batch_size=32)
    everyone = emb.embed(data.train.images.float() / 255, batch_size=32)
    nearest_other = nearest_other_person(clean, data.train.labels[rows], everyone, data.train.labels)

    if args.cached_weak:
        by_label = {a.label: a for a in cfg.attacks}
        spec = build_attack(by_label[args.cached_weak], seed, "cpu")
        args.geometry, args.cap = spec.attack.settings.geometry, spec.attack.settings.cap  # re-run it as it was made
        cloaked, kept, errors = CloakCache(cached_only=True).cloak(spec.attack, paths, progress=False, size=(150, 150))
        assert not errors and len(kept) == len(paths)
        cached_shift = (emb.embed(cloaked, batch_size=32) - clean).norm(dim=1)
        chosen = (cached_shift < nearest_other).nonzero().flatten().tolist()
        print(f"cached {args.cached_weak} (seed {seed}): {len(chosen)} of {len(rows)} cloaks weak on {args.surrogate}: "
              + ", ".join(f"{Path(paths[i]).name} (shift {cached_shift[i]:.2f})" for i in chosen))
    else:
        chosen = sorted(random.Random(args.sample_seed).sample(range(len(rows)), args.images), key=rows.__getitem__)
    if not chosen:
        raise SystemExit("no photos to cloak")
    paths, x, clean, nearest_other = [paths[i] for i in chosen], x[chosen], clean[chosen], nearest_other[chosen]
    seeds = [int(s) for s in args.attack_seeds.split(",")]
    threads = torch.get_num_threads()

    def shifts(mode: str, attack_seed: int) -> torch.Tensor:
        attack = Fawkes(mode, [emb], seed=attack_seed, geometry=args.geometry, cap=args.cap)
        cloaked = attack.run(x, quantize_output=True).images
        return (emb.embed(cloaked) - clean).norm(dim=1)

    picked = f"weak in cached {args.cached_weak}" if args.cached_weak else f"sample seed {args.sample_seed}"
    print(f"{len(paths)} photos of the seed-{seed} users ({picked}), surrogate {args.surrogate}, "
          f"geometry {args.geometry}, cap {args.cap}, attack seeds {args.attack_seeds}, {threads} thread(s)\n")
    summary = []
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        s = torch.stack([shifts(mode, k) for k in seeds], 1)  # (images, seeds)
        torch.set_num_threads(args.other_threads)
        try:
            s0_other = shifts(mode, seeds[0])
        finally:
            torch.set_num_threads(threads)
        weak = s < nearest_other[:, None]
        print(f"### Fawkes {mode} ({time.perf_counter() - t0:.0f} s)\n")
        print("| photo | nearest other person | shift per seed | min - max | weak runs | seed 0 with "
              f"{args.other_threads} threads |")
        print("|---|---|---|---|---|---|")
        for i, p in enumerate(paths):
            per_seed = " ".join(f"{v:.2f}" for v in s[i].tolist())
            print(f"| {Path(p).name} | {nearest_other[i]:.2f} | {per_seed} | {s[i].min():.2f} - {s[i].max():.2f} | "
                  f"{int(weak[i].sum())} of {len(seeds)} | {s0_other[i]:.2f} |")
        summary.append((mode, weak.float().mean().item(), int(weak.any(1).sum()), (s0_other - s[:, 0]).abs().max().item()))
        print()
    print("| mode | weak share of all runs | photos weak in at least one run | largest shift change, seed 0 re-run on other threads |")
    print("|---|---|---|---|")
    for mode, share, n_any, change in summary:
        print(f"| {mode} | {share:.1%} | {n_any} of {len(paths)} | {change:.2f} |")


if __name__ == "__main__":
    main()
