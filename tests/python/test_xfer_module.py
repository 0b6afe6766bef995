"""`import xfer` (crates/xfer-py, built and installed into .venv by `just py`) against the CLI.

* `Model.embed` of demo images equals the rows `xfer extract` stored for them (the demo store
  ./store that `just extract` builds), and equals Python onnxruntime run on the same input
  (`Model.preprocess`, and a uint8 NHWC array): an independent computation of the numbers;
* errors are `xfer.XferError` naming the file (a truncated image, a missing model folder);
* `assign_splits` and `content_hash` give the store's split and hash of every image;
* `Store.write` keys: a part written twice under one key leaves one set of rows, and the
  result passes `xfer store info`.
"""

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest

from test_store_clients import DATA, MODEL, ROOT, xfer_bin

xfer = pytest.importorskip("xfer", reason="the xfer Python package is not installed; run `just py`")

DEMO_STORE = ROOT / "store"
N = 60  # demo images compared (every 33rd id)


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def model():
    if not (MODEL / "model.json").is_file() or not DATA.is_dir():
        pytest.skip("demo model/data missing; run `just setup fetch-data`")
    return xfer.Model(MODEL, threads=2)


@pytest.fixture(scope="module")
def demo_rows():
    if not DEMO_STORE.is_dir():
        pytest.skip("demo store ./store missing; run `just extract`")
    df = xfer.Store(DEMO_STORE).to_pandas().sort_values("id").reset_index(drop=True)
    return df


@pytest.fixture(scope="module")
def sample(demo_rows):
    return demo_rows.iloc[:: max(1, len(demo_rows) // N)].head(N).reset_index(drop=True)


def test_store_reader_has_one_row_per_demo_image(demo_rows):
    listing = xfer.list_dataset(DATA)
    assert sorted(demo_rows["id"]) == sorted(listing["ids"])
    assert demo_rows["id"].is_unique
    assert len(demo_rows["embedding"].iloc[0]) == 2048


def test_embed_paths_equals_the_cli_store(model, sample):
    paths = [str(DATA / i) for i in sample["id"]]
    got = model.embed(paths)
    assert got.dtype == np.float32 and got.shape == (len(paths), model.feature_dim)
    want = np.stack(sample["embedding"].to_numpy())
    err = rel_l2(got, want)
    assert err.max() <= 1e-6, f"max relative L2 {err.max():.3g}"
    assert sample["model"].eq(model.fingerprint).all()


def test_preprocess_and_uint8_arrays_match_python_onnxruntime(model, sample):
    paths = [str(DATA / i) for i in sample["id"][:8]]
    x = model.preprocess(paths)
    assert x.dtype == np.float32 and x.shape == (8, 3, *model.image_size)
    session = ort.InferenceSession(str(MODEL / "model.onnx"), providers=["CPUExecutionProvider"])
    want = session.run(["features"], {"pixels": x})[0]
    assert rel_l2(model.embed(paths), want).max() <= 1e-5
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, *model.image_size, 3), dtype=np.uint8)
    want = session.run(["features"], {"pixels": u8.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    assert rel_l2(model.embed(u8), want).max() <= 1e-5
    with pytest.raises(xfer.XferError, match="expected \\(N, 150, 150, 3\\)"):
        model.embed(np.zeros((1, 32, 32, 3), np.uint8))


def test_truncated_image_raises_naming_the_file(model, sample, tmp_path):
    src = DATA / sample["id"][0]
    bad = tmp_path / "truncated.png"
    bad.write_bytes(src.read_bytes()[:60])
    with pytest.raises(xfer.XferError, match="truncated.png"):
        model.embed([str(src), str(bad)])
    features, hashes, kept, failures = model.embed_files([str(src), str(bad)])
    assert kept == [0] and features.shape == (1, 2048)
    assert failures[0][0] == 1 and "truncated.png" in failures[0][1]


def test_missing_model_folder_raises_naming_it(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(xfer.XferError, match="no-such-model"):
        xfer.Model(missing)


def test_splits_and_hashes_follow_the_cli(demo_rows):
    listing = xfer.list_dataset(DATA)
    splits = xfer.assign_splits(listing["ids"], xfer.DEMO_SPLITS, 1337)
    stored = dict(zip(demo_rows["id"], demo_rows["split"]))
    assert dict(zip(listing["ids"], splits)) == stored
    some = demo_rows.head(20)
    assert [xfer.content_hash((DATA / i).read_bytes()) for i in some["id"]] == list(some["content_hash"])
    assert xfer.hash_files([str(DATA / i) for i in some["id"]]) == list(some["content_hash"])


def test_store_write_replaces_parts_of_one_key(model, sample, tmp_path):
    store = xfer.Store(tmp_path / "store")
    rows = sample.head(6)
    classes = list(xfer.list_dataset(DATA)["classes"])
    features = np.stack(rows["embedding"].to_numpy())
    args = (model, classes, list(rows["id"]), list(rows["label"]), list(rows["split"]), list(rows["content_hash"]))
    first = store.write(*args, features, part_key="block-0")
    again = store.write(*args, features + 1.0, part_key="block-0")
    assert not first["replaced"] and again["replaced"] and again["path"] == first["path"]
    assert store.missing(list(rows["id"]), list(rows["content_hash"]), model) == []
    assert store.missing(["cat/new.png"], ["00"], model.fingerprint) == ["cat/new.png"]
    table = store.to_arrow()
    assert table.num_rows == 6
    assert np.allclose(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), features + 1.0)
    meta = pq.read_metadata(first["path"]).metadata
    assert meta[b"xfer.fingerprint"].decode() == model.fingerprint
    info = subprocess.run([str(xfer_bin()), "store", "info", str(store.dir)], capture_output=True, text=True, cwd=ROOT)
    assert info.returncode == 0, info.stderr
    assert store.info()["models"][0]["rows"] == 6
    assert not list(Path(store.dir).glob(".*.tmp"))


def test_store_write_takes_the_cli_store_lock_and_survives_compact(model, sample, tmp_path):
    """Keyed parts and the CLI's writers share `.xfer-lock` (issue 17 item 1): a write waits
    for (or with wait=False refuses) a held lock, and `xfer store compact` keeps its rows."""
    store = xfer.Store(tmp_path / "store")
    rows = sample.head(4)
    classes = list(xfer.list_dataset(DATA)["classes"])
    args = (model, classes, list(rows["id"]), list(rows["label"]), list(rows["split"]),
            list(rows["content_hash"]), np.stack(rows["embedding"].to_numpy()))
    Path(store.dir).mkdir(parents=True)
    with open(Path(store.dir) / ".xfer-lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 on test: xfer extract")
        held.flush()
        with pytest.raises(xfer.XferError, match="is locked by pid 1 on test"):
            store.write(*args, part_key="k", wait=False)
    store.write(*args, part_key="k", wait=False)
    compact = subprocess.run([str(xfer_bin()), "store", "compact", str(store.dir)], capture_output=True, text=True, cwd=ROOT)
    assert compact.returncode == 0, compact.stderr
    table = store.to_arrow()
    assert sorted(table.column("id").to_pylist()) == sorted(rows["id"])
    assert store.missing(list(rows["id"]), list(rows["content_hash"]), model) == []


def test_ort_library_is_found_as_the_cli_finds_it(model):
    found = Path(xfer.ort_library())
    assert Path(model.ort_library).resolve() == found.resolve()
    expected = os.environ.get("ORT_DYLIB_PATH") or str(ROOT / ".ort" / found.name)
    assert found.resolve() == Path(expected).resolve()


def test_python_m_xfer_ray_has_help():
    pytest.importorskip("ray", reason="ray[data] is not installed; run `just py-env`")
    out = subprocess.run([sys.executable, "-m", "xfer.ray", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "--address" in out.stdout and "--store" in out.stdout
