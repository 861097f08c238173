"""From embedding distances to ASR: the detector-evading adaptive cloak of `evade_detector.py` in a FaceCure cell.

Data as the `lfw` grid (lfw-chips150 identities with >= 10 chips, capped at 20, 70/30 split, seed 0; the protected
users drawn as there). Each user's training chips are cloaked (a) by Fawkes high against dlib (the package's attack,
the reference) and (b) by the white-box attacker who knows the shipped purifier and the shipped detector
(`evade_detector.attack`, objective "both", signed-free Adam, penalty weight W). The trainer then uses the training
photos (i) as they are, (ii) all purified by the shipped purifier, (iii) purified after dropping every photo the
shipped detector flags (`puface purify --skip-cloaked`). Victim: dlib-resnet29, 1-NN (cosine); test photos clean.
ASR = share of the user's test photos not matched to the user; normal accuracy on everyone else's test photos.

    python docs/studies/2026-12-04-detector-evasion/fr_check.py --data $PUFACE_DATA --users 3 --steps 300 --weight 0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from evade_detector import attack  # noqa: E402


def embed(dlib, x: torch.Tensor, bs: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([F.normalize(dlib(x[i:i + bs]), dim=1) for i in range(0, len(x), bs)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--users", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--weight", type=float, default=0.3)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--step", type=float, default=0.003)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from puface.attacks import create_attack
    from puface.detection import load_detector
    from puface.evaluation.data import EvaluationData, choose_users
    from puface.evaluation.trainers import NearestNeighbour
    from puface.utils.images import to_float
    from puface.utils.metrics import psnr

    data = EvaluationData.prepare(Path(a.data) / "lfw-chips150", seed=0, min_images=10, max_per_identity=20)
    users = choose_users(data, count=a.users, seed=0, min_train=5, min_test=2)
    det = load_detector()
    for p in det.parameters():
        p.requires_grad_(False)
    dlib = det.embedder("dlib-resnet29")
    thr = det.threshold()
    xtr, ytr = to_float(data.train.images), np.asarray(data.train.labels).astype(str)
    xte, yte = to_float(data.test.images), np.asarray(data.test.labels).astype(str)
    t0 = time.perf_counter()
    with torch.no_grad():
        ptr = det.purify_chips(xtr)
        e_tr, e_ptr, e_te = embed(dlib, xtr), embed(dlib, ptr), embed(dlib, xte)
        s_tr = det.score(xtr)
    print(f"base: {len(xtr)} training / {len(xte)} test chips, {time.perf_counter() - t0:.0f} s; natural training photos "
          f"flagged {float((s_tr > thr).float().mean()):.2%}", file=sys.stderr)
    fawkes = create_attack("fawkes", mode="high", embedders=["dlib-resnet29"], seed=0)
    rows = []
    for u in users:
        iu = np.flatnonzero(ytr == u)
        xu = xtr[iu]
        cloaks = {}
        t1 = time.perf_counter()
        cloaks["fawkes-high"] = to_float(fawkes.run(xu, quantize_output=True).images)
        t2 = time.perf_counter()
        cloaks["evade"] = attack(det, dlib, xu, a.eps, a.steps, a.weight, 0.5, a.step, False, "both", "adam")
        t3 = time.perf_counter()
        secs = {"fawkes-high": t2 - t1, "evade": t3 - t2}
        for name, xc in cloaks.items():
            with torch.no_grad():
                pc = det.purify_chips(xc)
                sc = det.score(xc)
                ec, epc = embed(dlib, xc), embed(dlib, pc)
            flagged = sc > thr
            for defense in ("none", "purify", "detect-skip+purify"):
                if defense == "none":
                    g, keep = e_tr.clone(), np.ones(len(ytr), bool)
                    g[iu] = ec
                else:
                    g = e_ptr.clone()
                    g[iu] = epc
                    keep = np.ones(len(ytr), bool)
                    if defense.startswith("detect"):
                        keep = ~(s_tr > thr).numpy()
                        keep[iu] = ~flagged.numpy()
                pred = NearestNeighbour(dlib).fit_embeddings(g[keep], ytr[keep]).predict_embeddings(e_te)
                mine = yte == u
                rows.append({"user": u, "attack": name, "defense": defense, "train_photos": int(len(iu)),
                             "kept": int(keep[iu].sum()), "flagged": int(flagged.sum()),
                             "asr": round(float((pred[mine] != u).mean()), 4),
                             "normal_acc": round(float((pred[~mine] == yte[~mine]).mean()), 4),
                             "psnr": round(float(psnr(xc, xu).median()), 2),
                             "seconds": round(secs[name], 1)})
                print(rows[-1], file=sys.stderr)
    print(json.dumps({"settings": vars(a), "threshold": thr, "users": users, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
