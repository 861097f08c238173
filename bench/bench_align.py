"""Benchmarks of face alignment; each part writes bench/results/align-<part>.{md,csv}. Parts (--parts, default all):

speed    detector cost per photo on LFW 250x250 photos and on the same photos upscaled to 1500 px:
         HOG (upsample 0/1), CNN/MMOD (upsample 0/1), alignment + paste-back; as ms and as ratios
         against HOG-upsample-1 in the same process.
parity   our chips vs the existing dlib chips (lfw-chips150) on every photo of lfw/.
paste    how much of a chip change survives paste-back + re-alignment, by refine steps.
protect  cloaking a full photo through `align_adapter` vs cloaking the chip: Fawkes (dlib-resnet29
         surrogate) on N LFW photos; the embedding shift of the re-detected, re-aligned face under
         dlib-resnet29 (white box) and SFace (transfer), photo saved as PNG and as JPEG q95.

    python bench/bench_align.py --data $PUFACE_DATA [--parts speed,parity,paste,protect] [--n 50] [--mode high]

--data: the folder holding the data sets lfw/ (250x250 LFW photos) and lfw-chips150/ (default $PUFACE_DATA).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from puface.align import FaceAligner, FaceDetector, align_adapter, extract_chip, feather_mask, paste_back
from puface.io.images import read_image

from benchtables import Table, write_tables


def lfw_sample(data: Path, n: int, seed: int = 0) -> list[Path]:
    photos = sorted((data / "lfw").glob("*/*.jpg"))
    rng = np.random.default_rng(seed)
    idx = sorted(rng.choice(len(photos), size=min(n, len(photos)), replace=False))
    return [photos[i] for i in idx]


def timed(fn, reps: int = 1) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def part_speed(data: Path, n: int) -> dict:
    from puface.align.detect import _model

    photos = [read_image(p) for p in lfw_sample(data, n, seed=1)]
    big = [np.asarray(Image.fromarray(p).resize((1500, 1500), Image.BICUBIC)) for p in photos[:5]]
    hog, cnn = _model("hog"), _model("cnn")
    rows = {}
    for name, fn in (
        ("hog_up0", lambda im: hog(im, 0)),
        ("hog_up1", lambda im: hog(im, 1)),
        ("cnn_up0", lambda im: cnn(im, 0)),
        ("cnn_up1", lambda im: cnn(im, 1)),
    ):
        found = sum(len(fn(im)) > 0 for im in photos)
        ms = 1000 * timed(lambda: [fn(im) for im in photos]) / len(photos)
        rows[name] = {"ms_per_photo_250px": round(ms, 1), "photos_with_face": f"{found}/{len(photos)}"}
    det = FaceDetector("hog", upsample=1, max_side=1200)
    al = FaceAligner(150, det, pick="center")
    rows["align_hog_up1_250px"] = {"ms_per_photo_250px": round(1000 * timed(lambda: [al.align(im) for im in photos]) / len(photos), 1)}
    rows["align_hog_up1_1500px_max_side_1200"] = {"ms_per_photo": round(1000 * timed(lambda: [al.align(im) for im in big]) / len(big), 1),
                                                  "photos_with_face": f"{sum(bool(al.align(im).faces) for im in big)}/{len(big)}"}
    full = FaceAligner(150, FaceDetector("hog", upsample=1, max_side=100000), pick="center")
    rows["align_hog_up1_1500px_full_res"] = {"ms_per_photo": round(1000 * timed(lambda: [full.align(im) for im in big[:2]]) / 2, 1)}
    faces = [al.align(im).faces for im in photos]
    photos = [im for im, f in zip(photos, faces) if f]
    faces = [f[0] for f in faces if f]
    rng = np.random.default_rng(0)
    for steps in (0, 2):
        def paste():
            for im, f in zip(photos, faces):
                paste_back(im, [(f.transform, f.chip, np.clip(f.chip + rng.normal(0, 5, f.chip.shape), 0, 255))], refine_steps=steps)
        rows[f"paste_back_refine{steps}"] = {"ms_per_face": round(1000 * timed(paste) / len(photos), 1)}
    base = rows["hog_up1"]["ms_per_photo_250px"]
    for k in ("hog_up0", "cnn_up0", "cnn_up1", "align_hog_up1_250px"):
        rows[k]["ratio_vs_hog_up1"] = round(rows[k]["ms_per_photo_250px"] / base, 2)
    return rows


def part_parity(data: Path) -> dict:
    al = FaceAligner(150, FaceDetector("hog+cnn", cnn_upsample=1), pick="center", min_face=0)
    diffs, dets, missing = [], {"hog": 0, "cnn": 0}, 0
    for p in sorted((data / "lfw").glob("*/*.jpg")):
        ref_path = data / "lfw-chips150" / p.parent.name / p.name
        pf = al.align(read_image(p))
        if not pf.faces:
            missing += 1
            continue
        f = pf.faces[0]
        dets[f.face.detector] += 1
        diffs.append(np.abs(f.chip.astype(np.float64) - read_image(ref_path)).mean())
    d = np.array(diffs)
    return {"photos": len(d) + missing, "no_face": missing, "detector": dets,
            "mean_abs_diff_grey_levels": {"median": round(float(np.median(d)), 3), "p95": round(float(np.percentile(d, 95)), 3), "max": round(float(d.max()), 3)},
            "chips_over_2_levels": int((d > 2).sum())}


def part_paste(data: Path, n: int) -> dict:
    al = FaceAligner(150, FaceDetector("hog"), pick="center")
    inner = feather_mask(150, 8) == 1
    yy, xx = np.mgrid[0:150, 0:150]
    rng = np.random.default_rng(0)
    kinds = {"smooth": lambda: (10 * np.sin(xx / 5.0 + yy / 7.0))[..., None] * np.ones(3),
             "noise": lambda: rng.uniform(-8, 8, (150, 150, 3))}
    out = {}
    photos = [read_image(p) for p in lfw_sample(data, n, seed=2)]
    faces = [al.align(im).faces for im in photos]
    photos = [im for im, f in zip(photos, faces) if f]
    faces = [f[0] for f in faces if f]
    for kind, make in kinds.items():
        changes = [make() for _ in photos]
        for steps in (0, 1, 2, 4):
            corr, err = [], []
            for im, f, ch in zip(photos, faces, changes):
                cout = np.clip(f.chip + ch, 0, 255)
                got = extract_chip(paste_back(im, [(f.transform, f.chip, cout)], refine_steps=steps), f.transform).astype(float) - f.chip
                want = (cout - f.chip)[inner]
                corr.append((got[inner] * want).sum() / np.sqrt((got[inner] ** 2).sum() * (want**2).sum()))
                err.append(np.abs(got[inner] - want).mean())
            out[f"{kind}_refine{steps}"] = {"corr": round(float(np.mean(corr)), 3), "mean_abs_err": round(float(np.mean(err)), 2)}
    out["scale_photo_px_per_chip_px"] = round(float(np.mean([f.transform.scale for f in faces])), 3)
    return out


def _embed(emb, chips: list[np.ndarray]):
    import torch

    x = torch.stack([torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1).float() / 255 for c in chips])
    return emb.embed(x)


def _jpeg(im: np.ndarray, q: int = 95) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=q, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def part_protect(data: Path, n: int, mode: str, cache_dir: Path) -> dict:
    import torch

    from puface.attacks import create_attack
    from puface.models.registry import create_embedder
    from puface.io.jobs import FileJob, LoadedImage, Outcome

    torch.manual_seed(0)
    paths = lfw_sample(data, n, seed=3)
    photos = [read_image(p) for p in paths]
    det = FaceDetector("hog+cnn")
    al = FaceAligner(150, det, pick="center")
    atk = create_attack("fawkes", mode=mode, embedders=["dlib-resnet29"], seed=0)
    key = hashlib.sha1(json.dumps(atk.config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cache = cache_dir / f"{atk.name}-{key}"
    cache.mkdir(parents=True, exist_ok=True)

    def chip_file(chip: np.ndarray) -> Path:
        return cache / f"{hashlib.sha1(chip.tobytes()).hexdigest()}.png"

    def cloak_chips(items: list[LoadedImage]) -> list[Outcome]:
        """The chip function of `cloak --align`: Fawkes on uint8 chips, cached on disk by chip content."""
        todo = [it for it in items if not chip_file(it.image).is_file()]
        for i in range(0, len(todo), 10):
            part = todo[i : i + 10]
            x = torch.stack([torch.from_numpy(it.image.copy()).permute(2, 0, 1).float() / 255 for it in part])
            for it, y in zip(part, atk.run(x).images):
                Image.fromarray((y.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()).save(chip_file(it.image))
        return [Outcome.ok(read_image(chip_file(it.image))) for it in items]

    # one face per photo (the one closest to the centre, as in LFW) so that chip and photo compare 1:1
    clean = [al.align(im).faces[0] for im in photos]
    t0 = time.perf_counter()
    cloak_chips([LoadedImage(FileJob(p, p, Path(p.name)), f.chip) for p, f in zip(paths, clean)])
    attack_s = time.perf_counter() - t0
    chip_cloaked = [read_image(chip_file(f.chip)) for f in clean]

    evaluators = {"dlib-resnet29": create_embedder("dlib-resnet29"), "sface": create_embedder("sface")}
    clean_emb = {k: _embed(e, [f.chip for f in clean]) for k, e in evaluators.items()}

    def shift(name: str, chips: list[np.ndarray]) -> dict:
        e = _embed(evaluators[name], chips)
        cos = (e * clean_emb[name]).sum(1)
        l2 = (e - clean_emb[name]).norm(dim=1)
        return {"cos_shift_mean": round(float((1 - cos).mean()), 4), "l2_mean": round(float(l2.mean()), 4),
                "share_l2_over_0.6": round(float((l2 > 0.6).float().mean()), 3)}

    results: dict = {"photos": len(paths), "attack": atk.name, "attack_config": atk.config,
                     "attack_seconds_uncached": round(attack_s, 1)}
    conditions = {"chip (PNG)": chip_cloaked, "chip (JPEG q95)": [_jpeg(c) for c in chip_cloaked]}
    for feather in (8, 4):
        m = feather_mask(150, feather)[..., None]
        conditions[f"chip feathered {feather} px, no photo"] = [
            np.clip(np.floor(f.chip + m * (c.astype(float) - f.chip) + 0.5), 0, 255).astype(np.uint8) for f, c in zip(clean, chip_cloaked)]
    adapter_ms = {}
    for feather, steps in ((8, 0), (8, 2), (4, 2), (4, 4), (2, 4)):
        # the real `cloak --align` path: detect, align, cloak chips (cached), paste back
        process = align_adapter(cloak_chips, chip_size=150, no_face="skip", aligner=FaceAligner(150, det, pick="center"),
                                feather=feather, refine_steps=steps)
        items = [LoadedImage(FileJob(p, p, Path(p.name)), im, None, None, "JPEG") for p, im in zip(paths, photos)]
        t0 = time.perf_counter()
        outs = process(items)
        adapter_ms[f"feather {feather}, refine {steps}"] = round(1000 * (time.perf_counter() - t0) / len(items), 1)
        assert all(o.status == "ok" for o in outs), [o.reason for o in outs if o.status != "ok"]
        for fmt, conv in (("PNG", lambda a: a), ("JPEG q95", _jpeg)):
            if fmt == "JPEG q95" and (feather, steps) not in ((8, 2), (4, 4)):
                continue
            again = []
            for o, f in zip(outs, clean):
                pf = al.align(conv(o.image))  # re-detect and re-align the published photo
                again.append(pf.faces[0].chip if pf.faces else extract_chip(conv(o.image), f.transform))
            conditions[f"photo --align feather {feather} refine {steps} ({fmt})"] = again
    for cond, chips in conditions.items():
        results[cond] = {k: shift(k, chips) for k in evaluators}
    results["adapter_ms_per_photo_with_cached_cloaks"] = adapter_ms
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ["PUFACE_DATA"]) if os.environ.get("PUFACE_DATA") else None,
                    help="the folder holding lfw/ and lfw-chips150/ (default $PUFACE_DATA)")
    ap.add_argument("--parts", default="speed,parity,paste,protect")
    ap.add_argument("--n", type=int, default=50, help="photos for the protect part")
    ap.add_argument("--mode", default="high", help="Fawkes mode for the protect part")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--cache", type=Path, default=None, help="cloaked chips cache (default $PUFACE_HOME/bench-align-cloaks)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the tables go (default bench/results)")
    args = ap.parse_args()
    out_dir = args.out_dir or Path(__file__).parent / "results"
    if args.data is None or not (args.data / "lfw").is_dir():
        print(f"{args.data}/lfw not found; pass --data", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(2)
    res: dict = {}
    parts = args.parts.split(",")
    if "speed" in parts:
        res["speed"] = part_speed(args.data, 20)
        print(json.dumps({"speed": res["speed"]}, indent=1), flush=True)
        rows = [{"step": k, **v} for k, v in res["speed"].items()]
        write_tables("align-speed", "Alignment: detector and paste-back cost", [Table(
            "20 LFW photos (250x250); 5 of them upscaled to 1500 px", rows,
            [("step", "step", "{}"), ("ms_per_photo_250px", "ms / photo (250 px)", "{}"), ("ms_per_photo", "ms / photo (1500 px)", "{}"),
             ("ms_per_face", "ms / face", "{}"), ("ratio_vs_hog_up1", "vs HOG up 1", "{}x"), ("photos_with_face", "faces found", "{}")])],
            out_dir, baseline="HOG with upsample 1 (the default detector) on the same photos.")
    if "parity" in parts:
        res["parity"] = part_parity(args.data)
        print(json.dumps({"parity": res["parity"]}, indent=1), flush=True)
        r = res["parity"]
        row = {"photos": r["photos"], "no_face": r["no_face"], "hog": r["detector"]["hog"], "cnn": r["detector"]["cnn"],
               **{f"diff_{k}": v for k, v in r["mean_abs_diff_grey_levels"].items()}, "over_2": r["chips_over_2_levels"]}
        write_tables("align-parity", "Alignment: our chips vs the lfw-chips150 chips", [Table(
            "every photo of lfw/, HOG up 1 with a CNN up 1 fallback, the face closest to the centre", [row],
            [("photos", "photos", "{}"), ("no_face", "no face", "{}"), ("hog", "HOG", "{}"), ("cnn", "CNN", "{}"),
             ("diff_median", "mean abs diff per chip: median", "{}"), ("diff_p95", "p95", "{}"), ("diff_max", "max", "{}"),
             ("over_2", "chips over 2 grey levels", "{}")])], out_dir)
    if "paste" in parts:
        res["paste"] = part_paste(args.data, 20)
        print(json.dumps({"paste": res["paste"]}, indent=1), flush=True)
        r = res["paste"]
        rows = [{"change": kind, **{f"refine{st}": f"corr {r[f'{kind}_refine{st}']['corr']}, err {r[f'{kind}_refine{st}']['mean_abs_err']}"
                                    for st in (0, 1, 2, 4)}} for kind in ("smooth", "noise")]
        write_tables("align-paste", "Alignment: paste-back fidelity", [Table(
            f"20 LFW photos; a change added to the chip, pasted back, the photo re-cut with the same transform "
            f"({r['scale_photo_px_per_chip_px']} photo px per chip px)", rows,
            [("change", "change (smooth: 10 sin; noise: uniform +-8)", "{}"), ("refine0", "refine 0", "{}"), ("refine1", "refine 1", "{}"),
             ("refine2", "refine 2 (default)", "{}"), ("refine4", "refine 4", "{}")])], out_dir)
    if "protect" in parts:
        from puface.utils.paths import cache_dir

        res["protect"] = part_protect(args.data, args.n, args.mode, args.cache or cache_dir("bench-align-cloaks"))
        print(json.dumps({"protect": res["protect"]}, indent=1), flush=True)
        r = res["protect"]
        rows = [{"condition": c, **{f"{m}_{k}": v[m][k] for m in v for k in v[m]}} for c, v in r.items()
                if isinstance(v, dict) and "dlib-resnet29" in v]
        cols = [("condition", "condition", "{}")] + [(f"{m}_{k}", f"{m} {h}", "{}") for m in ("dlib-resnet29", "sface")
                                                    for k, h in (("cos_shift_mean", "1-cos"), ("l2_mean", "L2"), ("share_l2_over_0.6", ">0.6"))]
        write_tables("align-protect", f"Alignment: cloaking a photo with --align vs cloaking the chip ({r['attack']})", [Table(
            f"{r['photos']} LFW photos; the published photo re-detected and re-aligned before embedding; shift against the clean chip",
            rows, cols, notes=f"Attack time for the chips (uncached): {r['attack_seconds_uncached']} s. Paste-back ms per photo "
                              f"(cached cloaks): {r['adapter_ms_per_photo_with_cached_cloaks']}.")], out_dir)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
