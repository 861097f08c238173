"""How far do purifiers move natural photos, from LFW and from other sources? PSNR(P(x), x) and the dlib shift, per source.

    python docs/studies/2026-12-05-photo-variants/fidelity.py --data $PUFACE_DATA \
        --weights default --weights runs/purifier-photo-variants/best.safetensors [--per-identity 4] [--out DIR]

Sources (natural photos only): the held-out lfw-chips150 identities of the first purifier (first --per-identity
chips of each); their darkest tenth by mean face luminance (a rough proxy for skin tone and lighting, not a
label); the same chips changed as cameras and editors change photos (sharpening, contrast, gamma, JPEG q75; at
settings the `photo-variants` recipe does not train on); every johns identity (each identity on its own). Per purifier and source: mean / 5th percentile of PSNR(P(x), x) (dB, on
8-bit outputs) and the median dlib shift (L2 between normalised embeddings of x and P(x)). Writes
fidelity.json to --out (default: this folder) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# variants at settings the `photo-variants` recipe does not train on
VARIANTS = ["sharpen:amount=0.3,sigma=1", "sharpen:amount=2.5,sigma=2.5", "contrast:factor=1.5", "gamma:gamma=2.2",
            "gamma:gamma=2.2+contrast:factor=1.5", "jpeg:quality=75"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding lfw-chips150/ and johns/")
    ap.add_argument("--weights", action="append", required=True, help="purifier: 'default' or a weights file (repeat)")
    ap.add_argument("--per-identity", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()

    from puface.defenses import create_defense
    from puface.io.images import read_image
    from puface.models import create_embedder
    from puface.purifier import Purifier
    from puface.utils.images import image_to_tensor, quantize
    from puface.utils.metrics import psnr

    torch.manual_seed(0)
    t0 = time.perf_counter()
    purifiers = {w: Purifier.load(w) for w in args.weights}
    emb = create_embedder("dlib-resnet29")
    held = set(next(iter(purifiers.values())).heldout_identities)

    def load(d: Path) -> torch.Tensor:
        files = sorted(d.glob("*.jpg"))[: args.per_identity]
        return torch.stack([image_to_tensor(read_image(f)) for f in files])

    lfw_root, johns_root = args.data / "lfw-chips150", args.data / "johns"
    lfw = torch.cat([load(d) for d in sorted(lfw_root.iterdir()) if d.is_dir() and d.name in held])
    sources = {"lfw (held out)": lfw}
    face = lfw[:, :, 50:110, 45:105]
    lum = (0.299 * face[:, 0] + 0.587 * face[:, 1] + 0.114 * face[:, 2]).mean(dim=(1, 2))
    sources["lfw darkest tenth (face luminance)"] = lfw[lum <= lum.quantile(0.1)]
    for variant in map(create_defense, VARIANTS):
        sources[f"lfw {variant.name}"] = quantize(variant(lfw))
    for d in sorted(p for p in johns_root.iterdir() if p.is_dir()):
        sources[f"johns {d.name}"] = load(d)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([emb(x[i:i + 32]) for i in range(0, len(x), 32)]), dim=1)

    res: dict = {"per_identity": args.per_identity, "weights": args.weights, "sources": {}}
    with torch.no_grad():
        for sname, x in sources.items():
            e0 = embed(x)
            row = {"n": len(x)}
            for w, pur in purifiers.items():
                p = quantize(torch.cat([pur.purify(x[i:i + 32]) for i in range(0, len(x), 32)]))
                q = psnr(p, x).numpy()
                row[w] = {"psnr_mean": round(float(q.mean()), 2), "psnr_p5": round(float(np.percentile(q, 5)), 2),
                          "shift_median": round(float((embed(p) - e0).norm(dim=1).median()), 4)}
            res["sources"][sname] = row
            print(sname, json.dumps(row), flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity.json").write_text(json.dumps(res, indent=1) + "\n")
    names = [Path(w).parent.name if "/" in w else w for w in args.weights]
    print("\n| source | n | " + " | ".join(f"{n} PSNR mean / p5 (dB) | {n} dlib shift" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for sname, row in res["sources"].items():
        cells = " | ".join(f"{row[w]['psnr_mean']:.2f} / {row[w]['psnr_p5']:.2f} | {row[w]['shift_median']:.3f}" for w in args.weights)
        print(f"| {sname} | {row['n']} | {cells} |")


if __name__ == "__main__":
    main()
