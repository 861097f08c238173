"""Cloak detection on identities the detector and the purifier never saw; writes bench/results/detect*.{md,csv}.

    python bench/bench_detect.py cloaks  --split test  [--attack SPEC[@N] ...]   # make / find the cached cloaks
    python bench/bench_detect.py measure [--attack SPEC[@N] ...] [--detector FILE] [--name detect]  # AUC, TPR, FPR
    python bench/bench_detect.py speed   [--n 96]                                # detect vs purify, same process
    python bench/bench_detect.py calibrate [--natural johns] [--attack ...]      # calibrate on a user's own photos
    python bench/bench_detect.py thresholds [--detector FILE]                   # each calibration kind's threshold

--data: the folder holding lfw-chips150/, lfw/ and johns/ (default $PUFACE_DATA).

Chips. `test` = the 126 lfw-chips150 identities with >= 10 chips (the shipped purifier's held-out list,
never seen by the purifier nor by the detector); `train` = the purifier's training identities (what the
shipped detector trains on, see `puface train-detector`). In each split the chips are ordered once by the
seed (one chip per identity in turn), and an attack with @N cloaks the first N: attacks share their chips,
so every cloaked chip has its natural twin and smaller N are prefixes of larger ones. Cloaks go through
the shared cloak cache (`$PUFACE_HOME/cloaks`), so `measure` and later runs reuse them.

Attacks are specs of the project's grammar (`fawkes:mode=high,embedders=sface,label=fawkes-high-sface`),
each optionally followed by @N; the default list is DEFAULT_ATTACKS. New attack families are measured by
passing their specs (`--attack 'opom:...@120'`): nothing here is specific to Fawkes or LowKey.

measure, per attack (cloaked chips of test identities vs ALL natural test chips): ROC AUC, TPR at the
detector's calibrated threshold and at the threshold giving 1% FPR on these natural chips; the same after
re-encoding the cloaks as JPEG (quality 75, 85, 95, with the usual 4:2:0 chroma subsampling and with full-resolution
4:4:4 colour); then the false-positive rate at the calibrated threshold on natural photos that are not chips of
the calibration kind: the natural test chips re-encoded as JPEG (the same six settings), resized (down to 112 and 75 px and back), sharpened and with other tones (EDIT_SETS:
unsharp masking, contrast, gamma, at settings none of the shipped recipes trains on), full LFW photos aligned by `--align`
(lfw/, 400 photos), and the johns chips.
speed: `puface detect` vs `puface purify` folder jobs on the same chips, one process, alternated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchtables import Table, write_tables

DEFAULT_ATTACKS = [
    "fawkes:mode=low,embedders=dlib-resnet29@120",
    "fawkes:mode=mid,embedders=dlib-resnet29@120",
    "fawkes:mode=high,embedders=dlib-resnet29@120",
    "fawkes:mode=high,embedders=sface,label=fawkes-high-sface@60",
    "lowkey:embedders=dlib-resnet29@30",
]

# Edited natural chips for the false-positive table: none of these settings is among the variants of a shipped
# detector recipe (sharpen amount 0.5 / 1.0 at sigma 1, 0.7 at sigma 2; contrast 1.15 / 1.35 / 0.85; gamma 1.3 /
# 1.7 / 0.8), so they test what a detector generalises to.
EDIT_SETS = ["sharpen:amount=0.3,sigma=1.0", "sharpen:amount=1.5,sigma=0.7", "sharpen:amount=0.5,sigma=1.5+jpeg:quality=85",
             "contrast:factor=1.2", "contrast:factor=1.5", "gamma:gamma=1.5", "gamma:gamma=2.2", "gamma:gamma=0.7"]


def data_root(arg: str | None) -> Path:
    import os

    root = Path(arg or os.environ.get("PUFACE_DATA") or ".")
    if not (root / "lfw-chips150").is_dir():
        raise SystemExit(f"{root}: no lfw-chips150/ inside; pass --data or set $PUFACE_DATA")
    return root


def parse_attack(text: str) -> tuple[str, dict, int | None]:
    """'SPEC[@N]' -> (label, attack table, N or None)."""
    from puface.attacks import attack_label
    from puface.utils.specs import parse_spec

    spec, _, n = text.rpartition("@") if "@" in text else (text, "", "")
    table = parse_spec(spec, "attack spec")
    return attack_label(table), table, int(n) if n else None


def split_identities(split: str) -> list[str]:
    from puface.purifier import Purifier

    p = Purifier.load()
    ids = p.heldout_identities if split == "test" else p.training_identities
    if not ids:
        raise SystemExit(f"the shipped purifier records no {split} identities")
    return sorted(ids)


def ordered_chips(chips_root: Path, split: str, seed: int = 0) -> list[Path]:
    """Every chip of the split's identities, ordered by the seed: one chip per identity in turn. The train
    split's order is the detector training's own (config key "detector-train-<seed>")."""
    from puface.training.detector import interleaved_chips

    key = f"detector-train-{seed}" if split == "train" else f"bench-detect-{split}-{seed}"
    return interleaved_chips(chips_root, split_identities(split), key)


def make_attack(table: dict, seed: int = 0):
    from puface.attacks import create_attack

    return create_attack({k: v for k, v in table.items() if k != "label"}, seed=seed)


def cloaks(root: Path, split: str, attacks: list[str], seed: int, batch_size: int, progress: bool = True) -> dict:
    """{label: (natural (N,3,H,W), cloaked (N,3,H,W), paths)} for the first N chips of the split."""
    from puface.attacks.cache import CloakCache
    from puface.data.loading import load_images

    cache = CloakCache()
    chips = ordered_chips(root / "lfw-chips150", split, seed)
    out = {}
    for text in attacks:
        label, table, n = parse_attack(text)
        sel = chips[: n or 120]
        atk = make_attack(table, seed)
        t0 = time.perf_counter()
        cl, kept, errors = cache.cloak(atk, sel, batch_size=batch_size, progress=progress)
        if errors:
            raise SystemExit(f"{label}: {errors[0]}")
        nat, _, _ = load_images(sel)
        print(f"{label}: {len(sel)} cloaks ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        out[label] = (nat, cl, sel)
    return out


# JPEG re-encodings measured: (quality, chroma subsampling). 4:2:0 is the usual (Pillow, libjpeg, phones); 4:4:4
# keeps full-resolution colour, as ImageMagick writes at quality >= 90 and image editors at high quality.
JPEG_SETTINGS = [(75, "4:2:0"), (85, "4:2:0"), (95, "4:2:0"), (75, "4:4:4"), (85, "4:4:4"), (95, "4:4:4")]


def jpeg_name(q: int, sub: str) -> str:
    return f"q{q}" if sub == "4:2:0" else f"q{q} {sub}"


def jpeg(x: torch.Tensor, q: int, sub: str = "4:2:0") -> torch.Tensor:
    from puface.defenses import create_defense

    return create_defense(f"jpeg:quality={q},subsampling={sub}")(x)


def resized(x: torch.Tensor, side: int) -> torch.Tensor:
    """Natural chips stored at another size (the detector resizes them back to its chip size)."""
    import torch.nn.functional as F

    from puface.utils.images import quantize

    return quantize(F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))


def auc(neg, pos) -> float:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))


def features(det, x: torch.Tensor, what: str) -> dict:
    """The detector's features and score of images (P(x) and the shifts through the detector-samples cache)."""
    from puface.training.detector import cached_inputs
    from puface.utils.images import to_float

    t0 = time.perf_counter()
    xu, pu, known, hit = cached_inputs(det, x)
    out = {}
    for i in range(0, len(xu), 256):
        sl = slice(i, i + 256)
        f = det.features(to_float(xu[sl]), purified=to_float(pu[sl]), known={k: v[sl] for k, v in known.items()})
        for k, v in f.items():
            out.setdefault(k, []).append(v)
    out = {k: torch.cat(v).numpy() for k, v in out.items()}
    print(f"{what}: {len(x)} images ({time.perf_counter() - t0:.0f} s{', cached inputs' if hit else ''})", file=sys.stderr)
    return out


def folder_fpr(det, folder: Path, align: bool, threshold: float, tmp: Path) -> dict:
    """`puface detect` (the product's folder job) on a folder of natural photos: share flagged."""
    from puface.detection.folder import detect_folder

    rep = detect_folder(folder, tmp / f"{folder.name}-{int(align)}.csv", detector=det, align=align, progress=False, restart=True)
    scored = [r for r in rep.rows if r.get("score", "") != ""]
    scores = [float(r["score"]) for r in scored]
    return {"n": len(scores), "flagged": sum(s > threshold for s in scores), "no_face": len(rep.rows) - len(scores),
            "fpr": sum(s > threshold for s in scores) / max(1, len(scores)), "p99": float(np.percentile(scores, 99)) if scores else float("nan"),
            "fpr_storage": sum(int(r["cloaked"]) for r in scored) / max(1, len(scored)),  # the product's own decisions
            "scores": np.asarray(scores)}


def measure(root: Path, attacks: list[str], det_path: str | None, seed: int, n_variants: int, out_dir: Path | None,
            stem: str = "detect", fpr: float | None = None) -> None:
    import tempfile

    import numpy as np

    from puface.attacks.cache import CloakCache
    from puface.data.loading import load_images
    from puface.defenses import create_defense
    from puface.detection import load_detector
    from puface.io.images import jpeg_storage  # what `puface detect` reads from a chip file stored so

    det = load_detector(det_path)
    thr = det.threshold(fpr)  # the calibrated threshold at the detector's rate (1%) or at --fpr
    chips = ordered_chips(root / "lfw-chips150", "test", seed)
    nat_x, _, _ = load_images(chips)
    nat = features(det, nat_x, "natural test chips")
    comps = [k for k in nat if k.startswith("z:")]
    t1 = float(np.quantile(nat["score"], 0.99, method="higher"))
    rows, jrows, frows = [], [], []
    sub = nat_x[:n_variants]
    nat_j = {js: features(det, jpeg(sub, *js), f"natural JPEG {jpeg_name(*js)}") for js in JPEG_SETTINGS}
    cache = CloakCache(cached_only=True)
    for text in attacks:
        label, table, n = parse_attack(text)
        sel = chips[: n or 120]
        try:
            cl, kept, _ = cache.cloak(make_attack(table, seed), sel, progress=False)
        except Exception as e:  # a cloak not made yet: say so, go on
            print(f"{label}: skipped ({e})", file=sys.stderr)
            continue
        f = features(det, cl, label)
        row = {"attack": label, "n_cloaked": len(cl), "n_natural": len(nat_x), "auc": auc(nat["score"], f["score"]),
               "tpr": float((f["score"] > thr).mean()), "tpr_at_1pct": float((f["score"] > t1).mean()),
               "shift_median": float(np.median(f["shift:dlib-resnet29"]))}
        for c in comps:
            row[f"auc_{c[2:]}"] = auc(nat[c], f[c])
        rows.append(row)
        for js in JPEG_SETTINGS:
            fj = features(det, jpeg(cl, *js), f"{label} JPEG {jpeg_name(*js)}")
            jrows.append({"attack": label, "quality": jpeg_name(*js), "n_cloaked": len(cl), "n_natural": len(sub),
                          "auc": auc(nat_j[js]["score"], fj["score"]), "auc_vs_original": auc(nat["score"], fj["score"]),
                          "tpr": float((fj["score"] > thr).mean()),
                          "tpr_storage": float((fj["score"] > det.threshold(fpr, storage=jpeg_storage(*js))).mean())})
    frows.append({"set": "natural test chips (lfw-chips150, unseen identities)", "n": len(nat_x),
                  "fpr": float((nat["score"] > thr).mean()), "p99": float(np.quantile(nat["score"], 0.99)),
                  "fpr_storage": float((nat["score"] > det.threshold(fpr, storage=jpeg_storage(95))).mean())})  # stored q95
    for js in JPEG_SETTINGS:
        ts = det.threshold(fpr, storage=jpeg_storage(*js))
        frows.append({"set": f"natural test chips, JPEG {jpeg_name(*js)}", "n": len(sub), "fpr": float((nat_j[js]["score"] > thr).mean()),
                      "p99": float(np.quantile(nat_j[js]["score"], 0.99)), "fpr_storage": float((nat_j[js]["score"] > ts).mean())})
    for side in (112, 200, 75):
        f = features(det, resized(sub, side), f"natural resized {side}")
        frows.append({"set": f"natural test chips stored at {side} px", "n": len(sub), "fpr": float((f["score"] > thr).mean()),
                      "p99": float(np.quantile(f["score"], 0.99))})
    for spec in EDIT_SETS:
        f = features(det, create_defense(spec)(sub), f"natural {spec}")
        frows.append({"set": f"natural test chips, {spec}", "n": len(sub), "fpr": float((f["score"] > thr).mean()),
                      "p99": float(np.quantile(f["score"], 0.99))})
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder, align in (("full LFW photos (lfw/, 250 px), --align", root / "lfw", True),
                                    ("johns chips", root / "johns", False)):
            if folder.is_dir():
                r = folder_fpr(det, folder, align, thr, Path(tmp))
                frows.append({"set": name, "n": r["n"], "fpr": r["fpr"], "p99": r["p99"], "no_face": r["no_face"],
                              "fpr_storage": r["fpr_storage"]})
    comp_cols = [(f"auc_{c[2:]}", f"AUC {c[2:]} alone", "{:.4f}") for c in comps]
    tables = [
        Table("Unseen identities: cloaked chips vs every natural chip of the 126 held-out identities", rows,
              [("attack", "attack", "{}"), ("n_cloaked", "cloaked", "{}"), ("n_natural", "natural", "{}"),
               ("auc", "AUC", "{:.4f}"), ("tpr", "TPR at the calibrated threshold", lambda r: f"{100 * r['tpr']:.1f}%"),
               ("tpr_at_1pct", "TPR at 1% FPR (these natural chips)", lambda r: f"{100 * r['tpr_at_1pct']:.1f}%"),
               *comp_cols, ("shift_median", "median dlib shift", "{:.4f}")],
              notes=f"Calibrated threshold {thr:.4f} ({100 * (fpr or det.default_fpr):g}% FPR on the calibration identities); the 1%-FPR threshold on these natural chips: {t1:.4f}.",
              csv="attacks"),
        Table("Cloaks re-encoded as JPEG (vs natural chips re-encoded the same way)", jrows,
              [("attack", "attack", "{}"), ("quality", "JPEG quality", "{}"), ("n_cloaked", "cloaked", "{}"),
               ("auc", "AUC", "{:.4f}"), ("auc_vs_original", "AUC vs original natural chips", "{:.4f}"),
               ("tpr", "TPR at the calibrated threshold", lambda r: f"{100 * r['tpr']:.1f}%"),
               ("tpr_storage", "TPR at the threshold of the chip's storage", lambda r: f"{100 * r['tpr_storage']:.1f}%")],
              notes="Threshold of the chip's storage: what `puface detect` applies to a chip file stored as that JPEG "
                    "(`CloakDetector.threshold(storage=)`: the default, or higher where natural photos stored so score higher).",
              csv="jpeg"),
        Table("False positives at the calibrated threshold on natural photos", frows,
              [("set", "natural set", "{}"), ("n", "images", "{}"), ("fpr", "flagged", lambda r: f"{100 * r['fpr']:.2f}%"),
               ("fpr_storage", "flagged at the threshold of its storage",
                lambda r: f"{100 * r['fpr_storage']:.2f}%" if "fpr_storage" in r else "= flagged"),
               ("p99", "99th percentile score", "{:.3f}")],
              notes="JPEG and resized sets: the first %d natural test chips; full photos: faces found by --align "
                    "(a photo's score is its highest face's). Threshold of its storage: what `puface detect` applies to "
                    "the file (the test chips are JPEG q95 files; resized, edited and aligned images get the default); "
                    "folders: `puface detect`'s own decisions." % len(sub), csv="fpr"),
    ]
    write_tables(stem, "Cloak detection on unseen identities", tables, out_dir or RESULTS_DIR,
                 about=f"Detector: {det_path or 'shipped (detector-default.safetensors)'}, fingerprint {det.fingerprint()}.")


def speed(root: Path, det_path: str | None, n: int, repeats: int, out_dir: Path | None) -> None:
    """`puface detect` vs `puface purify` (the product's folder jobs) on the same chips, alternated, one process."""
    import shutil
    import tempfile

    from puface.detection import load_detector
    from puface.detection.detector import SHIPPED_DETECTORS
    from puface.detection.folder import detect_folder, purify_folder_detected
    from puface.purifier.folder import purify_folder

    det = load_detector(det_path)
    chips = ordered_chips(root / "lfw-chips150", "test", 0)[:n]
    times: dict[str, list[float]] = {"purify": [], "detect": [], "purify --skip-cloaked": []}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        for p in chips:
            (src / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, src / p.parent.name / p.name)
        detect_folder(src, Path(tmp) / "warm.csv", detector=det, progress=False)  # warm-up: lazy loads, caches
        for r in range(repeats):
            t0 = time.perf_counter()
            purify_folder(src, Path(tmp) / f"p{r}", purifier=det.purifier, progress=False)
            times["purify"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            detect_folder(src, Path(tmp) / f"d{r}.csv", detector=det, progress=False)
            times["detect"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            purify_folder_detected(src, Path(tmp) / f"s{r}", skip_cloaked=True, detector=det, progress=False)
            times["purify --skip-cloaked"].append(time.perf_counter() - t0)
    base = min(times["purify"])
    rows = [{"job": k, "images": n, "best_s": min(v), "images_per_s": n / min(v), "ratio": min(v) / base} for k, v in times.items()]
    name = det_path if det_path in SHIPPED_DETECTORS or det_path is None else Path(det_path).stem
    write_tables("detect-speed" if name in (None, "default") else f"detect-{name}-speed", "Cloak detection speed vs purification", [
        Table("Folder jobs on the same chips (best of %d, alternated in one process)" % repeats, rows,
              [("job", "job", "{}"), ("images", "images", "{}"), ("best_s", "seconds", "{:.2f}"),
               ("images_per_s", "images/s", "{:.1f}"), ("ratio", "time vs purify", "{:.2f}x")], csv="")],
        out_dir or RESULTS_DIR, baseline=f"`puface purify` folder job: {n / base:.1f} images/s")


def calibrate(root: Path, natural: Path, attacks: list[str], det_path: str | None, seed: int, out_dir: Path | None) -> None:
    """`puface calibrate-detector` on half of a natural source's photos (every other file of each identity
    folder), then false positives on the other half and on unseen LFW chips, and TPR on the cached test
    cloaks, before and after."""
    import shutil
    import tempfile

    from puface.attacks.cache import CloakCache
    from puface.data.loading import load_images
    from puface.detection import load_detector
    from puface.detection.folder import calibrate_on_folder
    from puface.io.files import list_image_files

    det = load_detector(det_path)
    chips = ordered_chips(root / "lfw-chips150", "test", seed)
    nat = features(det, load_images(chips)[0], "natural test chips")["score"]
    cache = CloakCache(cached_only=True)
    cloaked = {}
    for text in attacks:
        label, table, n = parse_attack(text)
        try:
            cl, _, _ = cache.cloak(make_attack(table, seed), chips[: n or 120], progress=False)
        except Exception as e:
            print(f"{label}: skipped ({e})", file=sys.stderr)
            continue
        cloaked[label] = features(det, cl, label)["score"]
    with tempfile.TemporaryDirectory() as tmp:
        halves = {"cal": Path(tmp) / "cal" / natural.name, "held": Path(tmp) / "held" / natural.name}
        for i, f in enumerate(sorted(list_image_files(natural))):
            dst = halves["cal" if i % 2 == 0 else "held"] / f.relative_to(natural)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
        held = folder_fpr(det, halves["held"], False, det.threshold(), Path(tmp))
        before, after, rep = calibrate_on_folder(det, halves["cal"], f"user:{natural.name}",
                                                 scores_csv=Path(tmp) / "cal.csv", progress=False)
    # calibration keeps the component scales, so the held-out scores stand; only the threshold moved
    rows = [{"what": f"{natural.name}: the held-out half (false positives)", "n": held["n"],
             "before": held["fpr"], "after": float((held["scores"] > after).mean())},
            {"what": "unseen LFW chips (false positives)", "n": len(nat), "before": float((nat > before).mean()),
             "after": float((nat > after).mean())}]
    rows += [{"what": f"{label} (true positives)", "n": len(v), "before": float((v > before).mean()),
              "after": float((v > after).mean())} for label, v in cloaked.items()]
    write_tables("detect-calibrate", "Calibrating the detector on a user's own natural photos", [
        Table(f"`puface calibrate-detector` on every other photo of {natural.name}/ ({rep.scored} photos)", rows,
              [("what", "photos", "{}"), ("n", "images", "{}"), ("before", "flagged, shipped threshold", lambda r: f"{100 * r['before']:.2f}%"),
               ("after", "flagged, calibrated threshold", lambda r: f"{100 * r['after']:.2f}%")],
              notes=f"Threshold {before:.4f} -> {after:.4f} (1% false positives per kind of natural photo).", csv="")],
        out_dir or RESULTS_DIR, about=f"Detector: {det_path or 'shipped (detector-default.safetensors)'}.")


def thresholds(root: Path, det_path: str | None, seed: int, out_dir: Path | None) -> None:
    """Each calibration kind's own threshold (1% at the detector's confidence) and the share of two natural sets
    above it: the unseen LFW test chips (JPEG q95 files) and the johns chips (JPEG q93 files of another source).
    Says which kind sets the default threshold, what each storage threshold is, and what judging a JPEG chip by the
    kinds of its own storage alone (lower thresholds) would cost on natural photos the calibration did not see."""
    from puface.data.loading import load_images
    from puface.detection import load_detector
    from puface.detection.detector import threshold_at_fpr
    from puface.io.files import list_image_files

    det = load_detector(det_path)
    cal = det.calibration
    scores, kinds = torch.as_tensor(cal["natural_scores"]), torch.as_tensor(cal["natural_kinds"])
    sets = {"unseen LFW chips": features(det, load_images(ordered_chips(root / "lfw-chips150", "test", seed))[0], "natural test chips")["score"]}
    if (root / "johns").is_dir():
        sets["johns chips"] = features(det, load_images(sorted(list_image_files(root / "johns")))[0], "johns")["score"]
    rows = []
    for i, name in enumerate(cal["kind_names"]):
        t = threshold_at_fpr(scores[kinds == i], det.default_fpr, det.default_confidence)
        row = {"kind": name, "storage": "yes" if name in det.storage_kinds else "", "n": int((kinds == i).sum()), "threshold": t,
               "default": "sets it" if t == det.threshold() else ""}
        row.update({f"above:{k}": float((v > t).mean()) for k, v in sets.items()})
        rows.append(row)
    cols = [("kind", "calibration kind", "{}"), ("storage", "storage kind", "{}"), ("n", "photos", "{}"),
            ("threshold", "its threshold", "{:.4f}"), ("default", "default threshold", "{}")]
    cols += [(f"above:{k}", f"{k} above it ({len(v)})", lambda r, k=k: f"{100 * r[f'above:{k}']:.2f}%") for k, v in sets.items()]
    write_tables("detect-thresholds", "Cloak detection: the threshold of each calibration kind", [
        Table("Per-kind thresholds (1% false positives, held with the detector's confidence) and natural photos above them",
              rows, cols, notes=f"Default threshold {det.threshold():.4f}: the highest over the kinds that are not storage "
                                "kinds. Storage kinds only raise the threshold of a chip stored their way.", csv="")],
        out_dir or RESULTS_DIR, about=f"Detector: {det_path or 'shipped (detector-default.safetensors)'}, fingerprint {det.fingerprint()}.")


RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["cloaks", "measure", "speed", "calibrate", "thresholds"])
    ap.add_argument("--natural", default="johns", help="calibrate: a folder of natural photos (relative to --data or a path)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--attack", action="append", default=None, metavar="SPEC[@N]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--detector", default=None, help="a detector file (default: the shipped one)")
    ap.add_argument("--n", type=int, default=96, help="speed: chips timed")
    ap.add_argument("--repeats", type=int, default=2, help="speed: rounds of each job")
    ap.add_argument("--variants", type=int, default=1000, help="measure: natural chips re-encoded / resized per variant")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    ap.add_argument("--fpr", type=float, default=None, help="measure: the calibrated threshold at this false-positive rate (default: the detector's, 0.01)")
    ap.add_argument("--name", default="detect", help="measure: stem of the result files (default detect: detect.md, detect-*.csv)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    root = data_root(a.data)
    attacks = a.attack or DEFAULT_ATTACKS
    out = Path(a.out) if a.out else None
    if a.what == "cloaks":
        cloaks(root, a.split, attacks, a.seed, a.batch_size)
    elif a.what == "measure":
        measure(root, attacks, a.detector, a.seed, a.variants, out, a.name, a.fpr)
    elif a.what == "thresholds":
        thresholds(root, a.detector, a.seed, out)
    elif a.what == "calibrate":
        natural = Path(a.natural) if Path(a.natural).is_dir() else root / a.natural
        calibrate(root, natural, attacks, a.detector, a.seed, out)
    else:
        speed(root, a.detector, a.n, a.repeats, out)


if __name__ == "__main__":
    main()
