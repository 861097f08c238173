"""Whose natural photos does the purifier change most, and does the detector flag them? Per identity.

    python docs/studies/2026-12-05-sharp-photos/per_identity.py --data $PUFACE_DATA [--detector FILE] [--per-identity 12]
        [--out DIR]

For the purifier's held-out lfw-chips150 identities and every johns identity (natural photos only, first
--per-identity chips of each): mean luminance of the central face region (a rough proxy for skin tone and
lighting, not a label), fine detail (mean |x - blur_1px(x)|), PSNR(P(x), x), the dlib shift under purification
(median L2 between normalised embeddings of x and P(x)) and under JPEG q90 (a benign reference), and the share
the detector flags at its calibrated threshold. Then the same for sharpened copies of the LFW chips. Writes
per_identity.csv and summary.json to --out (default: this folder) and prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding lfw-chips150/ and johns/")
    ap.add_argument("--detector", default=None, help="detector file (default: the shipped one)")
    ap.add_argument("--per-identity", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()

    from puface.defenses import create_defense
    from puface.detection import load_detector
    from puface.io.images import read_image
    from puface.utils.images import image_to_tensor, quantize
    from puface.utils.metrics import psnr

    t0 = time.perf_counter()
    det = load_detector(args.detector)
    thr = det.threshold()
    pur = det.purifier
    emb = det.embedder("dlib-resnet29")
    held = set(pur.heldout_identities)
    blur1, jpeg90 = create_defense("blur:sigma=1"), create_defense("jpeg:quality=90")

    def embed(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.cat([emb(x[i:i + 32]) for i in range(0, len(x), 32)]), dim=1)

    def row(name: str, source: str, x: torch.Tensor) -> dict:
        with torch.no_grad():
            p = quantize(pur.purify(x))
            e0 = embed(x)
            score = det.score(x)
            face = x[:, :, 50:110, 45:105]
            return {"identity": name, "source": source, "n": len(x),
                    "luminance": float((0.299 * face[:, 0] + 0.587 * face[:, 1] + 0.114 * face[:, 2]).mean()),
                    "detail": float((x - blur1(x)).abs().mean()),
                    "psnr_purified": float(psnr(p, x).mean()),
                    "shift_purified": float((embed(p) - e0).norm(dim=1).median()),
                    "shift_jpeg90": float((embed(quantize(jpeg90(x))) - e0).norm(dim=1).median()),
                    "flagged": float((score > thr).float().mean())}

    rows = []
    for source, root, keep in (("lfw-chips150", args.data / "lfw-chips150", held), ("johns", args.data / "johns", None)):
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            if keep is not None and d.name not in keep:
                continue
            files = sorted(d.glob("*.jpg"))[: args.per_identity]
            x = torch.stack([image_to_tensor(read_image(f)) for f in files])
            rows.append(row(d.name, source, x))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "per_identity.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    lfw = [r for r in rows if r["source"] == "lfw-chips150"]
    a = {k: np.array([r[k] for r in lfw]) for k in ("luminance", "detail", "psnr_purified", "shift_purified", "flagged")}
    dark = a["luminance"] <= np.quantile(a["luminance"], 0.1)
    summary = {
        "lfw_identities": len(lfw), "per_identity": args.per_identity, "threshold": thr,
        "detector": args.detector or "shipped",
        "lfw": {k: {"median": round(float(np.median(v)), 4), "max": round(float(v.max()), 4)} for k, v in a.items()},
        "lfw_darkest_tenth": {k: round(float(np.mean(v[dark])), 4) for k, v in a.items()},
        "lfw_rest": {k: round(float(np.mean(v[~dark])), 4) for k, v in a.items()},
        "corr_luminance_psnr": round(float(np.corrcoef(a["luminance"], a["psnr_purified"])[0, 1]), 3),
        "corr_detail_psnr": round(float(np.corrcoef(a["detail"], a["psnr_purified"])[0, 1]), 3),
        "johns": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows if r["source"] == "johns"],
    }
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
