"""Image statistics of cached Fawkes cloaks of an experiment's protected users, in both geometries.

For each attack label: DSSIM on the 150 px chip, DSSIM in Fawkes v1.0.2's padded 112 px square (where
`geometry = "square112"` keeps its budget), PSNR (dB), largest pixel change (grey levels) and the
embedding shift on each surrogate (mean L2 distance) and the share of weak cloaks: those whose embedding
stayed nearer its own clean photo than that photo is to any training photo of another person, so a 1-NN
victim would still match that clean photo to the cloak. Reads cloaks from the cache only (`puface reproduce` or
tools/prefill_cloaks.py makes them); stops on a missing one.

    python docs/studies/2026-11-27-fawkes-weak-cloaks/fawkes_geometry_stats.py lfw-fawkes-geometry fawkes-mid fawkes-mid-square112 \
        fawkes-mid-sface fawkes-mid-sface-square112 --data $PUFACE_DATA/lfw-chips150
"""

from __future__ import annotations

import argparse


def nearest_other_person(embeddings, owners, pool, pool_owners):
    """Per row of `embeddings` (N, D): the distance to the nearest row of `pool` (M, D) whose owner differs
    from its own (`owners` (N,), `pool_owners` (M,): numpy label arrays). A cloak whose embedding stays
    nearer its clean photo than this is "weak": a 1-NN victim still matches them."""
    import torch

    other = torch.from_numpy(owners[:, None] != pool_owners[None, :])
    return torch.cdist(embeddings, pool).masked_fill(~other, float("inf")).min(dim=1).values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("labels", nargs="+", help="Fawkes attack labels of the config")
    ap.add_argument("--data", default=None, help="identity folders (default: the config's [data] root)")
    ap.add_argument("--seed", type=int, default=None, help="default: the config's first seed")
    args = ap.parse_args()

    import numpy as np
    import torch

    from puface.attacks.cache import CloakCache
    from puface.attacks.fawkes_geometry import SquareView
    from puface.utils.metrics import dssim, psnr
    from puface.data.loading import load_images
    from puface.data.datasets import resolve_data_root
    from puface.experiments import load_config
    from puface.experiments.build import build_attack, draw_users
    from puface.models.registry import create_embedder

    cfg = load_config(args.config)
    seed = cfg.seeds[0] if args.seed is None else args.seed
    data, users = draw_users(cfg, resolve_data_root(args.data or cfg.data["root"]), seed)
    paths = [data.train.paths[i] for u in users for i in data.train.rows_of(u)]
    clean, kept, errors = load_images(paths, size=(150, 150))
    assert not errors and len(kept) == len(paths)
    view = SquareView(clean)
    clean_work = view.to_work(clean)
    cache = CloakCache(cached_only=True)
    by_label = {a.label: a for a in cfg.attacks}
    embedders = {n: create_embedder(n) for n in ("dlib-resnet29", "sface")}
    clean_embeddings = {n: emb.embed(clean, batch_size=32) for n, emb in embedders.items()}
    owner = np.concatenate([data.train.labels[data.train.rows_of(u)] for u in users])
    everyone = data.train.images.float() / 255
    nearest_other = {n: nearest_other_person(clean_embeddings[n], owner, emb.embed(everyone, batch_size=32), data.train.labels)
                     for n, emb in embedders.items()}  # per user image: distance to the nearest training photo of another person
    print(f"{len(users)} users, {len(paths)} training images (seed {seed}); median distance from a user's clean photo to "
          "the nearest training photo of another person: " + ", ".join(f"{n} {d.median():.3f}" for n, d in nearest_other.items()) + "\n")
    print("| attack | geometry | cap | DSSIM chip mean (max) | DSSIM 112 square mean (max) | PSNR dB | max change /255 | "
          + " | ".join(f"shift {n}" for n in embedders) + " | " + " | ".join(f"weak {n}" for n in embedders) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * (2 * len(embedders)))
    for label in args.labels:
        spec = build_attack(by_label[label], seed, "cpu")
        cloaked, kept, errors = cache.cloak(spec.attack, paths, progress=False, size=(150, 150))
        assert not errors and len(kept) == len(paths)
        with torch.no_grad():
            d_chip = dssim(cloaked, clean)
            d_work = dssim(view.to_work(cloaked), clean_work)
            linf = (cloaked - clean).abs().flatten(1).amax(1) * 255
            cloaked_embeddings = {n: emb.embed(cloaked, batch_size=32) for n, emb in embedders.items()}
            shifts = [f"{(cloaked_embeddings[n] - clean_embeddings[n]).norm(dim=1).mean():.3f}" for n in embedders]
            weak = [f"{((cloaked_embeddings[n] - clean_embeddings[n]).norm(dim=1) < nearest_other[n]).float().mean():.1%}" for n in embedders]
        print(f"| {label} | {spec.attack.settings.geometry} | {spec.attack.settings.cap} | {d_chip.mean():.4f} ({d_chip.max():.4f}) | {d_work.mean():.4f} ({d_work.max():.4f}) | "
              f"{psnr(cloaked, clean).mean():.2f} | {linf.mean():.1f} | " + " | ".join(shifts) + " | " + " | ".join(weak) + " |")

if __name__ == "__main__":
    main()
