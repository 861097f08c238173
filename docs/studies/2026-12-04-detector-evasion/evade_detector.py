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

Stop 36 (2026-12-05) adds the attacker that "detect and handle" faces: `--objective purified` pushes the embedding of
the *purified* cloak P(x') (what a trainer who keeps unflagged photos and purifies them trains on; `both` pushes
the raw and the purified one), and `--optimizer adam` (signed Adam steps of `--step`, cosine-decayed) replaces
plain sign steps.
"""

from __future__ import annotations

import argparse
import json
import math
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


def soft_score(det, x: torch.Tensor, st_round: bool = False, parts: dict | None = None) -> torch.Tensor:
    """The detector's score of float chips (N, 3, 150, 150) with gradients (its features; P(x) rounded to 8 bits
    straight-through with `st_round`, as the product rounds it). `parts`, if given, receives P(x) and the
    dlib embeddings of x and P(x) (so the attack reuses them)."""
    px = det.purifier(x).clamp(0, 1)
    if st_round:
        px = _st_round(px)
    feats = {}
    for name in det.config.embedders:
        e = det.embedder(name)
        ex, ep = e(x), e(px)
        if parts is not None:
            parts.update({"px": px, f"ex:{name}": ex, f"ep:{name}": ep})
        feats[f"shift:{name}"] = (1.0 - (F.normalize(ex, dim=1) * F.normalize(ep, dim=1)).sum(1)).clamp_min(1e-8)
    if det.net is not None:
        feats["net"] = det.net(x, px, det.net_scalars(feats))
    z = det.normalise(det.component_values(feats))
    return torch.stack(list(z.values()), 1).max(1).values


def attack(det, dlib, x: torch.Tensor, eps: float, steps: int, weight: float, margin: float,
           step: float | None = None, st_round: bool = False, objective: str = "raw",
           optimizer: str = "sign", extra: tuple = ()) -> torch.Tensor:
    """PGD within L-inf `eps`. objective: push dlib(x') ("raw"), dlib(P(x')) ("purified") or both; weight > 0
    adds the detector penalty. optimizer "sign": sign steps of `step`; "adam": Adam on delta, lr `step` decayed
    by a cosine, then projected. extra: more detectors penalised the same way (each at its own threshold)."""
    thr = det.threshold()
    with torch.no_grad():
        e0 = F.normalize(dlib(x), dim=1)
    g0 = torch.Generator().manual_seed(0)
    delta = ((torch.rand(x.shape, generator=g0) * 2 - 1) * eps).requires_grad_(True)  # random start (seeded)
    alpha = step if step else 2.5 * eps / steps
    opt = torch.optim.Adam([delta], lr=alpha) if optimizer == "adam" else None
    for i in range(steps):
        xa = (x + delta).clamp(0, 1)
        if st_round:
            xa = _st_round(xa)
        parts: dict = {}
        need_score = weight > 0
        if need_score:
            score = soft_score(det, xa, st_round, parts)
        elif objective != "raw":
            parts["px"] = det.purifier(xa).clamp(0, 1)
        ex = parts.get("ex:dlib-resnet29")
        if ex is None and objective != "purified":
            ex = dlib(xa)
        loss = torch.zeros(len(x))
        if objective in ("raw", "both"):
            loss = loss - (1.0 - (F.normalize(ex, dim=1) * e0).sum(1))
        if objective in ("purified", "both"):
            ep = parts.get("ep:dlib-resnet29")
            if ep is None:
                ep = dlib(parts["px"])
            loss = loss - (1.0 - (F.normalize(ep, dim=1) * e0).sum(1))
        if need_score:
            loss = loss + weight * F.relu(score - (thr - margin))
            for d2 in extra:
                loss = loss + weight * F.relu(soft_score(d2, xa, st_round) - (d2.threshold() - margin))
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = alpha * 0.5 * (1 + math.cos(math.pi * i / steps))
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
        else:
            (g,) = torch.autograd.grad(loss.sum(), delta)
            with torch.no_grad():
                delta -= alpha * g.sign()
        with torch.no_grad():
            delta.clamp_(-eps, eps)
            delta.copy_((x + delta).clamp(0, 1) - x)
    return ((x + delta).detach().clamp(0, 1) * 255).round() / 255


def measure(det, dlib, x: torch.Tensor, xc: torch.Tensor) -> dict:
    from puface.utils.metrics import psnr

    with torch.no_grad():
        f = det.features(xc)
        e0 = F.normalize(dlib(x), dim=1)
        strength = 1.0 - (F.normalize(dlib(xc), dim=1) * e0).sum(1)
        left = 1.0 - (F.normalize(dlib(det.purify_chips(xc)), dim=1) * e0).sum(1)
    flagged = f["score"] > det.threshold()
    kept = left[~flagged]
    return {"flagged": float(flagged.float().mean()), "score_median": float(f["score"].median()),
            "strength_median": float(strength.median()), "after_purifier_median": float(left.median()),
            "psnr_median": float(psnr(xc, x, cap=120.0).median()),
            "unflagged_after_purifier_median": float(kept.median()) if len(kept) else None,
            "threshold": round(det.threshold(), 4),
            "per_chip": {"score": [round(float(v), 3) for v in f["score"]],
                         "after_purifier": [round(float(v), 4) for v in left]}}


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
    ap.add_argument("--objective", choices=["raw", "purified", "both"], default="raw",
                    help="push the embedding of the cloak (raw), of the purified cloak, or both")
    ap.add_argument("--optimizer", choices=["sign", "adam"], default="sign")
    ap.add_argument("--detector", default=None, help="a detector file or shipped name (default: the shipped default)")
    ap.add_argument("--penalise", default="", help="more detectors (comma-separated) the evading cloaks are optimised "
                                                   "against too, besides --detector")
    ap.add_argument("--also", default="", help="other detectors (comma-separated names or files) that score the cloaks too "
                                               "(transfer: the attacker did not optimise against them)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from puface.data.loading import load_images
    from puface.detection import load_detector
    from puface.utils.images import to_float

    det = load_detector(a.detector)
    for p in det.parameters():
        p.requires_grad_(False)
    dlib = det.embedder("dlib-resnet29")
    others = [(n, load_detector(n)) for n in a.also.split(",") if n]
    extra = tuple(load_detector(n) for n in a.penalise.split(",") if n)
    for d2 in extra:
        for p in d2.parameters():
            p.requires_grad_(False)
    x = to_float(load_images(chips(Path(a.data), a.n))[0])
    out = {"natural": measure(det, dlib, x, x), "settings": vars(a)}
    for name, w in [("plain", 0.0)] + [(f"evade-w{w}", float(w)) for w in a.weights.split(",")]:
        t0 = time.perf_counter()
        xc = attack(det, dlib, x, a.eps, a.steps, w, a.margin, a.step, a.st_round, a.objective, a.optimizer, extra)
        out[name] = {**measure(det, dlib, x, xc), "seconds": round(time.perf_counter() - t0, 1)}
        for other in others:
            with torch.no_grad():
                so = other[1].score(xc)
            out[name][f"flagged_by_{other[0]}"] = float((so > other[1].threshold()).float().mean())
        print(name, out[name], file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
