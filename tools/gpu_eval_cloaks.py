"""Make an experiment's evaluation cloaks on another machine (a lent GPU) without carrying the whole data set.

    # here: copy the images `puface reproduce` would cloak (seeds 0-4) into a small pack
    python tools/gpu_eval_cloaks.py pack lfw-lowkey-ensemble lowkey-ensemble --seeds 0,1,2,3,4 \
        --data lfw-chips150/ --out .gpu2/eval
    # there (PUFACE_HOME, PYTHONPATH as for tools/gpu_pack.py): cloak them into that machine's cache
    python tools/gpu_eval_cloaks.py make .gpu2/eval --device cuda
    python tools/gpu_eval_cloaks.py export .gpu2/eval --out $OUT --parts 3   # exactly those cloaks, as tars
    # here again: tar -xf eval-0.tar -C $PUFACE_HOME/cloaks (each part), then
    python tools/gpu_eval_cloaks.py check .gpu2/eval          # how many are cache hits here

`prefill_cloaks.py` needs the whole data set to draw the users; this script draws them here and carries
only the protected users' training images (about 9 KiB each). The cache keys hold the attack's config
(seed and surrogate weights included) and the pixels, never paths, so cloaks made there are hits here
when the surrogates convert to the same weights (`tools/gpu_pack.py` carries the converted SFace file).
Untargeted attacks only (LowKey): targeted Fawkes draws its targets from the full data set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _attack(config: str, label: str, seed: int, device: str | None):
    from puface.experiments import load_config
    from puface.experiments.build import build_attack

    cfg = load_config(config)
    by_label = {a.label: a for a in cfg.attacks}
    if label not in by_label:
        raise SystemExit(f"{config}: no attack labelled {label!r} (have {', '.join(by_label)})")
    if by_label[label].name != "lowkey":
        raise SystemExit(f"{config}: {label!r} is {by_label[label].name!r}; only untargeted LowKey attacks can be packed")
    spec = build_attack(by_label[label], seed, device, cfg.run.get("cloak_batch_size"))
    return spec


def pack(args: argparse.Namespace) -> None:
    from puface.data.datasets import resolve_data_root
    from puface.experiments import load_config
    from puface.experiments.build import draw_users

    cfg = load_config(args.config)
    root = Path(resolve_data_root(args.data or cfg.data["root"]))
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    manifest = {"config": args.config, "labels": args.labels, "seeds": {}}
    n = 0
    for seed in (int(s) for s in args.seeds.split(",")):
        # as `puface reproduce` draws them, except that users who trained a purifier of the config are not
        # excluded: `check` then reports the misses
        data, users = draw_users(cfg, root, seed)
        files = []
        for u in users:
            for i in data.train.rows_of(u):
                src = Path(data.train.paths[i])
                name = f"{src.parent.name}__{src.name}"
                if not (out / "images" / name).exists():
                    shutil.copy2(src, out / "images" / name)
                files.append(name)
        manifest["seeds"][str(seed)] = {"users": list(users), "files": files}
        n += len(files)
        print(f"seed {seed}: {len(users)} users, {len(files)} images")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {n} images to cloak per label, {size / 2**20:.1f} MiB")


def export(args: argparse.Namespace) -> None:
    """Tar the pack's cached cloaks (paths relative to the cache root, with each folder's config.json)
    into OUT/eval-<i>.tar, `parts` tars of about equal size. Stops, naming it, at a cloak not cached."""
    import tarfile

    from puface.attacks.cache import CloakCache
    from puface.utils.errors import CloakNotCachedError

    pack_dir = Path(args.pack)
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    used: set[Path] = set()
    cache = CloakCache(cached_only=True, used=used)  # the cache's own lookup records every file it reads
    for label in manifest["labels"]:
        for seed, entry in manifest["seeds"].items():
            attack = _attack(manifest["config"], label, int(seed), None).attack
            used.add(cache.attack_dir(attack) / "config.json")
            try:
                cache.cloak(attack, [pack_dir / "images" / f for f in entry["files"]], progress=False, size=(150, 150))
            except CloakNotCachedError as e:
                raise SystemExit(f"{label} seed {seed}: {e}") from None
    files = sorted(f for f in used if f.is_file())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per = -(-len(files) // args.parts)
    for i in range(args.parts):
        with tarfile.open(out / f"eval-{i}.tar", "w") as tar:
            for f in files[i * per:(i + 1) * per]:
                tar.add(f, arcname=str(f.relative_to(cache.root)))
    print(f"{len(files)} files (cloaks + configs) in {args.parts} tars under {out}")


def make(args: argparse.Namespace, cached_only: bool = False) -> None:
    from puface.attacks.cache import CloakCache
    from puface.utils.errors import CloakNotCachedError

    pack_dir = Path(args.pack)
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    cache = CloakCache(cached_only=cached_only)
    dirs = set()
    total_hits = total = 0
    for label in manifest["labels"]:
        for seed, entry in manifest["seeds"].items():
            spec = _attack(manifest["config"], label, int(seed), None if cached_only else args.device)
            dirs.add(cache.attack_dir(spec.attack).name)
            paths = [pack_dir / "images" / f for f in entry["files"]]
            t0 = time.perf_counter()
            if cached_only:
                hits = 0
                for p in paths:
                    try:
                        cache.cloak(spec.attack, [p], progress=False, size=(150, 150))
                        hits += 1
                    except CloakNotCachedError:
                        pass
                print(f"{label} seed {seed}: {hits}/{len(paths)} cached here ({cache.attack_dir(spec.attack).name})")
                total_hits += hits
            else:
                _, kept, errors = cache.cloak(spec.attack, paths, batch_size=args.batch_size or spec.batch_size,
                                              progress=False, size=(150, 150))
                print(f"{label} seed {seed}: {len(kept)} cloaks in {time.perf_counter() - t0:.0f} s "
                      f"({cache.attack_dir(spec.attack).name}; {len(errors)} unreadable)", flush=True)
            total += len(paths)
    if cached_only:
        print(f"{total_hits}/{total} cached")
        if total_hits != total:
            raise SystemExit(1)
    else:
        print("cache folders: " + " ".join(sorted(dirs)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="copy the images to cloak into a pack folder (run where the data set is)")
    p.add_argument("config")
    p.add_argument("labels", nargs="+")
    p.add_argument("--seeds", default="0")
    p.add_argument("--data", default=None, help="identity folders (default: the config's [data] root)")
    p.add_argument("--out", required=True)
    m = sub.add_parser("make", help="cloak a pack into $PUFACE_HOME/cloaks")
    m.add_argument("pack")
    m.add_argument("--device", default=None)
    m.add_argument("--batch-size", type=int, default=0, help="default: the config's cloak_batch_size")
    c = sub.add_parser("check", help="count the pack's cloaks cached here")
    c.add_argument("pack")
    e = sub.add_parser("export", help="tar the pack's cached cloaks (to bring them back)")
    e.add_argument("pack")
    e.add_argument("--out", required=True)
    e.add_argument("--parts", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(args)
    elif args.cmd == "export":
        export(args)
    else:
        make(args, cached_only=args.cmd == "check")


if __name__ == "__main__":
    main()
