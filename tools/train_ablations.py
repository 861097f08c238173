"""Train the purifiers that lfw-ablations compares: the shipped recipe and one change each.

    python tools/train_ablations.py                       # all variants, one at a time, runs/ablation-v4/<name>/
    python tools/train_ablations.py --jobs 6 --device cuda --only ref,k1
    python tools/train_ablations.py --list                # the variants and their command lines

Every variant is `puface train-purifier --config RECIPE` with the recipe's full schedule plus the changes
below (so `ref` is the shipped recipe retrained). Variants:

  ref        the recipe as is                 k1 / k6      amplification k_max = 1 (none) / 6
  lambda0    image loss only                  lambda0.1    feature weight 0.1 (10x)
  lambda0.03 feature weight 0.03 (3x)         ens192       192 LowKey-ensemble cloaks (v5's; for the v6 recipe's 576)
  narrow     32 channels                      shallow      depth 4 (4 conv + 4 deconv)
  no-lowkey  no LowKey cloaks at all (tested on LowKey: does it generalise?)
  low-only   only Fawkes `low` cloaks (fawkes-low-only; tested on `high`)
  dlib-only  no cloaks made against SFace and dlib alone in the feature loss (tested on SFace victims)
  adaptive   plus 160 adaptive cloaks: Fawkes high optimised through the shipped purifier with exact
             gradients (one round of adversarial training; tested against a new adaptive attack)

NAME-sN repeats a variant with train.seed = N (same data and cloaks; another initialisation, batch
order and augmentation): `--only ref-s1,ref-s2` measures how much one recipe varies from run to run.

Each run writes OUT/<name>/ (best.safetensors, metrics.jsonl, config.json, log) and OUT/times.json (wall
seconds per variant, the device). Runs resume where they stopped. With --pack DIR the finished runs are
also tarred into DIR after each one finishes (for a device machine's few returned files).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOWKEY = ["lowkey", "lowkey-s20", "lowkey-ensemble"]
ADAPTIVE = ('label = "fawkes-high-adaptive", name = "fawkes", mode = "high", embedders = ["dlib-resnet29"], '
            'through = "default", gradient = "exact", images = {images}')

# name -> (config or None for the recipe, extra train-purifier arguments)
VARIANTS: dict[str, tuple[str | None, list[str]]] = {
    "ref": (None, []),
    "adaptive": (None, ["--add-attack", ADAPTIVE]),  # {images}: --adaptive-images
    "k1": (None, ["--set", "amplify.k_max=1.0"]),
    "lambda0": (None, ["--set", "loss.feature_weight=0.0"]),
    "no-lowkey": (None, [a for lab in LOWKEY for a in ("--drop-attack", lab)]),
    "low-only": ("fawkes-low-only", []),
    "dlib-only": (None, ["--drop-attack", "fawkes-high-sface", "--drop-attack", "lowkey-ensemble",
                         "--set", 'loss.embedders=["dlib-resnet29"]', "--set", 'val.embedders=["dlib-resnet29"]']),
    "k6": (None, ["--set", "amplify.k_max=6.0"]),
    "narrow": (None, ["--set", "model.channels=32"]),
    "shallow": (None, ["--set", "model.depth=4"]),
    "lambda0.1": (None, ["--set", "loss.feature_weight=0.1"]),
    "lambda0.03": (None, ["--set", "loss.feature_weight=0.03"]),
    # for the v6 recipe (default, 576 LowKey-ensemble cloaks): back to v5's 192
    "ens192": (None, ["--drop-attack", "lowkey-ensemble", "--add-attack", 'label = "lowkey-ensemble", name = "lowkey", '
                      'embedders = ["dlib-resnet29", "sface"], images = 192']),
}


def split_name(name: str, known: dict | None = VARIANTS) -> tuple[str, int | None]:
    """"k1-s2" -> ("k1", 2): a variant repeated with train.seed = 2 (same data, another initialisation,
    batch order and augmentation); "k1" -> ("k1", None). The base must be one of `known` (the variants
    here) unless `known` is None (any label)."""
    base, _, tail = name.rpartition("-s")
    if base and tail.isdigit() and (known is None or base in known):
        return base, int(tail)
    return name, None


def command(name: str, args: argparse.Namespace) -> list[str]:
    base, seed = split_name(name)
    cfg, extra = VARIANTS[base]
    if seed is not None:
        extra = extra + ["--set", f"train.seed={seed}"]
    cmd = [sys.executable, "-m", "puface", "train-purifier", "--config", cfg or args.recipe, "--out",
           str(args.out / name), "--no-progress", "--device", args.device]
    if cfg is not None:  # another config: give it the recipe's schedule
        cmd += ["--set", f"train.epochs={args.recipe_epochs}", "--set", f"val.every={args.recipe_val_every}"]
    if args.data:
        cmd += ["--set", f"data.root={Path(args.data).resolve()}"]
    extra = [a.format(images=args.adaptive_images) if a == ADAPTIVE else a for a in extra]
    return cmd + extra + shlex.split(args.extra)


def model_fingerprints(names) -> dict[str, str]:
    """name -> fingerprint of the model's weights as this machine converts them (part of cloak cache keys)."""
    from puface.utils.fingerprint import module_fingerprint
    from puface.models.registry import load_embedder

    return {name: module_fingerprint(load_embedder(name).net) for name in names}


def check_fingerprints(path: Path) -> None:
    """Stop unless the feature-loss models convert to the weights the cloak cache keys were made with."""
    want = json.loads(path.read_text())
    got = model_fingerprints(want)
    if got != want:
        raise SystemExit(f"model fingerprints differ from {path}: {got} != {want}; the cached cloaks would not be found")
    print(f"fingerprints match: {got}", flush=True)


def cached_cloaks(config: str | Path, data: str = "") -> tuple[set[Path], dict]:
    """The cloak cache files purifier training with `config` reads, and its data summary, from the cache
    only: stops at the first cloak that is not cached, since training would make it here, possibly not as it
    was made elsewhere: the device run of 2026-11-27 lacked stlpips-pytorch, so LowKey fell back to
    1 - SSIM, missed the cache and trained on other cloaks (LowKey now refuses that fallback unless asked for)."""
    from puface.utils.errors import CloakNotCachedError
    from puface.training.config import load_config
    from puface.training.data import cloak_with_cache
    from puface.training.train import prepare_data

    cfg = load_config(config, {"data.root": data} if data else None)
    used: set[Path] = set()
    cloak_fn = cloak_with_cache(cfg.data.cache or None, batch_size=cfg.data.cloak_batch_size, progress=False,
                                cached_only=True, used=used)
    try:
        _, _, summary = prepare_data(cfg, cloak_fn=cloak_fn, log=lambda s: None)
    except CloakNotCachedError as e:
        raise SystemExit(f"{config}: {e}") from None
    return used, summary


def pack(out: Path, names: list[str], dest: Path, per_tar: int = 4) -> None:
    """Tar the finished runs (best.safetensors and the small files) into dest/ablation-<i>.tar."""
    dest.mkdir(parents=True, exist_ok=True)
    done = [n for n in names if (out / n / "best.safetensors").is_file()]
    for i in range(0, len(done), per_tar):
        tmp = dest / f".ablation-{i // per_tar}.tar.tmp"
        with tarfile.open(tmp, "w") as tar:
            for n in done[i : i + per_tar]:
                for f in sorted((out / n).iterdir()):
                    if f.suffix != ".pt":  # checkpoints with optimiser state stay behind
                        tar.add(f, arcname=f"{n}/{f.name}")
        os.replace(tmp, dest / f"ablation-{i // per_tar}.tar")
    if (out / "times.json").is_file():
        (dest / "times.json").write_bytes((out / "times.json").read_bytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation-v4"))
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all, in the order above)")
    ap.add_argument("--jobs", type=int, default=1, help="variants trained at once (a GPU takes several)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", default="", help="override data.root (e.g. a packed copy, tools/gpu_pack.py)")
    ap.add_argument("--deadline", type=float, default=0, help="start no variant after this many seconds (0: none)")
    ap.add_argument("--pack", type=Path, default=None, help="tar finished runs into this folder as they finish")
    ap.add_argument("--check-fingerprints", type=Path, default=None, help="fingerprints.json from tools/gpu_pack.py")
    ap.add_argument("--prepare-added", action="store_true",
                    help="only generate the cloaks of the attacks the variants add (no training)")
    ap.add_argument("--adaptive-images", type=int, default=160, help="adaptive cloaks the `adaptive` variant adds")
    ap.add_argument("--extra", default="", help="more train-purifier arguments for every variant, e.g. '--set train.epochs=1'")
    ap.add_argument("--list", action="store_true", help="print each variant's command and exit")
    args = ap.parse_args()
    os.chdir(REPO)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(VARIANTS)
    unknown = [n for n in names if split_name(n)[0] not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    from puface.training.config import load_config
    from puface.attacks import attack_label

    base = load_config(args.recipe)
    args.recipe_epochs, args.recipe_val_every = base.train.epochs, base.val.every
    if args.list:
        for n in names:
            print(f"{n}: {shlex.join(command(n, args))}")
        return
    if args.check_fingerprints:
        check_fingerprints(args.check_fingerprints)
        used, _ = cached_cloaks(args.recipe, args.data)
        print(f"{args.recipe}: all {len(used)} cloaks it reads are cached", flush=True)
    if args.prepare_added:
        labels = [a for lab in (attack_label(a) for a in base.attacks) for a in ("--drop-attack", lab)]
        for n in names:
            cfg, extra = VARIANTS[split_name(n)[0]]
            if "--add-attack" in extra:
                cmd = command(n, args) + labels + ["--prepare-only"]
                print(f"{n}: {shlex.join(cmd)}", flush=True)
                subprocess.run(cmd, check=True)
        return

    args.out.mkdir(parents=True, exist_ok=True)
    times_path = args.out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    t_start = time.monotonic()

    def run(n: str) -> tuple[str, int, float]:
        (args.out / n).mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(args.out / n / "train.log", "a") as log:
            rc = subprocess.run(command(n, args), stdout=log, stderr=subprocess.STDOUT).returncode
        return n, rc, time.monotonic() - t0

    env_device = args.device
    if args.device.startswith("cuda") or args.device == "auto":
        import torch

        if torch.cuda.is_available():
            env_device = torch.cuda.get_device_name(0)
    failed = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        queue = [n for n in names if not (args.out / n / "result.json").is_file()]
        running = set()
        while queue or running:
            while queue and len(running) < args.jobs and not (args.deadline and time.monotonic() - t_start > args.deadline):
                n = queue.pop(0)
                print(f"start {n} at {time.monotonic() - t_start:.0f} s", flush=True)
                running.add(pool.submit(run, n))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                n, rc, sec = fut.result()
                print(f"{n}: rc {rc}, {sec:.0f} s (at {time.monotonic() - t_start:.0f} s)", flush=True)
                if rc:
                    failed.append(n)
                    print((args.out / n / "train.log").read_text()[-3000:], flush=True)
                else:
                    times[n] = {"seconds": round(sec, 1), "device": env_device, "jobs_at_once": args.jobs}
                    times_path.write_text(json.dumps(times, indent=2) + "\n")
                if args.pack:
                    pack(args.out, names, args.pack)
        if queue:
            print(f"deadline: not started {queue}", flush=True)
    if failed:
        raise SystemExit(f"failed: {failed} (logs in {args.out}/<name>/train.log)")


if __name__ == "__main__":
    main()
