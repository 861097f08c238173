"""Device check for the attacks: Fawkes and LowKey on a CUDA device against the same run on CPU.

On --n johns chips (150x150) with the dlib-resnet29 surrogate: wall seconds per image on the device,
the DSSIM budget / per-pixel bounds on the device's outputs, the embedding shift, and the CPU-vs-device
difference of the cloaks for the same seed (the random starts are drawn on CPU, so they are identical;
float rounding differs). Then `puface cloak --device cuda` and `CloakCache` on the device.

    python3 bench/gpu_check_attacks.py --device cuda --n 16
Prints one JSON line per check and a Markdown summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def log(d):
    print(json.dumps(d), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=16, help="chips")
    ap.add_argument("--cpu-n", type=int, default=4, help="chips also run on CPU for the comparison")
    args = ap.parse_args()

    from puface.attacks import create_attack
    from puface.attacks.cache import CloakCache
    from puface.data.johns import fetch_johns
    from puface.imageio import read_image, to_tensor

    paths = sorted(fetch_johns().glob("*/*.jpg"))[: args.n]
    x = torch.stack([to_tensor(read_image(p)) for p in paths])
    dev = torch.device(args.device)
    summary = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__}
    ok = True

    for name, kw, bound in (
        ("fawkes-high", dict(mode="high"), None),
        ("lowkey", dict(perceptual="auto"), 50 * 0.0025 + 0.005),
    ):
        atk = create_attack(name.split("-")[0], embedders=["dlib-resnet29"], device=dev, batch_size=16, **kw)
        atk.run(x[:2])  # warm-up (kernels, LPIPS weights)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = atk.run(x, quantize_output=True)
        wall = time.perf_counter() - t
        cpu_atk = create_attack(name.split("-")[0], embedders=["dlib-resnet29"], device="cpu", batch_size=16, **kw)
        t = time.perf_counter()
        ref = cpu_atk.run(x[: args.cpu_n], quantize_output=True)
        cpu_wall = time.perf_counter() - t
        d = (res.images[: args.cpu_n] - ref.images).abs()
        rec = {
            "check": name,
            "perceptual": getattr(atk.settings, "perceptual", None),
            "device_s_per_img": wall / len(x),
            "cpu_s_per_img_16_cores": cpu_wall / args.cpu_n,
            "dssim_max": res.stats["dssim"].max().item(),
            "linf_max_255": (res.stats["linf"].max() * 255).item(),
            "shift_mean": res.stats["shift_dlib-resnet29"].mean().item(),
            "cpu_shift_mean": ref.stats["shift_dlib-resnet29"].mean().item(),
            "cpu_vs_device_mean_abs_255": (d.mean() * 255).item(),
            "cpu_vs_device_max_abs_255": (d.max() * 255).item(),
            "images_on_input_device": res.images.device.type == "cpu",
        }
        if name.startswith("fawkes"):
            th = atk.settings.th
            rec["budget_ok"] = bool(((res.stats["dssim"] <= 1.1 * th + 2e-4) | (res.stats["fallback"] == 1)).all())
            rec["cap_ok"] = bool((res.stats["linf"] <= 15 / 255 + 1e-6).all())
        else:
            rec["bound_ok"] = bool((res.stats["linf"] <= bound + 1 / 255).all())
        rec["shift_ok"] = rec["shift_mean"] > 0.3
        ok &= all(v for k, v in rec.items() if k.endswith("_ok"))
        log(rec)
        summary[name] = rec

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        atk = create_attack("fawkes", mode="custom", steps=5, embedders=["dlib-resnet29"], device=dev)
        cache = CloakCache(tmp / "cache")
        k = min(4, len(paths))
        a, kept, _ = cache.cloak(atk, paths[:k], progress=False)
        b, _, _ = cache.cloak(atk, paths[:k], progress=False)
        rec = {"check": "cloak_cache", "n": len(kept), "reused_equal": bool(torch.equal(a, b)), "files": cache.cached_count(atk)}
        rec["cache_ok"] = rec["reused_equal"] and rec["files"] == k
        ok &= rec["cache_ok"]
        log(rec)
        src = fetch_johns()
        cmd = [sys.executable, "-m", "puface.cli", "cloak", "--mode", "custom", "--steps", "5", "--surrogate", "dlib-resnet29",
               "--device", str(dev), "--no-progress", str(src), str(tmp / "out")]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        rec = {"check": "cli", "rc": p.returncode, "wall_s": time.perf_counter() - t, "outputs": len(list((tmp / "out").rglob("*.png"))),
               "stdout": p.stdout.strip().splitlines()[:1], "stderr_tail": p.stderr.strip().splitlines()[-2:]}
        rec["cli_ok"] = p.returncode == 0 and rec["outputs"] == len(list(src.glob("*/*.jpg")))
        ok &= rec["cli_ok"]
        log(rec)
    log({"all_ok": ok})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
