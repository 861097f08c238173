"""Why v1.0.2's clipped cap leaves some Fawkes cloaks weak: DSSIM per step, clip vs projected cap.

For each image, runs one Fawkes mode with `cap="clip"` (v1.0.2) and `cap="project"` (same budget) and
prints the DSSIM (where the budget lives) after every step, the number of steps spent above the band
(1.1 th), and the result: the kept image's DSSIM and the cosine between its embedding and the clean
one on the surrogate (1 = unchanged identity; Fawkes pushes it down).

    python docs/studies/2026-11-27-fawkes-weak-cloaks/fawkes_cap_trace.py --surrogate sface --geometry square112 \\
        $PUFACE_DATA/lfw-chips150/Eduardo_Duhalde/Eduardo_Duhalde_0012.jpg
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--surrogate", default="sface")
    ap.add_argument("--mode", default="mid")
    ap.add_argument("--geometry", default="chip")
    ap.add_argument("--size", type=int, default=150)
    args = ap.parse_args()

    import torch

    import puface.attacks.fawkes as fawkes
    from puface.data.loading import load_images
    from puface.models.registry import create_embedder

    emb = create_embedder(args.surrogate)
    x, kept, errors = load_images(args.images, size=(args.size, args.size))
    if errors:
        raise SystemExit("; ".join(str(e) for e in errors))
    clean = torch.nn.functional.normalize(emb.embed(x), dim=1)
    th = fawkes.MODES[args.mode].th
    adapt = fawkes._adapt_const_diff
    for cap in fawkes.CAP_MODES:
        trace: list[torch.Tensor] = []

        def probe(d, *rest):  # the per-step DSSIM, read where v1.0's const_diff rule reads it
            trace.append(d.clone())
            return adapt(d, *rest)

        fawkes._adapt_const_diff = probe
        try:
            res = fawkes.Fawkes(args.mode, [emb], geometry=args.geometry, cap=cap).run(x, quantize_output=True)
        finally:
            fawkes._adapt_const_diff = adapt
        d = torch.stack(trace, 1)  # (N, steps)
        cos = (torch.nn.functional.normalize(emb.embed(res.images), dim=1) * clean).sum(1)
        kept_d = res.stats.get("dssim_work", res.stats["dssim"])
        for i, path in enumerate(args.images):
            steps = " ".join(f"{v:.4f}" for v in d[i, :: max(1, d.shape[1] // 15)].tolist())
            print(f"{cap:8s} {path}\n  cosine to clean {cos[i]:.3f}, kept DSSIM {kept_d[i]:.4f} (th {th}), "
                  f"steps above 1.1 th: {int((d[i] > 1.1 * th).sum())} of {d.shape[1]}\n  DSSIM every {max(1, d.shape[1] // 15)} steps: {steps}")


if __name__ == "__main__":
    main()
