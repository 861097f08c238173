"""Image-level study behind `unmask` (puface.defenses.shared): does a person's photo group share a pattern, and
what does subtracting its estimate do?

    PUFACE_MODELS=DIR python docs/studies/2026-12-05-universal-masks/screen.py --data lfw-chips150/ \
        --config lfw-unseen-surrogate --victim mobileface.pt --out screen.json

1. The shared-pattern score T (`shared_pattern_score`, what `unmask` tests) and, for comparison, the first test
   tried, the energy ratio R = rms(mean_i h3) / (rms(h3) / sqrt(n)), on natural groups: every identity of the
   purifier's training side (5-9 chips), as they are and re-encoded as JPEG q75 / q50, four of their photos each next
   to its JPEG q75 copy, the identities with >= 10 chips (the evaluation side, up to 40 photos; T and R also on all
   photos), the johns; and on the config's cached cloak groups (each protected user's training photos, per attack).
   On 8 photos chosen by content unless said.
2. Per cloak family, the victim's cosine between the defended cloak and the natural photo for: the purifier, and
   the pattern estimate with box k subtracted *regardless of R* (k = 3, 5, 9, 17), then the purifier; and on the
   natural groups of the same users the same, with PSNR: what a natural group would lose if it were flagged; and
   the rms distance (grey levels) of the cloaks to the natural photos before and after the subtraction alone.
3. An attacker who knows `unmask`: OPOM's mask plus independent uniform noise per photo (+-a, projected back into
   the 8/255 ball): T, the share of groups flagged, and the cosine without a defense, with PuFace, with
   `unmask+puface`.

Cloaks are read from the cloak cache (nothing is cloaked here). Prints JSON; --out FILE also writes it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--victim", required=True, help="embedder name or file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from PIL import Image

    from puface.defenses import create_defense
    from puface.data.johns import fetch_johns
    from puface.defenses.shared import SharedPatternRemoval, _by_content, highpass, shared_pattern_score
    from puface.experiments import load_config
    from puface.experiments.build import cached_grid_cloaks
    from puface.io.files import list_image_files
    from puface.io.images import read_image
    from puface.models.registry import load_embedder
    from puface.utils.images import quantize, to_float
    from puface.utils.metrics import psnr

    t0 = time.perf_counter()
    root = args.data if args.data.is_dir() else Path(os.environ.get("PUFACE_DATA", ".")) / args.data
    cfg = load_config(args.config)
    victim = load_embedder(args.victim)
    _, users, cached = cached_grid_cloaks(cfg, root, args.seed, victim)
    groups = {label: [(to_float(n), to_float(c)) for n, c in gs] for label, gs in cached.items()}
    if not groups:
        raise SystemExit("no cached cloaks of this config: run its grid first")

    def load(f) -> torch.Tensor:
        return torch.from_numpy(read_image(f)).permute(2, 0, 1).float() / 255

    def jpeg(x: torch.Tensor, q: int) -> torch.Tensor:
        out = []
        for im in x:
            b = io.BytesIO()
            Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()).save(b, "JPEG", quality=q)
            out.append(torch.from_numpy(np.array(Image.open(io.BytesIO(b.getvalue())).convert("RGB"))).permute(2, 0, 1).float() / 255)
        return torch.stack(out)

    by_id: dict[str, list[Path]] = {}
    for f in list_image_files(root):
        by_id.setdefault(f.parent.name, []).append(f)
    train_side = [torch.stack([load(f) for f in fs]) for _, fs in sorted(by_id.items()) if 5 <= len(fs) <= 9]
    eval_side = [torch.stack([load(f) for f in fs[:40]]) for _, fs in sorted(by_id.items()) if len(fs) >= 10]

    def stats(v: list[float]) -> dict:
        t = torch.tensor(v)
        return {"n": len(v), "min": round(float(t.min()), 3), "median": round(float(t.median()), 3), "max": round(float(t.max()), 3)}

    def energy_ratio(x: torch.Tensor) -> float:
        h = highpass(x, 3)
        return float(h.mean(0).pow(2).mean().sqrt() / (h.pow(2).mean().sqrt() / len(x) ** 0.5))

    def both(gs: list[torch.Tensor], cap: int | None = 8) -> dict:
        sel = [to_float(_by_content(x)[:cap]) for x in gs]
        return {"T": stats([shared_pattern_score(x) for x in sel]), "R": stats([energy_ratio(x) for x in sel])}

    johns_root = fetch_johns()
    johns = [torch.stack([load(f) for f in sorted(d.iterdir()) if f.is_file()]) for d in sorted(johns_root.iterdir()) if d.is_dir()]
    ratio = {
        "natural, training identities (5-9 photos)": both(train_side),
        "the same, JPEG q75": both([jpeg(x, 75) for x in train_side]),
        "the same, JPEG q50": both([jpeg(x, 50) for x in train_side]),
        "the same, 4 photos each next to its JPEG q75 copy": both([torch.cat([x[:4], jpeg(x[:4], 75)]) for x in train_side]),
        "natural, >= 10 photos (up to 40), all photos": both(eval_side, cap=None),
        "natural, >= 10 photos (up to 40)": both(eval_side),
        "natural, johns": both(johns),
    }
    for label, gs in groups.items():
        ratio[f"cloaked: {label}"] = both([c for _, c in gs])

    purifier = create_defense("puface")

    def emb(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(victim.embed(x, 32), dim=1)

    def forced(x: torch.Tensor, k: int) -> torch.Tensor:
        return (x - highpass(x, k).mean(0, keepdim=True)).clamp(0, 1)

    ks = (3, 5, 9, 17)
    cos: dict[str, dict[str, float]] = {}
    nat_cos: dict[str, list[float]] = {}
    nat_psnr: dict[str, list[float]] = {}
    grey: dict[str, dict[str, float]] = {}
    for label, gs in groups.items():
        acc: dict[str, list[float]] = {}
        g: dict[str, list[float]] = {}
        for n, c in gs:
            g.setdefault("cloak", []).append(float((c - n).pow(2).mean().sqrt() * 255))
            for k in ks:
                g.setdefault(f"subtract k{k}", []).append(float((forced(c, k) - n).pow(2).mean().sqrt() * 255))
        grey[label] = {k: round(float(np.mean(v)), 2) for k, v in g.items()}
        for n, c in gs:
            en = emb(n)
            for name, x in [("puface", quantize(purifier(c)))] + [(f"subtract k{k} + puface", quantize(purifier(forced(c, k)))) for k in ks]:
                acc.setdefault(name, []).append(float((emb(x) * en).sum(1).mean()))
        cos[label] = {k: round(float(np.mean(v)), 3) for k, v in acc.items()}
    for n, _ in next(iter(groups.values())):
        en = emb(n)
        for name, x in [("puface", quantize(purifier(n)))] + [(f"subtract k{k} + puface", quantize(purifier(forced(n, k)))) for k in ks] \
                + [(f"subtract k{k}", forced(n, k)) for k in ks]:
            nat_cos.setdefault(name, []).append(float((emb(x) * en).sum(1).mean()))
            nat_psnr.setdefault(name, []).append(float(psnr(x, n).mean()))
    # 3. An attacker who knows `unmask`: each photo's copy of a universal mask gets its own uniform noise of +-a
    # (then projected back into the mask's 8/255 L-inf ball and rounded to 8 bits), to hide the shared pattern.
    unmask = create_defense("unmask")
    unmask_pf = create_defense("unmask+puface")
    adaptive: dict[str, dict] = {}
    for label, gs in groups.items():
        if not label.startswith("opom"):
            continue
        for a in (0, 2, 4, 8):
            gen = torch.Generator().manual_seed(a)
            acc = {"T": [], "flagged": [], "none": [], "puface": [], "unmask+puface": []}
            for n, c in gs:
                noise = (torch.rand(c.shape, generator=gen) * 2 - 1) * (a / 255)
                adv = quantize((n + (c - n + noise).clamp(-8 / 255, 8 / 255)).clamp(0, 1))
                en = emb(n)
                unmask(adv)
                acc["T"].append(unmask.last_score)
                acc["flagged"].append(float(unmask.last_score > unmask.params["tau"]))
                for name, x in (("none", adv), ("puface", quantize(purifier(adv))), ("unmask+puface", quantize(unmask_pf(adv)))):
                    acc[name].append(float((emb(x) * en).sum(1).mean()))
            adaptive[f"{label}, per-photo noise +-{a}/255"] = {k: round(float(np.mean(v)), 3) for k, v in acc.items()}

    out = {"config": args.config, "victim": args.victim, "users": users, "defaults": SharedPatternRemoval().params,
           "shared_pattern": ratio, "cosine_to_natural": cos, "rms_to_natural_grey_levels": grey,
           "adaptive_per_photo_noise": adaptive,
           "natural_groups_forced": {k: {"cosine": round(float(np.mean(nat_cos[k])), 3), "psnr_db": round(float(np.mean(nat_psnr[k])), 2)} for k in nat_cos},
           "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
