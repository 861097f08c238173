"""`--detector cnn` with --rotations auto on faces that are not LFW's: does `WEAK_CNN_SCORE` (chosen on LFW photos,
bench/bench_rotations_cnn.py) make upright photos pay extra CNN runs, or turn an upright face wrongly?
Writes bench/results/align-rotations-cnn-others.{md,csv}.

The johns chips (dlib's example faces, 5 people x 11 chips, 150x150; another source than LFW), each as: the chip
itself; pasted into a 260x300 photo (the chip 180 px wide, on a textured background) upright, and tilted 12 degrees
(either way, every third chip upright); and harder upright photos: dark (x0.3, x0.18), blurred (radius 2.5, 4) and
saved as JPEG (q30, q15), smaller (the chip 128, 105 px), tilted 25 and 40 degrees. Each upright image is scored by
the CNN (one run); where its best face is below 1.0 (or none), also turned 90, 180 and 270 degrees. From those
confidences, for each weak score T: how many upright images score below T (three CNN runs more under the rule) and
how many of them a turn's face outscores (the chip would be cut turned: a regression against the rule before, which
kept any upright face). The plain chips and photos are also scored turned (4 runs each) for the sideways /
upside-down counts (as bench_rotations_cnn.py).

    python bench/bench_rotations_cnn_others.py [--chips DIR]

--chips: identity folders of 150x150 face chips (default: the johns chips, `puface.data.johns.fetch_johns`).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from bench_rotations_cnn import ALL_TURNS, RULES, CnnConfidences, pick
from benchtables import Table, write_tables


def photo(chip: np.ndarray, angle: float = 0.0, scale: float = 1.2, seed: int = 0) -> np.ndarray:
    """`chip` (n, n, 3) scaled by `scale`, turned `angle` degrees counter-clockwise, its centre at (120, 140) of a
    260x300 (w x h) textured canvas."""
    h, w = 300, 260
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    canvas = np.stack([90 + 40 * np.sin(xx / 37.0), 110 + 30 * np.cos(yy / 23.0), 100 + 0 * xx], -1)
    canvas = Image.fromarray(np.clip(canvas + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8))
    n = round(chip.shape[0] * scale)
    face = Image.fromarray(chip).resize((n, n), Image.BICUBIC).convert("RGBA").rotate(angle, Image.BICUBIC, expand=True)
    canvas.paste(face, (120 - face.width // 2, 140 - face.height // 2), face)
    return np.asarray(canvas)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chips", type=Path, default=None, help="identity folders of face chips (default: johns)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the tables go (default bench/results)")
    args = ap.parse_args()
    from puface.align.detect import WEAK_CNN_SCORE
    from puface.data.johns import fetch_johns

    root = args.chips or fetch_johns()
    paths = sorted(root.glob("*/*.jpg"))
    confidences = CnnConfidences()

    def upright(img: np.ndarray) -> dict[int, list[float]]:  # the turns only where some rule would try them
        c = confidences(img, (0,))
        if max(c[0], default=-1.0) < max(r for r in RULES if r is not None):
            c.update(confidences(img, (90, 180, 270)))
        return c

    kinds: dict[str, list] = {k: [] for k in (
        "chip (150x150)", "photo, upright", "photo, tilted 12 degrees", "photo, dark (x0.3)",
        "photo, very dark (x0.18)", "photo, blurred 2.5 + JPEG q30", "photo, blurred 4 + JPEG q15",
        "photo, smaller (chip 128 px)", "photo, smaller (chip 105 px)", "photo, tilted 25 degrees",
        "photo, tilted 40 degrees")}
    turned = ("chip (150x150)", "photo, upright", "photo, tilted 12 degrees")
    for k, p in enumerate(paths):
        chip = np.asarray(Image.open(p).convert("RGB"))
        up = photo(chip)
        side = 1 if k % 2 else -1
        images = [chip, up, photo(chip, (0, 12, -12)[k % 3]), (up.astype(np.float32) * 0.3 + 10).astype(np.uint8),
                  (up.astype(np.float32) * 0.18 + 5).astype(np.uint8),
                  jpeg(np.asarray(Image.fromarray(up).filter(ImageFilter.GaussianBlur(2.5))), 30),
                  jpeg(np.asarray(Image.fromarray(up).filter(ImageFilter.GaussianBlur(4))), 15),
                  photo(chip, scale=0.85), photo(chip, scale=0.7), photo(chip, 25 * side), photo(chip, 40 * side)]
        for (kind, got), img in zip(kinds.items(), images):
            got.append(confidences(img) if kind in turned else upright(img))
        print(k, confidences.runs, flush=True)
    rows = []
    for kind, confs in kinds.items():
        best = [max(c[0], default=None) for c in confs]
        row = {"kind": kind, "photos": len(confs), "no_face": sum(b is None for b in best),
               "lowest": round(min(b for b in best if b is not None), 2)}
        for weak in RULES[1:]:
            below = [c for c, b in zip(confs, best) if b is not None and b < weak]
            row[f"below_{weak:g}"] = len(below)
            row[f"turned_{weak:g}"] = sum(pick(c, 0, weak)[0] not in (0, None) for c in below)
        rows.append(row)
        print(row, flush=True)
    rows2 = []
    for kind in turned:
        for weak in (None, WEAK_CNN_SCORE):
            for stored in ALL_TURNS[1:]:
                picked = [pick(c, stored, weak) for c in kinds[kind]]
                rows2.append({"kind": kind, "rule": "nothing upright (before)" if weak is None else f"below {weak:g}",
                              "stored": stored, "photos": len(picked), "face": sum(t is not None for t, _ in picked),
                              "upright_chip": sum(t == stored for t, _ in picked),
                              "cnn_runs": round(sum(n for _, n in picked) / len(picked), 2)})
    cols = [("kind", "upright images", "{}"), ("photos", "images", "{}"), ("no_face", "no face upright", "{}"),
            ("lowest", "lowest best upright confidence", "{}")]
    for weak in RULES[1:]:
        cols += [(f"below_{weak:g}", f"below {weak:g}", "{}"), (f"turned_{weak:g}", f"turned wrongly ({weak:g})", "{}")]
    write_tables("align-rotations-cnn-others", "Alignment with --detector cnn on faces that are not LFW's: the weak "
                 "score's cost on upright photos", [
                     Table(f"{len(paths)} johns chips as upright images: below T (3 CNN runs more under the rule) "
                           f"and turned wrongly (a turn's face outscores the upright one); shipped T = "
                           f"{WEAK_CNN_SCORE:g}", rows, cols),
                     Table("The chips and photos stored turned counter-clockwise: upright chips under the rule "
                           "before and the shipped one", rows2,
                           [("kind", "images", "{}"), ("rule", "turns tried when", "{}"),
                            ("stored", "stored turned", "{}"), ("photos", "photos", "{}"), ("face", "face found", "{}"),
                            ("upright_chip", "chip upright", "{}"), ("cnn_runs", "CNN runs / photo", "{}")],
                           csv="turned")],
                 args.out_dir or Path(__file__).resolve().parent / "results",
                 about=f"WEAK_CNN_SCORE was chosen on LFW photos (bench/results/align-rotations-cnn.md); these are "
                       f"another source's faces. CNN runs: {confidences.runs}, "
                       f"{1000 * confidences.seconds / max(1, confidences.runs):.0f} ms each on "
                       "average (no upsampling, at most 640 px); rules compared from the same confidences (the "
                       "decision of `FaceDetector.detect`, replayed).")


if __name__ == "__main__":
    main()
