"""False positives of the cloak detector on natural chips stored with a colour palette (GIF, 8-bit PNG): writes
bench/results/detect-palette.{md,csv}.

    python bench/bench_detect_palette.py [--n 1000] [--cloaks 120] [--detector NAME|FILE ...] [--data DIR]

The first N natural test chips (identities neither the purifier nor the detector saw; bench_detect.py's order)
are scored as they are and after Pillow's palette conversions (`Image.quantize`: 256 / 64 colours chosen per image by
median cut, as an 8-bit PNG or GIF encoder does; `Image.convert("P", palette=WEB)`: the fixed 216-colour web palette
with Floyd-Steinberg dithering), by each --detector (repeatable; default: the shipped one), all in this process; the
share flagged at a detector's calibrated threshold is that set's false-positive rate; next to it, the share flagged
at the threshold `puface detect` applies to such a file (`CloakDetector.threshold(storage="palette")`: the palette
calibration kinds' where the detector has them, else the default), and the same for the chips' cheap Fawkes cloaks
(--cloaks N: the first N chips cloaked through the cloak cache, `fawkes:mode=high`), which say what is left of
detection on palette images.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_detect import features, ordered_chips
from benchtables import Table, write_tables

#: name -> Pillow conversion of an RGB image to a palette image.
PALETTES = {
    "256 colours of its own (median cut)": lambda im: im.quantize(256, method=Image.Quantize.MEDIANCUT),
    "64 colours of its own (median cut)": lambda im: im.quantize(64, method=Image.Quantize.MEDIANCUT),
    "the 216-colour web palette, dithered": lambda im: im.convert("P", palette=Image.Palette.WEB, dither=Image.Dither.FLOYDSTEINBERG),
}


def paletted(x: torch.Tensor, convert) -> torch.Tensor:
    """(N, 3, H, W) chips in [0, 1] -> the same after a palette conversion and a PNG round trip (as a reader sees them)."""
    out = []
    for im in (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        convert(Image.fromarray(im)).save(buf, format="PNG")
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255)


def main() -> None:
    import os

    from puface.data.loading import load_images
    from puface.detection import load_detector

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PUFACE_DATA"), help="folder holding lfw-chips150/")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--detector", action="append", default=None, help="a shipped detector's name or a file (repeatable)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--cloaks", type=int, default=0, help="also score Fawkes-high cloaks of the first N chips (cloak cache)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    chips = ordered_chips(Path(args.data) / "lfw-chips150", "test", 0)
    x, _, _ = load_images(chips[: args.n])
    sets = {"as stored (JPEG q95 chips)": x, **{name: paletted(x, conv) for name, conv in PALETTES.items()}}
    storage = {"as stored (JPEG q95 chips)": "jpeg:quality=95,subsampling=4:2:0"}
    cloaked = {}
    if args.cloaks:
        from bench_detect import make_attack, parse_attack

        from puface.attacks.cache import CloakCache

        _, table, _ = parse_attack("fawkes:mode=high,embedders=dlib-resnet29")  # bench_detect.py's own cloaks
        cl, _, _ = CloakCache().cloak(make_attack(table), chips[: args.cloaks], progress=False)
        cloaked = {"as stored (JPEG q95 chips)": cl, **{name: paletted(cl, conv) for name, conv in PALETTES.items()}}
    tables = []
    for name in args.detector or ["default"]:
        det = load_detector(name)
        thr = det.threshold()
        rows = []
        for what, images in sets.items():
            s = features(det, images, f"{name}: {what}")["score"]
            ts = det.threshold(storage=storage.get(what, "palette"))
            row = {"set": what, "n": len(s), "fpr": float((s > thr).mean()), "median": float(np.median(s)),
                   "p99": float(np.percentile(s, 99)), "threshold_storage": ts, "fpr_storage": float((s > ts).mean())}
            if what in cloaked:
                c = features(det, cloaked[what], f"{name}: cloaks, {what}")["score"]
                row.update(n_cloaked=len(c), tpr=float((c > thr).mean()), tpr_storage=float((c > ts).mean()))
            rows.append(row)
        tables.append(Table(f"Detector `{name}`: false positives at its calibrated threshold {thr:.4f}", rows,
                            [("set", "natural test chips", "{}"), ("n", "n", "{}"),
                             ("fpr", "flagged", lambda r: f"{100 * r['fpr']:.1f}%"), ("median", "median score", "{:.3f}"),
                             ("p99", "99th percentile", "{:.3f}"),
                             ("threshold_storage", "threshold of the file's storage", "{:.4f}"),
                             ("fpr_storage", "flagged at it", lambda r: f"{100 * r['fpr_storage']:.1f}%"),
                             *([("tpr", "Fawkes-high cloaks flagged (default)", lambda r: f"{100 * r['tpr']:.1f}%"),
                                ("tpr_storage", "... at the storage's threshold", lambda r: f"{100 * r['tpr_storage']:.1f}%")]
                               if cloaked else [])],
                            csv=name if len(args.detector or []) > 1 else ""))
    write_tables("detect-palette", "Cloak detection: natural photos with a colour palette (GIF, 8-bit PNG)", tables, args.out,
                 about="The first N natural test chips (identities neither the purifier nor the detectors saw), each set "
                       "converted from the same chips in this process.")

if __name__ == "__main__":
    main()
