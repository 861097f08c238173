"""Cloak detection on identities the detector and the purifier never saw; writes bench/results/detect*.{md,csv}.

    python bench/bench_detect.py cloaks  --split test  [--attack SPEC[@N] ...]   # make / find the cached cloaks
    python bench/bench_detect.py measure [--attack SPEC[@N] ...] [--detector FILE] # AUC, TPR, FPR on every set
    python bench/bench_detect.py speed   [--n 96]                                # detect vs purify, same process

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
re-encoding the cloaks as JPEG (quality 75, 85, 95); then the false-positive rate at the calibrated threshold
on natural photos that are not chips of the calibration kind: the natural test chips re-encoded as JPEG
(q75, q85, q95) and resized (down to 112 and 75 px and back), full LFW photos aligned by `--align`
(lfw/, 400 photos), and the johns chips.
speed: `puface detect` vs `puface purify` folder jobs on the same chips, one process, alternated.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from benchtables import Table, write_tables

DEFAULT_ATTACKS = [
    "fawkes:mode=low,embedders=dlib-resnet29@120",
    "fawkes:mode=mid,embedders=dlib-resnet29@120",
    "fawkes:mode=high,embedders=dlib-resnet29@120",
    "fawkes:mode=high,embedders=sface,label=fawkes-high-sface@60",
    "lowkey:embedders=dlib-resnet29@30",
]


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["cloaks", "measure", "speed"])
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", choices=["train", "test"], default="test")
    ap.add_argument("--attack", action="append", default=None, metavar="SPEC[@N]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--detector", default=None, help="a detector file (default: the shipped one)")
    ap.add_argument("--n", type=int, default=96, help="speed: chips timed")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    root = data_root(a.data)
    attacks = a.attack or DEFAULT_ATTACKS
    if a.what == "cloaks":
        cloaks(root, a.split, attacks, a.seed, a.batch_size)
        return
    raise SystemExit(f"{a.what}: not yet")


if __name__ == "__main__":
    main()
