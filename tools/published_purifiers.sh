#!/usr/bin/env bash
# Extract every published purifier version (CHANGELOG.md: v1-v5 from git history, v6 = the shipped file)
# into a folder, for configs that face cloaks with older recipes:
#   bash tools/published_purifiers.sh runs/published     # -> runs/published/v1.safetensors ... v6.safetensors
set -euo pipefail
out=$(mkdir -p "${1:-runs/published}" && cd "${1:-runs/published}" && pwd)
cd "$(dirname "$0")/.."
weights=src/puface/weights/purifier-default.safetensors
for pair in v1:f12d15b v2:90d3744 v3:08b6256 v4:624b8a7 v5:ba9e971; do
  git show "${pair##*:}:$weights" > "$out/${pair%%:*}.safetensors.tmp"
  mv "$out/${pair%%:*}.safetensors.tmp" "$out/${pair%%:*}.safetensors"
done
cp "$weights" "$out/v6.safetensors"
echo "published purifiers v1-v6 in $out"
