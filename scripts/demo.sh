#!/usr/bin/env bash
# `just demo`: both workflows of the Keras transfer-learning guide on the demo data, timed,
# then a summary table, runs/demo/report.md and runs/demo/report.html (printed last). Expects `just setup fetch-data` to have run.
# A second run reuses the store (nothing is re-embedded) and the converted model.
set -euo pipefail
cd "$(dirname "$0")/.."

XFER=target/release/xfer
DATA=data/cats_vs_dogs
SPLITS="train=train[:70%],val=train[70%:85%],test=train[85%:]"
SEED=1337
OUT=runs/demo
# The short fine-tuning schedule (about 8 minutes on 2 idle CPU cores): 5 epochs with the base
# frozen, then 1 epoch of the whole base. The guide's full schedule is `just finetune` (20 epochs
# frozen at 1e-3, then 10 epochs of the whole base at 1e-5). Override with DEMO_PHASE1_EPOCHS,
# DEMO_PHASE2_EPOCHS and DEMO_UNFREEZE_FROM (a layer name: fine-tune only from it on, faster).
PHASE1_EPOCHS=${DEMO_PHASE1_EPOCHS:-5}
PHASE2_EPOCHS=${DEMO_PHASE2_EPOCHS:-1}
UNFREEZE_FROM=${DEMO_UNFREEZE_FROM:-}

mkdir -p "$OUT"
TIMINGS="$OUT/timings.tsv"
: > "$TIMINGS"

step() {
    local name=$1
    shift
    echo >&2
    echo "==> $name: $*" >&2
    local start end
    start=$(date +%s%N)
    "$@"
    end=$(date +%s%N)
    printf '%s\t%s\n' "$name" "$(( (end - start) / 1000000 ))" >> "$TIMINGS"
}

step extract "$XFER" extract --data "$DATA" --split "$SPLITS" --seed "$SEED" \
    --model models/xception --store store --batch-size 32

step train-head "$XFER" train-head --store store --train train --val val --test test --out "$OUT/head"
step export-head "$XFER" export --model models/xception --head "$OUT/head" --out "$OUT/head/model.onnx"

if [ -f "$OUT/finetune/model.onnx" ] && [ -f "$OUT/finetune/metrics.json" ]; then
    echo
    echo "==> finetune: $OUT/finetune is complete from an earlier run; reusing it (delete the folder to retrain)"
else
    resume=()
    unfreeze=()
    if [ -n "$UNFREEZE_FROM" ]; then
        unfreeze=(--unfreeze-from "$UNFREEZE_FROM")
    fi
    if [ -f "$OUT/finetune/config.toml" ]; then
        echo "==> finetune: resuming the interrupted run in $OUT/finetune"
        resume=(--resume)
    fi
    step finetune "$XFER" finetune --data "$DATA" --model models/xception --out "$OUT/finetune" \
        --phase1-epochs "$PHASE1_EPOCHS" --phase2-epochs "$PHASE2_EPOCHS" \
        --seed "$SEED" --train "train[:70%]" --val "train[70%:85%]" --test "train[85%:]" \
        "${unfreeze[@]}" "${resume[@]}"
fi

# --predictions: a fine-tuning run of an older xfer reused above has no predictions.jsonl yet.
step evaluate-finetuned "$XFER" evaluate --model "$OUT/finetune/model.onnx" --data "$DATA" \
    --splits "$SPLITS" --seed "$SEED" --split test --json \
    --predictions "$OUT/finetune/predictions.jsonl" > "$OUT/finetune/evaluate-test.json"

# One self-contained page: curves, confusion matrices, per-class figures, the misclassified
# test images and the configs of both workflows, side by side.
step report "$XFER" report "$OUT/head" "$OUT/finetune" --data "$DATA" --out "$OUT/report.html" > /dev/null

echo
python3 scripts/demo_report.py "$OUT"
echo
echo "report: $OUT/report.html"
