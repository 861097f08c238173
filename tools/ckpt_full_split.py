"""Record a purifier's identity split against the full data set, for a checkpoint trained on a copy that
held only its training and validation identities (tools/gpu_pack.py, tools/gpu_v6.sh).

    python tools/ckpt_full_split.py runs/v6-gpu/ref/best.safetensors --data lfw-chips150/ \
        --out src/puface/weights/purifier-default.safetensors

Such a checkpoint lists no held-out identities (there were none in the copy) and names the copy's path.
This recomputes the split from the checkpoint's own settings (seed, heldout_min_images, fractions,
max_per_identity) on the full data, stops unless its training and validation identities are exactly the
checkpoint's, and writes a copy whose data summary names the full root and lists the held-out identities.
The weights are copied unchanged (checked by fingerprint).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def full_split(ckpt_path: str | Path, data: str | Path):
    """(purifier, data summary with the full data's split); raises SystemExit when train/val differ."""
    from puface.purifier import Purifier
    from puface.training.data import folder_identity_split

    p = Purifier.load(ckpt_path)
    summary = dict(p.meta.get("data_summary") or {})
    split_cfg = summary.get("split") or {}
    if not summary.get("train_identities") or "seed" not in split_cfg:
        raise SystemExit(f"{ckpt_path}: the checkpoint records no identity split")
    split = folder_identity_split(data, seed=split_cfg["seed"], heldout_min_images=split_cfg["heldout_min_images"],
                                  heldout_fraction=split_cfg["heldout_fraction"], val_fraction=split_cfg["val_fraction"],
                                  max_per_identity=split_cfg.get("max_per_identity"))
    for name, got, want in (("training", split.train, summary["train_identities"]),
                            ("validation", split.val, summary.get("val_identities") or [])):
        if sorted(got) != sorted(want):
            raise SystemExit(f"{data}: its {name} identities differ from {ckpt_path}'s ({len(set(got) ^ set(want))} "
                             "names in only one): not the data set this purifier was split from")
    summary["root"] = str(Path(data).resolve())
    summary["heldout_identities"] = sorted(split.heldout)
    return p, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True, help="the full identity folders the copy was taken from")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from puface.utils.fingerprint import module_fingerprint
    from puface.purifier import Purifier

    p, summary = full_split(args.checkpoint, args.data)
    before = module_fingerprint(p)
    p.meta["data_summary"] = summary
    p.save(args.out)
    after = module_fingerprint(Purifier.load(args.out))
    if after != before:
        raise SystemExit(f"{args.out}: weights changed on the way ({before} -> {after})")
    print(f"{args.out}: {len(summary['train_identities'])} training, {len(summary.get('val_identities') or [])} "
          f"validation, {len(summary['heldout_identities'])} held-out identities; weights {after}")


if __name__ == "__main__":
    main()
