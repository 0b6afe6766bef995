"""A training graph written by `xfer train-graph` runs in the onnxruntime Python wheel and gives
the same loss, logits and gradients as the Rust side; the dropout mask rule of graph.json is
reproduced in numpy. Needs `just setup` (models/xception) and cargo."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "xception"
M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def splitmix64_np(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def dropout_mask(seed: int, step: int, stream: int, n: int, rate: float) -> np.ndarray:
    """The rule written in graph.json (dropout_mask_rule)."""
    h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ stream)
    u = (splitmix64_np(np.uint64(h) ^ np.arange(n, dtype=np.uint64)) >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)
    return np.where(u < rate, np.float32(0.0), np.float32(1.0 / (1.0 - rate))).astype(np.float32)


def cargo(*args: str) -> None:
    subprocess.run(["cargo", "run", "--release", "--locked", "-q", *args], cwd=ROOT, check=True)


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    if not (MODEL / "model.json").exists():
        pytest.fail(f"{MODEL} is missing: run `just setup`")
    out = tmp_path_factory.mktemp("train_graph")
    cargo("-p", "xfer-cli", "--", "train-graph", "--model", str(MODEL), "--head", "dense:1:0.2",
          "--trainable", "all", "--loss", "bce", "--out", str(out))
    cargo("-p", "xfer-autodiff", "--example", "dump_training_outputs", "--", str(out), "--batch", "2")
    return out


def test_python_runs_the_training_graph_like_rust(graph_dir):
    spec = json.loads((graph_dir / "graph.json").read_text())
    rust = json.loads((graph_dir / "rust_outputs.json").read_text())
    sess = ort.InferenceSession(str(graph_dir / "training.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    n = 2
    # Same batch as the Rust side: pixel = (x*3 + y*5 + 40c + 97n) mod 256.
    _, c, h, w = [n if d < 0 else d for d in spec["data_input"]["shape"]]
    nn, cc, yy, xx = np.meshgrid(np.arange(n), np.arange(c), np.arange(h), np.arange(w), indexing="ij")
    feeds = {spec["data_input"]["name"]: ((xx * 3 + yy * 5 + 40 * cc + 97 * nn) % 256).astype(np.float32),
             "labels": (np.arange(n) % 2).astype(np.float32)}
    for m in spec["dropout_masks"]:
        shape = [n if d < 0 else d for d in m["shape"]]
        feeds[m["name"]] = dropout_mask(1, 0, m["stream"], int(np.prod(shape)), m["rate"]).reshape(shape)
    # Initial parameters from params.safetensors (8-byte header length, JSON header, raw data).
    raw = (graph_dir / "params.safetensors").read_bytes()
    hlen = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + hlen])
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32"
        a, b = info["data_offsets"]
        feeds[name] = np.frombuffer(raw[8 + hlen + a:8 + hlen + b], dtype="<f4").reshape(info["shape"])
    assert set(feeds) == names, set(feeds) ^ names
    assert [p["name"] for p in spec["parameters"]] == [i for i in (x.name for x in sess.get_inputs()) if i in header]

    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    assert outs["loss"].shape == ()
    np.testing.assert_allclose(float(outs["loss"]), rust["loss"], rtol=1e-5)
    np.testing.assert_allclose(outs["logits"].ravel(), rust["logits"], rtol=1e-4, atol=1e-5)
    assert len(rust["grads"]) == len(spec["parameters"]) == 156
    for p in spec["parameters"]:
        g = outs[p["name"] + "_grad"].astype(np.float64)
        assert list(g.shape) == p["shape"]
        r = rust["grads"][p["name"]]
        # Same graph, same library build: only thread scheduling of reductions may differ.
        np.testing.assert_allclose(np.abs(g).sum(), r["abs_sum"], rtol=1e-4, err_msg=p["name"])
        np.testing.assert_allclose(g.sum(), r["sum"], rtol=1e-3, atol=1e-4 * r["abs_sum"], err_msg=p["name"])
        np.testing.assert_allclose(g.ravel()[:8], r["first"], rtol=1e-3, atol=1e-6 + 1e-4 * np.abs(g).max(), err_msg=p["name"])


def test_head_bias_gradient_is_the_mean_sigmoid_error(graph_dir):
    """Independent of the Rust side: dL/dbias = mean(sigmoid(z) - y) for BCE with logits."""
    rust = json.loads((graph_dir / "rust_outputs.json").read_text())
    z = np.array(rust["logits"], dtype=np.float64)
    y = (np.arange(len(z)) % 2).astype(np.float64)
    expected = np.mean(1 / (1 + np.exp(-z)) - y)
    np.testing.assert_allclose(rust["grads"]["head.bias"]["sum"], expected, rtol=1e-5, atol=1e-7)
    loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    np.testing.assert_allclose(rust["loss"], loss, rtol=1e-5)
