"""Can a cloak hide from the shipped cloak detector? A white-box attacker's first try.

PGD within an L-inf budget (default 8/255) on natural chips of identities neither the purifier nor the
detector saw. Two cloaks per chip, same budget and steps:
  plain:  maximise the dlib-resnet29 embedding distance to the natural chip (an untargeted Fawkes-like push);
  evade:  the same push minus `weight` * relu(detector score - (threshold - margin)) (one cloak per weight), with the detector's
          score made differentiable (P(x) and the embeddings with gradients, no 8-bit rounding inside).
Measured with the product's own pipeline (8-bit images, `CloakDetector.features`): the share flagged at the
shipped threshold, the cloak's strength (1 - cos to the natural chip's dlib embedding) and what is left of it
after the shipped purifier (1 - cos after P).

    python docs/studies/2026-12-04-detector-evasion/evade_detector.py --data $PUFACE_DATA --n 6 --steps 400 --weights 0.1,1.0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def chips(root: Path, n: int) -> list[Path]:
    """The first chip of each of the first `n` identities with >= 10 chips (the evaluation's held-out pool)."""
    out = []
    for d in sorted(p for p in (root / "lfw-chips150").iterdir() if p.is_dir()):
        files = sorted(d.glob("*.jpg"))
        if len(files) >= 10:
            out.append(files[0])
        if len(out) == n:
            break
    return out


def _st_round(x: torch.Tensor) -> torch.Tensor:
    """8-bit rounding forward, identity backward (straight-through)."""
    return x + ((x * 255).round() / 255 - x).detach()


def soft_score(det, x: torch.Tensor, st_round: bool = False) -> torch.Tensor:
    """The detector's score of float chips (N, 3, 150, 150) with gradients (its features; P(x) rounded to 8 bits
    straight-through with `st_round`, as the product rounds it)."""
    px = det.purifier(x).clamp(0, 1)
    if st_round:
        px = _st_round(px)
    feats = {}
    for name in det.config.embedders:
        e = det.embedder(name)
        ex, ep = e(x), e(px)
        feats[f"shift:{name}"] = (1.0 - (F.normalize(ex, dim=1) * F.normalize(ep, dim=1)).sum(1)).clamp_min(1e-8)
    if det.net is not None:
        feats["net"] = det.net(x, px, det.net_scalars(feats))
    z = det.normalise(det.component_values(feats))
    return torch.stack(list(z.values()), 1).max(1).values


def attack(det, dlib, x: torch.Tensor, eps: float, steps: int, weight: float, margin: float,
           step: float | None = None, st_round: bool = False) -> torch.Tensor:
    thr = det.threshold()
    with torch.no_grad():
        e0 = F.normalize(dlib(x), dim=1)
    g0 = torch.Generator().manual_seed(0)
    delta = ((torch.rand(x.shape, generator=g0) * 2 - 1) * eps).requires_grad_(True)  # random start (seeded)
    alpha = step if step else 2.5 * eps / steps
    for _ in range(steps):
        xa = (x + delta).clamp(0, 1)
        if st_round:
            xa = _st_round(xa)
        push = 1.0 - (F.normalize(dlib(xa), dim=1) * e0).sum(1)
        loss = -push
        if weight > 0:
            loss = loss + weight * F.relu(soft_score(det, xa, st_round) - (thr - margin))
        (g,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            delta -= alpha * g.sign()
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
    return ((x + delta).detach().clamp(0, 1) * 255).round() / 255


def measure(det, dlib, x: torch.Tensor, xc: torch.Tensor) -> dict:
    with torch.no_grad():
        f = det.features(xc)
        e0 = F.normalize(dlib(x), dim=1)
        strength = 1.0 - (F.normalize(dlib(xc), dim=1) * e0).sum(1)
        left = 1.0 - (F.normalize(dlib(det.purify_chips(xc)), dim=1) * e0).sum(1)
    return {"flagged": float((f["score"] > det.threshold()).float().mean()), "score_median": float(f["score"].median()),
            "strength_median": float(strength.median()), "after_purifier_median": float(left.median()),
            "psnr_median": float((10 * torch.log10(1 / ((xc - x) ** 2).mean((1, 2, 3)))).median())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--weights", default="0.03,0.3", help="penalty weights of the evading cloaks (comma-separated)")
    ap.add_argument("--margin", type=float, default=0.5)
    ap.add_argument("--step", type=float, default=None, help="PGD step (default 2.5 * eps / steps)")
    ap.add_argument("--st-round", action="store_true", help="round to 8 bits inside the loop (straight-through)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from puface.data.loading import load_images
    from puface.detection import load_detector
    from puface.utils.images import to_float

    det = load_detector()
    for p in det.parameters():
        p.requires_grad_(False)
    dlib = det.embedder("dlib-resnet29")
    x = to_float(load_images(chips(Path(a.data), a.n))[0])
    out = {"natural": measure(det, dlib, x, x), "settings": vars(a)}
    for name, w in [("plain", 0.0)] + [(f"evade-w{w}", float(w)) for w in a.weights.split(",")]:
        t0 = time.perf_counter()
        xc = attack(det, dlib, x, a.eps, a.steps, w, a.margin, a.step, a.st_round)
        out[name] = {**measure(det, dlib, x, xc), "seconds": round(time.perf_counter() - t0, 1)}
        print(name, out[name], file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
