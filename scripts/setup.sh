#!/usr/bin/env bash
# Idempotent set-up of a development/run environment in ./.venv.
#
#   bash scripts/setup.sh          # venv + torch + puface with all extras (models, LPIPS, reference impls)
#   bash scripts/setup.sh --test   # the same, plus test tools and headless Chromium (for the report test)
#
# torch is installed first, on its own: on this machine `torch==2.13.0` resolves to a local CPU wheel,
# so pip never pulls a multi-GB CUDA build. Override with TORCH_SPEC (e.g. TORCH_SPEC="torch" on a GPU
# machine with a CUDA index configured). Re-running is fast: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS="all"
[ "$WITH_TEST" = 1 ] && EXTRAS="all,test"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version 2>&1)"
  "$PYTHON" -m venv .venv
fi

stamp=".venv/.puface-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS"
if [ ! -f "$stamp" ]; then
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing $TORCH_SPEC"
    .venv/bin/pip install -q --disable-pip-version-check "$TORCH_SPEC"
  fi
  echo "setup: installing puface[$EXTRAS] (editable)"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
  touch "$stamp"
fi

if [ "$WITH_TEST" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium (headless browser for the report test)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
  else
    echo "setup: chromium not found and cannot be installed (needs root + apt-get); the browser test will be skipped" >&2
  fi
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, puface; print("puface", puface.__version__, "torch", torch.__version__)'))"
