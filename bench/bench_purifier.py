"""Purifier benchmarks; `quality` and `speed` write bench/results/purifier-{quality,speed}.{md,csv}.

    python bench/bench_purifier.py cloaks   [--per-attack 24]     # find / generate + cache the test cloaks
    python bench/bench_purifier.py quality  [--weights CKPT]      # PSNR / embedding cosines on unseen identities
    python bench/bench_purifier.py speed    [--weights CKPT] [--n 128]   # purify throughput vs JPEG, GFLOP/s vs matmul

--data: the lfw-chips150 chips (a folder or a data set name, default "lfw-chips150" in $PUFACE_DATA).

quality: chips of identities the purifier never saw (its checkpoint's held-out list) are cloaked with
the project's attacks at their *full* settings (Fawkes low/mid/high and LowKey, surrogate
dlib-resnet29; cached, so reruns are cheap). Reported per attack: PSNR(P(x), x) on natural chips,
PSNR of cloaked and purified-cloaked chips, and the cosine to the natural image's embedding of the
cloaked and of the purified-cloaked chip, on dlib-resnet29 (in the feature loss) and on SFace (not).
speed: `puface purify`'s folder pipeline on 150x150 chips vs JPEG re-encoding (decode + encode at
quality 75) of the same files through the same pipeline, in the same process; the purifier's
forward pass alone in GFLOP/s next to a 2048x2048 fp32 matmul's rate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchtables import Table, write_tables

ROOT: Path = Path("lfw-chips150")  # set from --data in main()
ATTACKS = [  # full settings (not the cheaper ones the default purifier trained on), surrogate dlib-resnet29
    ("fawkes-low", "fawkes", dict(mode="low")),
    ("fawkes-mid", "fawkes", dict(mode="mid")),
    ("fawkes-high", "fawkes", dict(mode="high")),
    ("lowkey", "lowkey", dict()),
]


def heldout_identities(weights: str | None) -> list[str]:
    """The purifier's held-out identities (from its checkpoint; before one exists, from the default config)."""
    from puface.utils.errors import PufaceError
    from puface.purifier import Purifier

    try:
        p = Purifier.load(weights)
        if p.heldout_identities:
            return p.heldout_identities
        seen = set(p.training_identities) | set(p.meta.get("data_summary", {}).get("val_identities", []))
        if seen:  # trained on a copy holding only its own identities (tools/gpu_pack.py): the rest are unseen
            return sorted(d.name for d in ROOT.iterdir() if d.is_dir() and d.name not in seen
                          and sum(1 for _ in d.glob("*.jpg")) >= 10)
        return []
    except PufaceError:
        from puface.training.config import load_config
        from puface.training.data import folder_identity_split

        cfg = load_config("default")
        return folder_identity_split(ROOT, seed=cfg.seed, heldout_min_images=cfg.data.heldout_min_images,
                                     heldout_fraction=cfg.data.heldout_fraction, val_fraction=cfg.data.val_fraction).heldout


def heldout_paths(weights: str | None, per_identity: int, seed: int = 0) -> list[Path]:
    ids = heldout_identities(weights)
    if not ids:
        raise SystemExit("the purifier declares no held-out identities")
    rng = random.Random(seed)
    out = []
    for ident in sorted(ids):
        files = sorted((ROOT / ident).glob("*.jpg"))
        out.extend(sorted(rng.sample(files, min(per_identity, len(files)))))
    return out


def cloak_all(weights, n: int, min_n: int, progress=True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per attack: up to `n` held-out chips whose cloaks are already in the cloak cache (made by any
    earlier run with the same attack settings), topped up to `min_n` by cloaking more (cached too)."""
    from puface.attacks import create_attack
    from puface.attacks.cache import CloakCache
    from puface.utils.fingerprint import image_digest
    from puface.data.loading import load_images

    cache = CloakCache()
    paths = heldout_paths(weights, 1000)
    images, kept, _ = load_images(paths)
    paths = [paths[i] for i in kept]
    digests = [image_digest(images[i]) for i in range(len(paths))]
    out = {}
    for label, name, kw in ATTACKS:
        atk = create_attack(name, embedders=["dlib-resnet29"], seed=0, **kw)
        cached = [i for i, dg in enumerate(digests) if cache.path_for(atk, cache.key(atk, dg)).is_file()]
        rng = random.Random(f"bench-purifier-{label}")
        chosen = sorted(rng.sample(cached, min(n, len(cached))))
        if len(chosen) < min_n:
            rest = [i for i in range(len(paths)) if i not in set(cached)]
            chosen += sorted(rng.sample(rest, min_n - len(chosen)))
        sel = [paths[i] for i in chosen]
        cloaked, ok, _ = cache.cloak(atk, sel, batch_size=max(1, len(sel)), progress=progress)
        out[label] = (images[torch.as_tensor([chosen[i] for i in ok])], cloaked)
    return out


def psnr(a, b):
    from puface.utils.metrics import psnr as p

    return p(a, b, cap=100.0)


def quality(weights, n: int, min_n: int, n_natural: int) -> dict:
    from puface.data.loading import load_images
    from puface.models import create_embedder
    from puface.purifier import Purifier

    p = Purifier.load(weights)
    paths_all = heldout_paths(weights, 1)  # one chip per held-out identity
    nat_paths = sorted(random.Random("bench-purifier-natural").sample(paths_all, min(n_natural, len(paths_all))))
    nat, _, _ = load_images(nat_paths)
    pn = p.purify(nat)
    embs = {name: create_embedder(name) for name in ("dlib-resnet29", "sface")}
    res = {"natural": {"n": len(nat), "psnr_purified_natural": round(float(psnr(pn, nat).mean()), 2)}}
    for name, e in embs.items():
        res["natural"][f"cos_purified_natural_{name}"] = round(float(F.cosine_similarity(e.embed(pn), e.embed(nat)).mean()), 4)
    for label, (x, xc) in cloak_all(weights, n, min_n, progress=False).items():
        pxc = p.purify(xc)
        row = {"n": len(x), "psnr_cloaked": round(float(psnr(xc, x).mean()), 2),
               "psnr_purified": round(float(psnr(pxc, x).mean()), 2),
               "linf_cloak_255": round(float((xc - x).abs().flatten(1).max(1).values.mean() * 255), 1)}
        for name, e in embs.items():
            ex = e.embed(x)
            row[f"cos_cloaked_{name}"] = round(float(F.cosine_similarity(e.embed(xc), ex).mean()), 4)
            row[f"cos_purified_{name}"] = round(float(F.cosine_similarity(e.embed(pxc), ex).mean()), 4)
        res[label] = row
    return res


def speed(weights, n: int, repeats: int = 3) -> dict:
    from puface.io.images import write_image
    from puface.io.jobs import Outcome, plan_mirror, run_folder_job
    from puface.purifier import Purifier
    from puface.purifier.folder import purify_folder

    threads = torch.get_num_threads()
    p = Purifier.load(weights)
    paths = heldout_paths(weights, 3)[:n]
    res: dict = {"images": len(paths), "threads": threads}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        for f in paths:  # a chip folder: 150x150 JPEGs
            (src / f.parent.name).mkdir(parents=True, exist_ok=True)
            (src / f.parent.name / f.name).write_bytes(f.read_bytes())
        # fp32 matmul rate and the purifier's forward rate, same process
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        x = torch.rand(32, 3, 150, 150)
        flops = p.flops(150, 150)
        mm, fw = [], []
        for _ in range(repeats):
            a @ b
            t = time.perf_counter(); a @ b; mm.append(2 * 2048**3 / (time.perf_counter() - t) / 1e9)
            p.purify(x[:4])
            t = time.perf_counter(); p.purify(x, batch_size=32); fw.append(flops * len(x) / (time.perf_counter() - t) / 1e9)
        res["matmul_gflops"] = round(max(mm), 1)
        res["forward_gflops"] = round(max(fw), 1)
        res["forward_ratio"] = round(max(fw) / max(mm), 3)
        res["gflop_per_image"] = round(flops / 1e9, 3)
        res["forward_images_per_s"] = round(max(fw) * 1e9 / flops, 1)
        # folder pipelines: JPEG re-encoding baseline and puface purify, alternating
        jpeg, pur = [], []
        for r in range(repeats):
            jobs = plan_mirror(src, Path(tmp) / f"jpeg{r}")
            rep = run_folder_job(jobs, lambda items: [Outcome.ok(it.image) for it in items], batch_size=16,
                                 quality=75, progress=False)
            jpeg.append(rep.written / rep.seconds)
            rep = purify_folder(src, Path(tmp) / f"pur{r}", purifier=p, device="cpu", batch_size=16, progress=False)
            pur.append(rep.written / rep.seconds)
        res["jpeg_reencode_images_per_s"] = round(max(jpeg), 1)
        res["purify_images_per_s"] = round(max(pur), 1)
        res["purify_vs_forward_only"] = round(max(pur) / res["forward_images_per_s"], 3)
    return res


def quality_tables(res: dict) -> list[Table]:
    nat = res["natural"]
    natural = Table("Natural chips of unseen identities", [nat], [
        ("n", "images", "{}"), ("psnr_purified_natural", "PSNR(P(x), x) dB", "{:.2f}"),
        ("cos_purified_natural_dlib-resnet29", "dlib cos(E(P(x)), E(x))", "{:.4f}"),
        ("cos_purified_natural_sface", "SFace cos(E(P(x)), E(x))", "{:.4f}")], csv="natural")
    rows = [{"attack": k, **v} for k, v in res.items() if isinstance(v, dict) and k != "natural"]
    cloaked = Table("Cloaked chips of unseen identities (surrogate dlib-resnet29, full settings)", rows, [
        ("attack", "attack", "{}"), ("n", "images", "{}"), ("linf_cloak_255", "cloak L-inf /255 (mean)", "{:.1f}"),
        ("psnr_cloaked", "PSNR cloaked (dB)", "{:.2f}"), ("psnr_purified", "PSNR purified (dB)", "{:.2f}"),
        ("cos_cloaked_dlib-resnet29", "dlib cos cloaked", "{:.4f}"), ("cos_purified_dlib-resnet29", "dlib cos purified", "{:.4f}"),
        ("cos_cloaked_sface", "SFace cos cloaked", "{:.4f}"), ("cos_purified_sface", "SFace cos purified", "{:.4f}")])
    return [natural, cloaked]


def speed_tables(res: dict) -> list[Table]:
    rows = [
        {"measure": "fp32 2048x2048 matmul", "value": f"{res['matmul_gflops']} GFLOP/s"},
        {"measure": f"purifier forward (batch 32, channels-last, {res['gflop_per_image']} GFLOP/image)",
         "value": f"{res['forward_gflops']} GFLOP/s = {100 * res['forward_ratio']:.0f}% of matmul ({res['forward_images_per_s']} images/s)"},
        {"measure": "`puface purify` folder pipeline (decode + purify + encode, batch 16)",
         "value": f"{res['purify_images_per_s']} images/s = {100 * res['purify_vs_forward_only']:.0f}% of forward-only"},
        {"measure": "JPEG re-encoding of the same files, same pipeline (quality 75)", "value": f"{res['jpeg_reencode_images_per_s']} images/s"},
    ]
    t = Table(f"{res['images']} chips (150x150 JPEG), {res['threads']} threads, best of 3, one process", rows,
              [("measure", "measure", "{}"), ("value", "value", "{}")])
    t.extra_csv_keys = []
    raw = Table("All numbers (also in the CSV)", [{k: v for k, v in res.items() if not isinstance(v, dict)}], [(k, k, "{}") for k in res if not isinstance(res[k], dict)])
    return [t], raw


def main() -> None:
    global ROOT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["cloaks", "quality", "speed"])
    ap.add_argument("--data", default="lfw-chips150", help="the LFW chips: a folder or a data set name")
    ap.add_argument("--weights", default=None, help="purifier checkpoint (default: the shipped one)")
    ap.add_argument("--per-attack", type=int, default=24, help="at most this many held-out cloaked chips per attack (cached ones)")
    ap.add_argument("--min-per-attack", type=int, default=2, help="cloak more held-out chips when fewer are cached")
    ap.add_argument("--natural", type=int, default=64, help="held-out natural chips for the natural PSNR")
    ap.add_argument("--n", type=int, default=128, help="chips for the speed test")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here too")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the tables go (default bench/results)")
    a = ap.parse_args()
    from puface.data.datasets import resolve_data_root

    ROOT = resolve_data_root(a.data)
    out_dir = a.out_dir or Path(__file__).parent / "results"
    t0 = time.time()
    if a.part == "cloaks":
        res = {k: list(v[1].shape) for k, v in cloak_all(a.weights, a.per_attack, a.min_per_attack).items()}
    elif a.part == "quality":
        res = quality(a.weights, a.per_attack, a.min_per_attack, a.natural)
    else:
        res = speed(a.weights, a.n)
    res["wall_s"] = round(time.time() - t0, 1)
    weights = a.weights or "the shipped purifier"
    if a.part == "quality":
        write_tables("purifier-quality", f"Purifier quality on identities it never saw ({weights})", quality_tables(res), out_dir,
                     about="Held-out chips (the purifier checkpoint's held-out identities) whose cloaks are in the cloak cache, "
                           f"at most {a.per_attack} per attack; {a.natural} natural held-out chips. The script takes whichever "
                           "held-out cloaks the cache holds, so another cache state gives other chips.")
    elif a.part == "speed":
        tables, raw = speed_tables(res)
        write_tables("purifier-speed", f"Purifier speed ({weights})", tables + [raw], out_dir)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
