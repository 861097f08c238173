"""Does the shipped purifier (trained on dlib 150 px chips) serve ArcFace 112 px crops? Image-level numbers.

    python docs/studies/2026-12-04-arcface112/measure_arcface112.py --data $PUFACE_DATA [--n 200] [--out FILE]
        [--arcface112 WEIGHTS]

--data: the folder holding lfw-arcface112/ and lfw-chips150/ (the same LFW photos in both layouts).
1. Why the crops are cut from the photos, not warped from the dlib chips: where the dlib 150 px chip lands in
   the ArcFace 112 frame (the rest of the frame is not in the chip).
2. Natural crops: PSNR(P(x), x) on --n crops of identities the purifier never saw (its held-out list), for the
   purifier run plainly on the 112 px crop, run told the layout (`template="arcface112"`: resampled to its
   face scale), and, for reference, run on the same photos' dlib 150 px chips.
3. Cloaks: every cloak of `puface reproduce lfw-arcface112` (seed 0) found in the cloak cache (nothing is
   cloaked here): the cosine to the natural crop's embedding (SFace native 112 and dlib ResNet-29 warped) of
   the cloak, the cloak purified plainly and purified told the layout; and the PSNR to the natural crop.
4. With --arcface112 WEIGHTS (a checkpoint, or "arcface112": the shipped one): the same numbers for a purifier
   trained on ArcFace 112 px crops (recipe `arcface112`), run natively on them ("112 purifier").
Prints JSON; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding lfw-arcface112/ and lfw-chips150/")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="the experiment seed the cloaks were made with")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--arcface112", default=None, metavar="WEIGHTS",
                    help="also a purifier trained on 112 px crops (a checkpoint, or arcface112 = the shipped one)")
    args = ap.parse_args()

    from puface.align.geometry import arcface_template, dlib_template, fit_similarity
    from puface.attacks.cache import CloakCache
    from puface.experiments import load_config
    from puface.experiments.build import build_attack, draw_users, excluded_identities, build_defense
    from puface.io.images import read_image
    from puface.models.registry import load_embedder
    from puface.purifier import Purifier
    from puface.utils.errors import CloakNotCachedError
    from puface.utils.images import image_to_tensor, quantize
    from puface.utils.metrics import psnr

    t0 = time.perf_counter()
    out: dict = {}
    # 1. the dlib chip inside the ArcFace frame
    a = fit_similarity(dlib_template(150).points, arcface_template(112).points)
    corners = np.array([[0, 0], [149, 0], [0, 149], [149, 149]], float) @ a[:, :2].T + a[:, 2]
    out["dlib_chip_in_arcface_frame"] = {"corners_xy": np.round(corners, 1).tolist(),
                                         "rows_above_chip": round(float(corners[:2, 1].min()), 1),
                                         "cols_left_of_chip": round(float(corners[[0, 2], 0].min()), 1),
                                         "cols_right_of_chip": round(float(111 - corners[[1, 3], 0].max()), 1)}

    p = Purifier.load().eval()
    p112 = Purifier.load(args.arcface112).eval() if args.arcface112 else None
    if p112 is not None and p112.template != "arcface112":
        raise SystemExit(f"{args.arcface112}: trained on {p112.template}, not arcface112 crops")
    arc, dlib = args.data / "lfw-arcface112", args.data / "lfw-chips150"
    held = sorted(set(p.heldout_identities))
    files = [f for h in held for f in sorted((arc / h).glob("*.jpg")) if (dlib / h / f.name).is_file()]
    random.Random(0).shuffle(files)
    files = files[: args.n]
    x112 = torch.stack([image_to_tensor(read_image(f)) for f in files])
    x150 = torch.stack([image_to_tensor(read_image(dlib / f.parent.name / f.name)) for f in files])

    def m(v: torch.Tensor) -> float:
        return round(float(v.mean()), 2)

    with torch.no_grad():
        out["natural_psnr_db"] = {
            "n": len(files),
            "dlib150 chips, purifier as trained": m(psnr(quantize(p.purify(x150)), x150)),
            "arcface112 crops, plain": m(psnr(quantize(p.purify(x112)), x112)),
            "arcface112 crops, told the layout": m(psnr(quantize(p.purify(x112, template="arcface112")), x112)),
        }
        if p112 is not None:
            out["natural_psnr_db"]["arcface112 crops, 112 purifier"] = m(psnr(quantize(p112.purify(x112)), x112))

    # 3. the grid's cached cloaks
    cfg = load_config("lfw-arcface112")
    defenses = {d.label: build_defense(d, None) for d in cfg.defenses}
    data, users = draw_users(cfg, arc, args.seed, exclude=excluded_identities(defenses, print))
    models = {n: load_embedder(n) for n in ("sface-arcface112", "dlib-resnet29-arcface112")}
    cache = CloakCache(cached_only=True)
    rows = {}
    for entry in cfg.attacks:
        if entry.is_clean:
            continue
        atk = build_attack(entry, args.seed, None, cfg.run["cloak_batch_size"]).attack
        nat, clo = [], []
        for user in users:
            for f in sorted((arc / user).glob("*.jpg")):
                try:
                    c, _, _ = cache.cloak(atk, [f], progress=False)
                except CloakNotCachedError:
                    continue
                nat.append(image_to_tensor(read_image(f)))
                clo.append(c[0])
        if not clo:
            continue
        xn, xc = torch.stack(nat), torch.stack(clo)
        with torch.no_grad():
            variants = {"cloaked": xc, "purified plain": quantize(p.purify(xc)),
                        "purified told the layout": quantize(p.purify(xc, template="arcface112"))}
            if p112 is not None:
                variants["purified by the 112 purifier"] = quantize(p112.purify(xc))
            row: dict = {"n": len(xc)}
            for name, e in models.items():
                e0 = F.normalize(e(xn), dim=1)
                row[f"cos {name}"] = {k: round(float((e0 * F.normalize(e(v), dim=1)).sum(1).mean()), 3)
                                      for k, v in variants.items()}
            row["psnr_db"] = {k: m(psnr(v, xn)) for k, v in variants.items()}
        rows[entry.label] = row
    out["cloaks"] = rows
    out["users"] = users
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
