#!/usr/bin/env bash
# The precision rows of `just bench` (issue 14): `xfer quantize` of Xception (calibrated on
# 200 demo training images), then, in this one run,
#  - bare ONNX Runtime images/s of fp32 and int8 (and bf16 through OpenVINO when this xfer has
#    `--device openvino` and its library is present) on the same pre-decoded batch, fp32 twice
#    to show the drift, each in its own process for its peak RSS;
#  - a store per precision of the demo and of scikit-learn's digits (scripts/digits.py), the
#    features' relative L2 against the fp32 rows, and `xfer train-head` on each store.
# Output: OUT/table.md (and every intermediate in OUT). Usage: precision.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-target/bench/precision}
XFER=target/release/xfer
PY=.venv/bin/python
SPLITS="train=train[:70%],val=train[70%:85%],test=train[85%:]"
mkdir -p "$OUT"

$PY scripts/digits.py data/digits
INT8="$OUT/xception-int8"
"$XFER" quantize --model models/xception --calibration data/cats_vs_dogs --images 200 \
    --method "${QUANT_METHOD:-percentile}" --out "$INT8" --quiet

declare -A MODEL=([fp32]=models/xception [int8]="$INT8")
DEVICE_FP32=(--device cpu)
bf16=()
if "$XFER" extract --help 2>/dev/null | grep -q -- "--precision" && "$XFER" doctor --device openvino >/dev/null 2>&1; then
    MODEL[bf16]=models/xception
    bf16=(--device openvino --precision bf16)
else
    echo "bf16: skipped (this xfer has no --device openvino with its library; see \`just setup-openvino\`)"
fi

cargo build -q --release --locked -p xfer-quant --example precision_bench
BENCH=target/release/examples/precision_bench
: > "$OUT/speed.txt"
for precision in fp32 int8 fp32 int8; do
    echo "$precision: $($BENCH "${MODEL[$precision]}" 7 cpu)" | tee -a "$OUT/speed.txt"
done
if [ ${#bf16[@]} -gt 0 ]; then
    # bf16 through OpenVINO, and whether the int8 QDQ model runs faster there than on ORT's CPU provider.
    echo "bf16: $($BENCH models/xception 7 openvino bf16)" | tee -a "$OUT/speed.txt"
    echo "int8-openvino: $($BENCH "$INT8" 7 openvino fp32)" | tee -a "$OUT/speed.txt"
fi

# `just bench` runs `just extract` first: its store/ is the demo's fp32 store with these splits.
if [ -d store ] && [ ! -d "$OUT/store-cats_vs_dogs-fp32" ]; then
    cp -r store "$OUT/store-cats_vs_dogs-fp32"
fi
for data in cats_vs_dogs digits; do
    for precision in "${!MODEL[@]}"; do
        flags=("${DEVICE_FP32[@]}")
        [ "$precision" = bf16 ] && flags=("${bf16[@]}")
        store="$OUT/store-$data-$precision"
        "$XFER" extract --data "data/$data" --split "$SPLITS" --seed 1337 --model "${MODEL[$precision]}" \
            --store "$store" --batch-size 32 --quiet "${flags[@]}" > "$OUT/extract-$data-$precision.txt"
        "$XFER" train-head --store "$store" --train train --val val --test test \
            --out "$OUT/head-$data-$precision" > "$OUT/head-$data-$precision.txt"
    done
done

$PY scripts/precision_table.py "$OUT" | tee "$OUT/table.md"
