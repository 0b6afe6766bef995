"""The embeddings store as notebook clients see it: pyarrow, pandas, polars and duckdb.

Builds a small store with the real `xfer extract` (Xception, a fixed sample of the
demo data), then checks schema, shape, dtype, labels and splits in every client, and
that each stored row equals the vector `xfer embed --out x.npy` gives for that image.
Needs `just setup fetch-data` (models/xception, data/cats_vs_dogs) and a built xfer.
"""

import os
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "xception"
DATA = ROOT / "data" / "cats_vs_dogs"
N = 24  # images in the sample (spread over train/val/test)
DIM = 2048


def xfer_bin() -> Path:
    env = os.environ.get("XFER_BIN")
    if env:
        return Path(env)
    # The most recently built of the release and debug binaries.
    built = [p for p in (ROOT / "target" / "release" / "xfer", ROOT / "target" / "debug" / "xfer") if p.is_file()]
    if not built:
        pytest.skip("no xfer binary; run `just build`")
    return max(built, key=lambda p: p.stat().st_mtime)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    if not (MODEL / "model.json").is_file() or not DATA.is_dir():
        pytest.skip("demo model/data missing; run `just setup fetch-data`")
    out = tmp_path_factory.mktemp("store")
    subprocess.run(
        [str(xfer_bin()), "extract", "--quiet", "--data", str(DATA), "--model", str(MODEL),
         "--store", str(out), "--limit", str(N), "--rows-per-part", "10"],
        check=True, cwd=ROOT,
    )
    return out


def test_pyarrow_schema_and_metadata(store):
    table = ds.dataset(store, format="parquet").to_table()
    assert table.num_rows == N
    schema = table.schema
    assert schema.field("id").type == pa.string()
    assert schema.field("label").type == pa.int32()
    assert schema.field("label_name").type == pa.dictionary(pa.int32(), pa.string())
    assert schema.field("split").type == pa.string()
    assert schema.field("content_hash").type == pa.string()
    assert schema.field("model").type == pa.string()
    emb = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb) and emb.list_size == DIM and emb.value_type == pa.float32()
    files = sorted(store.glob("*.parquet"))
    assert len(files) == 3  # 24 rows, 10 per part
    meta = pq.read_metadata(files[0]).metadata
    manifest_fp = __import__("json").loads((MODEL / "model.json").read_text())["fingerprint"]
    assert meta[b"xfer.fingerprint"].decode() == manifest_fp
    assert meta[b"xfer.model_name"] == b"xception"
    assert meta[b"xfer.image_size"] == b"150x150"
    assert meta[b"xfer.classes"] == b'["cat","dog"]'
    assert set(table.column("model").to_pylist()) == {manifest_fp}


def test_pandas_reads_the_directory(store):
    df = pd.read_parquet(store)
    assert len(df) == N
    assert df["id"].is_unique
    x = np.stack(df["embedding"].to_numpy())
    assert x.shape == (N, DIM) and x.dtype == np.float32
    assert np.isfinite(x).all() and (x >= 0).all()  # after ReLU + global average pooling
    names = df["label_name"].astype(str)
    assert (names == np.where(df["label"] == 1, "dog", "cat")).all()
    assert (df["id"].str.split("/").str[0] == names).all()
    assert set(df["split"]) == {"train", "val", "test"}


def test_polars_and_duckdb_agree_with_pyarrow(store):
    pf = pl.read_parquet(str(store / "*.parquet"))
    assert pf.height == N
    assert pf.schema["embedding"] == pl.Array(pl.Float32, DIM)
    con = duckdb.connect()
    rows = con.execute(
        f"select split, count(*), count(distinct id) from read_parquet('{store}/*.parquet') group by split order by split"
    ).fetchall()
    assert sum(r[1] for r in rows) == N and all(r[1] == r[2] for r in rows)
    first = con.execute(
        f"select id, embedding from read_parquet('{store}/*.parquet') order by id limit 1"
    ).fetchone()
    ref = pd.read_parquet(store).set_index("id").loc[first[0], "embedding"]
    np.testing.assert_array_equal(np.asarray(first[1], dtype=np.float32), ref)
    counts = dict(pf.group_by("label_name").len().iter_rows())
    assert sum(counts.values()) == N and set(counts) <= {"cat", "dog"}


def test_rows_equal_xfer_embed(store, tmp_path):
    df = pd.read_parquet(store).sort_values("id")
    npy = tmp_path / "x.npy"
    subprocess.run(
        [str(xfer_bin()), "embed", "--model", str(MODEL), "--out", str(npy), *[str(DATA / i) for i in df["id"]]],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )
    want = np.load(npy)
    got = np.stack(df["embedding"].to_numpy())
    assert want.shape == got.shape == (N, DIM)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_notebook_cells_run_on_the_store(store, monkeypatch):
    """notebooks/embeddings.ipynb is valid nbformat 4 and its code runs on a real store."""
    import json

    nb = json.loads((ROOT / "notebooks" / "embeddings.ipynb").read_text())
    assert nb["nbformat"] == 4
    monkeypatch.setenv("XFER_STORE", str(store))
    scope: dict = {}
    for cell in nb["cells"]:
        assert {"cell_type", "metadata", "source"} <= cell.keys()
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "embeddings.ipynb", "exec"), scope)
    assert scope["X"].shape == (N, DIM)
    assert scope["P"].shape == (N, 2)
    assert scope["classes"] == ["cat", "dog"]
