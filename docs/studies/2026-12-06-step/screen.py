"""Image-level screen: training-free uses of the shipped purifier P on cloaks of a face model it never saw.

    PUFACE_MODELS=DIR python docs/studies/2026-12-06-step/screen.py --data DATA --victim mobileface.pt \
        --attack 'fawkes:mode=high,embedders=mobileface.pt,label=fawkes-high-mf@60' \
        --attack 'lowkey:embedders=mobileface.pt,label=lowkey-mf@30' --out mobileface.json

Cloaks: `bench/bench_detect.py`'s (the first N chips of its unseen-identity order, one chip per person in turn),
from the cloak cache (`python bench/bench_detect.py cloaks --attack ...` makes them). For each candidate, the
victim's cosine between the defended cloak and its natural photo (higher = more of the cloak removed), the same on
the defended natural chips, and their PSNR against the natural chip. Candidates: P(x); x + S (P(x) - x) for
S = 1.5, 2, 3 ("extrapolate"); P(x + B (x - P(x))) for B = 1, 2 (amplify the estimated cloak, then purify, as
PuFace trains on amplified cloaks); the mean of P over flips and 2-3 px shifts (test-time augmentation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import bench_detect as B  # noqa: E402

from puface.attacks.cache import CloakCache  # noqa: E402
from puface.data.loading import load_images  # noqa: E402
from puface.models.registry import load_embedder  # noqa: E402
from puface.purifier import Purifier  # noqa: E402
from puface.utils.images import quantize, to_float  # noqa: E402
from puface.utils.metrics import psnr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the folder holding lfw-chips150/")
    ap.add_argument("--victim", required=True, help="embedder name or file")
    ap.add_argument("--attack", action="append", required=True, help="SPEC@N, as bench_detect.py takes them")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    victim = load_embedder(args.victim)
    chips = B.ordered_chips(B.data_root(str(args.data)) / "lfw-chips150", "test", 0)
    pairs = {}
    for text in args.attack:
        label, table, n = B.parse_attack(text)
        cl, _, _ = CloakCache(cached_only=True).cloak(B.make_attack(table, 0), chips[:n], progress=False)
        pairs[label] = (to_float(load_images(chips[:n])[0]), to_float(cl))
    p = Purifier.load()

    def pur(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([p(x[i:i + 16]) for i in range(0, len(x), 16)]).clamp(0, 1)

    def emb(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(torch.cat([victim(x[i:i + 16]) for i in range(0, len(x), 16)]), dim=1)

    def shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
        xp = F.pad(x, (4, 4, 4, 4), mode="reflect")
        return xp[:, :, 4 + dy:4 + dy + x.shape[2], 4 + dx:4 + dx + x.shape[3]]

    def tta(x: torch.Tensor, moves) -> torch.Tensor:
        acc = torch.zeros_like(x)
        for dx, dy, flip in moves:
            xi = shift(x, dx, dy)
            yi = pur(xi.flip(3) if flip else xi)
            acc += shift(yi.flip(3) if flip else yi, -dx, -dy)
        return acc / len(moves)

    candidates = {
        "none": lambda x: x,
        "puface": pur,
        "extrapolate 1.5": lambda x: (x + 1.5 * (pur(x) - x)).clamp(0, 1),
        "extrapolate 2": lambda x: (x + 2 * (pur(x) - x)).clamp(0, 1),
        "extrapolate 3": lambda x: (x + 3 * (pur(x) - x)).clamp(0, 1),
        "amplify 1 + puface": lambda x: pur((x + (x - pur(x))).clamp(0, 1)),
        "amplify 2 + puface": lambda x: pur((x + 2 * (x - pur(x))).clamp(0, 1)),
        "flip TTA": lambda x: tta(x, [(0, 0, 0), (0, 0, 1)]),
        "flip + shift TTA (8)": lambda x: tta(x, [(0, 0, 0), (0, 0, 1), (2, 0, 0), (-2, 0, 1), (0, 2, 0), (0, -2, 1),
                                                 (3, 3, 0), (-3, -3, 1)]),
    }
    natural = torch.cat([v[0] for v in pairs.values()]).unique(dim=0)
    e_all, e_nat = emb(natural), {k: emb(v[0]) for k, v in pairs.items()}
    out: dict = {"victim": args.victim, "attacks": args.attack, "natural_n": len(natural), "rows": {}}
    t0 = time.perf_counter()
    for name, d in candidates.items():
        dn = quantize(d(natural))
        row = {"natural psnr": round(float(psnr(dn, natural).mean()), 2),
               "natural cos": round(float((emb(dn) * e_all).sum(1).mean()), 3)}
        for k, (_, xc) in pairs.items():
            row[f"cos {k}"] = round(float((emb(quantize(d(xc))) * e_nat[k]).sum(1).mean()), 3)
        out["rows"][name] = row
        print(name, row, flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
