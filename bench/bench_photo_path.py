"""How much of the published-photo image quality (RESULTS section 20) is re-alignment, not the defense.

N natural LFW photos (a seeded draw of the chips whose photos are given): each photo is defended on the whole
photo as `puface purify --align` does (align, purify, paste back), then its face is cut twice: where the face
was in the natural photo (its transform), and detected and aligned anew (what the `lfw-photos` configs and a
trainer's pipeline do). PSNR (dB) of each against the data set's chip, and how far the re-detected landmarks
moved (photo pixels, largest of the five points, median over the photos). Writes bench/results/photo-path.{md,csv}.

    python bench/bench_photo_path.py --chips lfw-chips150/ --photos lfw-photos/ [--n 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
from PIL import Image

from benchtables import Table, write_tables
from puface.align import extract_chip
from puface.defenses import create_defense
from puface.defenses.base import NoDefense
from puface.evaluation.photos import PhotoPath


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=Path, required=True, help="the chips' folder (root/<identity>/<chip>)")
    ap.add_argument("--photos", type=Path, required=True, help="the photos they were cut from (same names)")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defense", action="append", default=None, help="defense specs (default: none, puface, puface:step=1.5)")
    ap.add_argument("--out", type=Path, default=None, help="folder for photo-path.{md,csv} (default: bench/results)")
    args = ap.parse_args()
    files = sorted(args.chips.glob("*/*.jpg"))
    random.Random(args.seed).shuffle(files)
    files = files[: args.n]
    path = PhotoPath(args.photos, args.chips)
    rows = []
    for spec in args.defense or ["none", "puface", "puface:step=1.5"]:
        run = path.photo_defense(NoDefense() if spec == "none" else create_defense(spec))
        fixed, again, shift = [], [], []
        for f in files:
            nat = np.asarray(Image.open(f).convert("RGB"))
            photo, face = path._natural(path.photo_for(f))
            out = run([photo])[0]
            fixed.append(psnr(extract_chip(out, face.transform), nat))
            again.append(psnr(path.cut(f, out), nat))
            faces = path.cutter.align(out).faces
            shift.append(float(np.abs(faces[0].face.landmarks - face.face.landmarks).max()) if faces else float("nan"))
        rows.append({"defense": spec, "photos": len(files), "psnr_fixed": float(np.mean(fixed)), "psnr_redetected": float(np.mean(again)),
                     "shift_px": float(np.nanmedian(shift))})
        print(rows[-1], flush=True)
    table = Table(f"{len(files)} photos (seed {args.seed}): defended on the photo, face cut again", rows, [
        ("defense", "defense", "{}"), ("psnr_fixed", "PSNR, face cut where it was (dB)", "{:.2f}"),
        ("psnr_redetected", "PSNR, face re-detected (dB)", "{:.2f}"), ("shift_px", "landmark shift, median (px)", "{:.2f}")])
    write_tables("photo-path", "Published photos: defense vs re-alignment", [table],
                 args.out or Path(__file__).resolve().parent / "results")

if __name__ == "__main__":
    main()
