"""Faces in photos stored turned (no EXIF orientation): what the default aligner finds with --rotations off and auto.
Writes bench/results/align-rotations.{md,csv}.

N LFW photos (the first photo of each of the first N people of lfw/, 250x250), each as it is and stored turned 90,
180 and 270 degrees counter-clockwise (PIL transpose, in memory); per stored turn, the photos where a face is found
and where it is found *upright in its chip* (the chip's angle within 45 degrees of the face's), and the mean time per
photo. Then non-face images (flat colour plus noise; the corners of LFW photos, 70 px, scaled to 250 px): false faces
and time per image. Last, every upright photo of lfw/: how many have their best HOG face below `WEAK_HOG_SCORE` (so
pay for the turns with rotations auto) and how many of those a turn changes. The aligner is `FaceAligner(150)`: HOG
upsampled once, the CNN fallback, min face 40 px.

    python bench/bench_rotations.py --data $PUFACE_DATA [--n 40]

--data: the folder holding lfw/ (250x250 LFW photos; default $PUFACE_DATA).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchtables import Table, write_tables

STORED = {0: None, 90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def upright_in_chip(angle: float, stored: int) -> bool:
    """A chip of a face stored turned `stored` degrees counter-clockwise has angle about -stored (photo pixels)."""
    return abs((math.degrees(angle) + stored + 180) % 360 - 180) < 45


def non_faces(lfw: Path, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (250, 250, 3)), 0, 255).astype(np.uint8)
           for _ in range(n // 3)]
    boxes = [(0, 0, 70, 70), (180, 0, 250, 70), (0, 180, 70, 250), (180, 180, 250, 250)]
    for j, person in enumerate(sorted(p for p in lfw.iterdir() if p.is_dir())[: n - len(out)]):
        im = Image.open(sorted(person.glob("*.jpg"))[-1]).convert("RGB")
        out.append(np.asarray(im.crop(boxes[j % 4]).resize((250, 250), Image.Resampling.BICUBIC)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = os.environ.get("PUFACE_DATA")
    ap.add_argument("--data", type=Path, default=Path(env) if env else None,
                    help="folder holding lfw/ (default $PUFACE_DATA)")
    ap.add_argument("--n", type=int, default=40, help="LFW photos (one per person) and non-face images")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the tables go (default bench/results)")
    args = ap.parse_args()
    if args.data is None:
        ap.error("--data (or $PUFACE_DATA) is needed")
    from puface.align import FaceAligner, FaceDetector

    lfw = args.data / "lfw"
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[: args.n]
    photos = [np.asarray(Image.open(sorted(p.glob("*.jpg"))[0]).convert("RGB")) for p in people]
    aligners = {r: FaceAligner(150, FaceDetector(rotations=r)) for r in ("off", "auto")}
    rows = []
    for stored, op in STORED.items():
        turned = [p if op is None else np.asarray(Image.fromarray(p).transpose(op)) for p in photos]
        for r, al in aligners.items():
            t0 = time.perf_counter()
            found = [al.align(p) for p in turned]
            sec = (time.perf_counter() - t0) / len(turned)
            rows.append({"stored": stored, "rotations": r, "photos": len(turned),
                         "face": sum(bool(f.faces) for f in found),
                         "upright_chip": sum(bool(f.faces) and upright_in_chip(f.faces[0].transform.angle, stored)
                                             for f in found),
                         "ms_per_photo": round(1000 * sec, 1)})
            print(rows[-1], flush=True)
    blanks = non_faces(lfw, args.n)
    rows2 = []
    for r, al in aligners.items():
        t0 = time.perf_counter()
        found = [al.align(p) for p in blanks]
        rows2.append({"rotations": r, "images": len(blanks), "false_faces": sum(bool(f.faces) for f in found),
                      "ms_per_image": round(1000 * (time.perf_counter() - t0) / len(blanks), 1)})
        print(rows2[-1], flush=True)
    from puface.align.detect import TURNS, WEAK_HOG_SCORE, turn_image

    hog = FaceDetector("hog", rotations="off")
    weak = changed = total = 0
    for f in sorted(lfw.rglob("*.jpg")):
        img = np.asarray(Image.open(f).convert("RGB"))
        total += 1
        top = max((s for _, s in hog._boxes(img, "hog")), default=None)
        if top is not None and top < WEAK_HOG_SCORE:
            weak += 1
            changed += any(s > top for t in TURNS for _, s in hog._boxes(turn_image(img, t), "hog"))
    rows3 = [{"photos": total, "weak": weak, "changed": changed}]
    print(rows3[-1], flush=True)
    write_tables("align-rotations", "Alignment: photos stored turned, without an EXIF orientation", [
        Table(f"{len(photos)} LFW photos (250x250) stored turned counter-clockwise", rows,
              [("stored", "stored turned", "{}"), ("rotations", "--rotations", "{}"), ("photos", "photos", "{}"),
               ("face", "face found", "{}"), ("upright_chip", "chip upright", "{}"),
               ("ms_per_photo", "ms / photo", "{}")]),
        Table(f"{len(blanks)} non-face images (noise; LFW photo corners scaled to 250 px)", rows2,
              [("rotations", "--rotations", "{}"), ("images", "images", "{}"), ("false_faces", "false faces", "{}"),
               ("ms_per_image", "ms / image", "{}")], csv="nonface"),
        Table(f"every upright photo of lfw/: best HOG face below {WEAK_HOG_SCORE} (the turns tried too)", rows3,
              [("photos", "photos", "{}"), ("weak", "weak upright face", "{}"),
               ("changed", "a turn scores higher", "{}")], csv="weak")],
        args.out_dir or Path(__file__).resolve().parent / "results",
        baseline="--rotations off (before 2026-12-08: the only behaviour) on the same photos, same process.")


if __name__ == "__main__":
    main()
