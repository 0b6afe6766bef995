"""A rerun of `xfer extract` reconciles the store with the dataset as it is now (issue 18 item 1).

The reproduction of the issue on a small dataset of real PNGs (demo photos): delete a dog
image, move a cat image into the dog folder, rerun `extract --retag`, `compact`. pyarrow must
then see one row per image (no row of the deleted file, the moved picture once, labelled
dog, with its embedding reused bit for bit), and `train-head` must train on as many rows as
extract reported. Runs the real `xfer` with Xception.
Needs `just setup fetch-data` (models/xception, data/cats_vs_dogs) and a built xfer.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from test_store_clients import DATA, MODEL, ROOT, xfer_bin

PER_CLASS = 8


@pytest.fixture(autouse=True)
def demo_parts():
    if not (MODEL / "model.json").is_file() or not DATA.is_dir():
        pytest.skip("demo model/data missing; run `just setup fetch-data`")


def small_dataset(root: Path) -> Path:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, src in enumerate(sorted((DATA / cls).glob("*.png"))[:PER_CLASS]):
            assert src.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
            shutil.copy(src, root / cls / f"{i:04d}.png")
    return root


def xfer(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([str(xfer_bin()), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"xfer {' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r


def rows(store: Path) -> dict:
    table = ds.dataset(store, format="parquet").to_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), f"duplicate rows: {sorted(ids)}"
    return {
        i: (label, emb)
        for i, label, emb in zip(ids, table.column("label").to_pylist(), table.column("embedding").to_pylist())
    }


def test_deleted_and_moved_images_leave_one_row_each_seen_by_pyarrow_and_train_head(tmp_path):
    data = small_dataset(tmp_path / "data")
    store = tmp_path / "store"
    extract = ["extract", "--quiet", "--data", str(data), "--model", str(MODEL), "--store", str(store),
               "--rows-per-part", "5", "--retag"]
    xfer(*extract)
    before = rows(store)
    assert len(before) == 2 * PER_CLASS
    moved_label, moved_emb = before["cat/0005.png"]
    assert moved_label == 0

    (data / "dog" / "0007.png").unlink()
    (data / "cat" / "0005.png").rename(data / "dog" / "0105.png")
    info = xfer("store", "info", str(store), "--data", str(data)).stdout
    assert "2 stale row(s)" in info, info

    out = xfer(*extract).stdout
    assert re.search(r"^embedded 0\b", out, re.M), out
    assert "dropped 2 stale row(s) (2 of images gone, 0 relabelled)" in out, out
    assert "1 moved/renamed" in out, out
    train_reported = int(re.search(r"^images: \d+ \(.*train (\d+)", out, re.M).group(1))

    # Physically gone before any compact: pyarrow reads the directory as it is. (Rows of
    # images that --retag moved to another split keep an older row until compact.)
    ids = ds.dataset(store, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert "dog/0007.png" not in ids and "cat/0005.png" not in ids
    assert ids.count("dog/0105.png") == 1

    xfer("store", "compact", str(store))
    after = rows(store)
    assert len(after) == 2 * PER_CLASS - 1
    label, emb = after["dog/0105.png"]
    assert label == 1
    assert emb == moved_emb, "the moved image's embedding is reused, not recomputed"
    info = xfer("store", "info", str(store), "--data", str(data)).stdout
    assert "no stale rows" in info, info

    head = xfer("train-head", "--store", str(store), "--out", str(tmp_path / "head"), "--test", "none")
    trained = int(re.search(r"on (\d+) rows of `train`", head.stderr).group(1))
    assert trained == train_reported, head.stderr
