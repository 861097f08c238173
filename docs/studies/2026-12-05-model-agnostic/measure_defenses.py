"""Image-level screen of training-free defenses on cloaks made against face models PuFace never saw.

    PUFACE_MODELS=DIR python docs/studies/2026-12-05-model-agnostic/measure_defenses.py --data lfw-chips150/ \
        --config lfw-unseen-surrogate --victim mobileface.pt --defense puface --defense "noise:sigma=0.03+puface" ...

Every cloak of the config's grid (seed --seed) found in the cloak cache (nothing is cloaked here), for each
`--defense` spec (`create_defense` syntax): the victim's cosine between the defended cloak and the natural
photo (what a FaceCure victim trained on defended photos compares to clean test photos), per attack; the same
for defended natural photos of the same users; and PSNR(D(x), x) on natural photos. Prints JSON; --out FILE
also writes it. A screen to choose candidates for the FR grid, not an ASR.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--victim", required=True, help="embedder name or file")
    ap.add_argument("--defense", action="append", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-per-attack", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from puface.defenses import create_defense
    from puface.experiments import load_config
    from puface.experiments.build import cached_grid_cloaks
    from puface.models.registry import load_embedder
    from puface.utils.images import quantize, to_float
    from puface.utils.metrics import psnr

    torch.manual_seed(0)
    t0 = time.perf_counter()
    cfg = load_config(args.config)
    victim = load_embedder(args.victim)
    _, users, groups = cached_grid_cloaks(cfg, args.data, args.seed, victim)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    n = args.max_per_attack
    for label, gs in groups.items():
        pairs[label] = (to_float(torch.cat([g[0] for g in gs]))[:n], to_float(torch.cat([g[1] for g in gs]))[:n])
    if not pairs:
        raise SystemExit("no cached cloaks of this config: run its grid first")

    def emb(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(torch.cat([victim(x[i:i + 16]) for i in range(0, len(x), 16)]), dim=1)

    natural = torch.cat([p[0] for p in pairs.values()]).unique(dim=0)
    e_nat = {k: emb(v[0]) for k, v in pairs.items()}
    out: dict = {"config": args.config, "victim": args.victim, "users": users,
                 "n": {k: len(v[1]) for k, v in pairs.items()}, "natural_n": len(natural), "defenses": {}}
    e_all_nat = emb(natural)
    for spec in ["none"] + [s for s in args.defense if s != "none"]:
        d = create_defense(spec)
        with torch.no_grad():
            dn = quantize(d(natural))
            row = {"natural psnr": round(float(psnr(dn, natural).mean()), 2),
                   "natural cos": round(float((emb(dn) * e_all_nat).sum(1).mean()), 3)}
            for k, (xn, xc) in pairs.items():
                row[f"cos {k}"] = round(float((emb(quantize(d(xc))) * e_nat[k]).sum(1).mean()), 3)
        out["defenses"][spec] = row
        print(spec, row, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
