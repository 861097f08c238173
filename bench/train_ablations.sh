#!/usr/bin/env bash
# Train the purifiers compared in configs/lfw-ablations.toml (issue 8, ablations and generalisation):
# the default recipe and one change each, same cached cloaks, same short schedule.
#   bash bench/train_ablations.sh [EPOCHS]      (default 3; needs the cloaks of configs/purifier/v2.toml,
#                                                 made by `puface train-purifier --prepare-only`)
# The recipe is purifier v2's (configs/purifier/v2.toml: the shipped default when these were trained);
# v3 only adds full-setting LowKey cloaks and epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${1:-3}"
PY=.venv/bin/puface
OUT=runs/ablation
mkdir -p "$OUT"
train() {  # name config [--set ...]
  local name="$1" cfg="$2"; shift 2
  if [[ -f "$OUT/$name/best.safetensors" ]]; then echo "$name: done"; return; fi
  local t0=$SECONDS
  $PY train-purifier --config "$cfg" --out "$OUT/$name" --no-progress --set train.epochs="$EPOCHS" --set val.every="$EPOCHS" "$@"
  echo "$name: $((SECONDS - t0)) s"
}
train ref       configs/purifier/v2.toml
train k1        configs/purifier/v2.toml --set amplify.k_max=1.0
train lambda0   configs/purifier/v2.toml --set loss.feature_weight=0.0
train narrow    configs/purifier/v2.toml --set model.channels=32
train shallow   configs/purifier/v2.toml --set model.depth=4
train no-lowkey configs/purifier/no-lowkey.toml
train low-only  configs/purifier/fawkes-low-only.toml
