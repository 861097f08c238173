"""False positives of a cloak detector by skin-tone proxy (ITA) on natural chips.

ITA (individual typology angle, degrees) = atan2(L* - 50, b*) of the median CIELAB L* and b* over a central face box
(rows 60-95, columns 35-115 of a 150 px dlib chip: nose and cheeks). On uncontrolled photos it measures lighting as much
as skin. Reads a `puface detect` CSV (path relative to the data root, score, cloaked) and prints, for the unseen and the
training identities of the shipped purifier, the share flagged per ITA bin (Chardon et al.'s categories, the two
darkest merged).

    puface detect lfw-chips150/ --detector default --out runs/fair/lfw-default.csv
    python docs/studies/2026-12-05-detector-fairness/ita_fpr.py lfw-chips150/ runs/fair/lfw-default.csv

Any folder of chips whose identities are not the purifier's works too (they then fall in neither group and are
printed as "other identities"), e.g. the johns set scored by `puface detect johns/ --detector default`.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
from PIL import Image

BINS = [(-90, 10, "brown/dark (< 10)"), (10, 28, "tan (10-28)"), (28, 41, "intermediate (28-41)"),
        (41, 55, "light (41-55)"), (55, 90, "very light (> 55)")]


def lab_l_b(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sRGB uint8 (..., 3) -> CIELAB L*, b* (D65)."""
    c = rgb / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return 116 * f[..., 1] - 16, 200 * (f[..., 1] - f[..., 2])


def ita(path: Path) -> float:
    a = np.asarray(Image.open(path).convert("RGB").resize((150, 150)), dtype=np.float64)[60:95, 35:115]
    lum, b = lab_l_b(a)
    return float(np.degrees(np.arctan2(np.median(lum) - 50, np.median(b))))


def main(root: str, scores_csv: str) -> None:
    from puface.purifier import Purifier

    p = Purifier.load()
    groups = {"unseen identities": set(p.heldout_identities), "training identities": set(p.training_identities)}
    groups["other identities"] = None
    rows = [r for r in csv.DictReader(open(scores_csv)) if r.get("score", "") != ""]
    data = [(r["path"].split("/")[0], float(r["score"]), int(r["cloaked"]), ita(Path(root) / r["path"]), float(r["psnr"]))
            for r in rows]
    for name, ids in groups.items():
        known = groups["unseen identities"] | groups["training identities"]
        sel = [d for d in data if (d[0] in ids if ids is not None else d[0] not in known)]
        if not sel:
            continue
        s, f, t, q = (np.array([d[i] for d in sel]) for i in (1, 2, 3, 4))
        low = q < 33.0
        print(f"\n{name}: {len(sel)} chips, flagged {100 * f.mean():.2f}%, corr(score, ITA) {np.corrcoef(s, t)[0, 1]:.3f}; "
              f"median PSNR of P(x) vs x {np.median(q):.1f} dB; {low.sum()} chips below 33 dB, {f[low].sum()} of them flagged")
        print("| ITA bin | chips | flagged % | median score | median PSNR of P(x) vs x (dB) |\n|---|---|---|---|---|")
        for lo, hi, label in BINS:
            m = (t >= lo) & (t < hi)
            if m.any():
                print(f"| {label} | {m.sum()} | {100 * f[m].mean():.2f} | {np.median(s[m]):.3f} | {np.median(q[m]):.1f} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
