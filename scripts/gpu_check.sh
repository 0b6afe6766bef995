#!/usr/bin/env bash
# The GPU check, for any CUDA machine (no network needed): the same Xception on the CPU and on
# DEVICE in one process (crates/xfer-cli/examples/gpu_check.rs):
#   - extraction features of one batch: max |cpu - gpu| / max |cpu| <= 1e-3;
#   - one all-layers training step: loss and every gradient within 1e-2 (same measure);
#   - images/s of extraction and of training steps on both;
#   - a few Adam steps (--steps, default 3) of the device-resident fine-tuning loop on DEVICE
#     (parameters, gradients and moments stay there; Adam runs as its ONNX graph) against the
#     host loop (Rust Adam) on DEVICE: losses, parameters and moments within 1e-2; the host loop
#     on the CPU is printed beside them, unchecked (Adam amplifies CPU-vs-GPU rounding); images/s
#     of the host loop on both and of the device loop on DEVICE.
# Exit status 0 when every check passes.
#
# Usage: scripts/gpu_check.sh [--device cuda|tensorrt|cpu] [--synthetic] [--fp32] [--bin FILE] [-- GPU_CHECK_ARGS]
#   --device     what to compare with the CPU (default cuda; `cpu` runs both sides on the CPU,
#                which checks the script end to end on a machine without a GPU)
#   --synthetic  seeded random weights (each tensor's mean/std) on the weight-free skeleton
#                scripts/gpu/xception_skeleton.onnx (about 55 KB) instead of models/xception:
#                the payload for a machine that cannot fetch or convert the real weights.
#                It is also used when models/xception is missing.
#   --fp32       also set NVIDIA_TF32_OVERRIDE=0 (read by cuBLAS, cuDNN and TensorRT): TF32
#                forbidden process-wide, beyond the CUDA provider option. The check needs no flag
#                for fp32 on CUDA: xfer always turns the provider's TF32 option off (its default
#                allows TF32, which on an H200 put the features 1.4e-3 to 1.6e-3 from the CPU's and
#                the worst gradient tensor 0.12 to 0.18; fp32: 1.3e-6 and 4.1e-3 on the real
#                Xception). It matters for --device tensorrt, whose own engines keep TensorRT's
#                defaults.
#   --bin FILE   a gpu_check binary built elsewhere (cargo build --release -p xfer-cli
#                --features cuda,tensorrt --example gpu_check: target/release/examples/gpu_check);
#                default: build it here.
# Extra arguments after `--` go to gpu_check (--batch N, --images N, --steps N, --seed N, --ort-lib FILE).
# The GPU side needs .ort-gpu/ (`just fetch-gpu`, or bring it along; `xfer doctor --device cuda`
# says what is missing). Output: the terminal and target/gpu_check.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
synthetic=0
bin=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --synthetic) synthetic=1; shift ;;
        --fp32) export NVIDIA_TF32_OVERRIDE=0; shift ;;
        --bin) bin=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

if [ -z "$bin" ]; then
    features=()
    [ "$device" != cpu ] && features=(--features cuda,tensorrt)
    cargo build --release --locked -q -p xfer-cli "${features[@]}" --example gpu_check
    bin=target/release/examples/gpu_check
fi

model=(--model models/xception)
if [ "$synthetic" = 1 ] || [ ! -f models/xception/model.json ]; then
    model=(--skeleton scripts/gpu/xception_skeleton.onnx)
fi

mkdir -p target
{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    else
        echo "no nvidia-smi on this machine"
    fi
    "$bin" --device "$device" "${model[@]}" "${extra[@]}"
} 2>&1 | tee target/gpu_check.txt
exit "${PIPESTATUS[0]}"
