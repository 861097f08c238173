"""A sharper copy of an identity-folder data set: every image sharpened by unsharp masking (puface's `sharpen`
transform), written as JPEG quality 95 under the same identity and file name.

    python docs/studies/2026-12-05-sharp-photos/make_sharp_set.py SRC DST [--amount 0.5] [--sigma 1.0]

Used to ask whether the purifier still removes cloaks, and keeps normal accuracy, on a sharper photo source
than the soft LFW chips it was trained on (docs/RESULTS.md section 18).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--sigma", type=float, default=1.0)
    args = ap.parse_args()

    import torch

    from puface.defenses import create_defense

    sharpen = create_defense("sharpen", amount=args.amount, sigma=args.sigma)
    files = sorted(p for p in args.src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for f in files:
        x = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        y = (sharpen(x)[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        out = args.dst / f.relative_to(args.src).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(y).save(out, quality=95)
    print(f"{len(files)} images -> {args.dst}")


if __name__ == "__main__":
    main()
