"""Fill the cloak cache for an experiment config ahead of `puface reproduce`, one attack at a time.

`puface reproduce` cloaks each protected user's training images on first use and caches them; on a
machine with spare cores it is faster to cloak the attacks in parallel processes first:

    OMP_NUM_THREADS=1 python tools/prefill_cloaks.py lfw fawkes-mid --data DIR &
    OMP_NUM_THREADS=1 python tools/prefill_cloaks.py lfw fawkes-high-sface --data DIR &

The cloaks are the same bytes `reproduce` makes (same attack objects, seeds and cache keys).
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("labels", nargs="+", help="attack labels of the config to cloak")
    ap.add_argument("--data", default=None, help="identity folders (default: the config's [data] root)")
    ap.add_argument("--seed", type=int, default=None, help="default: the config's first seed")
    ap.add_argument("--reverse", action="store_true", help="users from the last one backwards (for a second process)")
    args = ap.parse_args()

    from puface.attacks.cache import CloakCache
    from puface.data.datasets import resolve_data_root
    from puface.experiments import load_config
    from puface.experiments.build import build_attack, draw_users

    cfg = load_config(args.config)
    seed = cfg.seeds[0] if args.seed is None else args.seed
    # as `puface reproduce` draws them, except that users a purifier of the config trained on are not
    # excluded (no evaluation grid here does that: its protected users are held out by count)
    data, users = draw_users(cfg, resolve_data_root(args.data or cfg.data["root"]), seed)
    if args.reverse:
        users = users[::-1]
    cache = CloakCache()
    by_label = {a.label: a for a in cfg.attacks}
    for label in args.labels:
        if label not in by_label:
            raise SystemExit(f"{args.config}: no attack labelled {label!r} (have {', '.join(by_label)})")
        spec = build_attack(by_label[label], seed, None, cfg.run.get("cloak_batch_size"))  # as the runner does
        t0, n = time.perf_counter(), 0
        for u in users:
            paths = [data.train.paths[i] for i in data.train.rows_of(u)]
            _, kept, _ = cache.cloak(spec.attack, paths, batch_size=spec.batch_size, progress=False, size=(150, 150))
            n += len(kept)
            print(f"{label}: {u}: {len(kept)} images ({time.perf_counter() - t0:.0f} s so far)", flush=True)
        print(f"{label}: {n} images in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
