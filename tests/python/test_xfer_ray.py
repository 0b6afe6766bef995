"""`xfer.ray.extract` on a real local Ray cluster (`ray.init(num_cpus=2)`, started once for the
module: about 13 s and 2.8 GB) against `xfer extract` on the same 60 demo images.

* the Ray store equals the CLI's: same ids, labels, label names, splits, content hashes, and
  embeddings within 1e-6 relative L2; it passes `xfer store info`;
* a rerun embeds nothing;
* an actor killed mid-run (SIGKILL to its process) leaves exactly one row per image and no
  temporary files (Ray restarts the actor and retries its block, which replaces its part);
* two Ray runs at the same time on one store do not duplicate rows.
"""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from test_store_clients import DATA, MODEL, ROOT, xfer_bin

xfer = pytest.importorskip("xfer", reason="the xfer Python package is not installed; run `just py`")
ray = pytest.importorskip("ray", reason="ray[data] is not installed; run `just py-env`")
import xfer.ray as xray  # noqa: E402

N = 60  # demo images (30 per class)
SPLITS = xfer.DEMO_SPLITS


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """60 demo images in class folders (the first 30 ids of each class)."""
    if not (MODEL / "model.json").is_file() or not DATA.is_dir():
        pytest.skip("demo model/data missing; run `just setup fetch-data`")
    root = tmp_path_factory.mktemp("data")
    for cls in ("cat", "dog"):
        (root / cls).mkdir()
        for f in sorted((DATA / cls).iterdir())[: N // 2]:
            shutil.copy(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def cli_store(subset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "store"
    subprocess.run([str(xfer_bin()), "extract", "--quiet", "--data", str(subset), "--model", str(MODEL),
                    "--store", str(out), "--split", SPLITS, "--seed", "1337"], check=True, cwd=ROOT)
    return out


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows_of(store: Path):
    return xfer.Store(store).to_pandas().sort_values("id").reset_index(drop=True)


def assert_one_row_per_image(store: Path):
    ids = pads.dataset(store, format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == N and len(set(ids)) == N, f"{len(ids)} rows, {len(set(ids))} ids"
    assert not [p.name for p in store.iterdir() if p.name.endswith(".tmp")]
    info = subprocess.run([str(xfer_bin()), "store", "info", str(store)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr


def run(subset, store, **kw):
    kw.setdefault("rows_per_part", 16)
    return xray.extract(subset, MODEL, store, splits=SPLITS, seed=1337, **kw)


def in_thread(result: dict, subset, store, **kw) -> threading.Thread:
    """Runs `run` in a thread; its summary (or its exception as `error`) lands in `result`."""
    def target():
        try:
            result.update(run(subset, store, **kw))
        except BaseException as e:  # noqa: BLE001 - reported by the test's assertions
            result["error"] = repr(e)
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_ray_store_equals_the_cli_store_and_a_rerun_embeds_nothing(cluster, subset, cli_store, tmp_path):
    store = tmp_path / "store"
    first = run(subset, store, num_workers=2, threads_per_worker=1)
    assert first["embedded"] == N and first["skipped"] == [], first
    got, want = rows_of(store), rows_of(cli_store)
    for col in ("id", "label", "split", "content_hash", "model"):
        assert list(got[col]) == list(want[col]), col
    assert [str(x) for x in got["label_name"]] == [str(x) for x in want["label_name"]]
    err = np.linalg.norm(np.stack(got["embedding"]) - np.stack(want["embedding"]), axis=1)
    err /= np.linalg.norm(np.stack(want["embedding"]), axis=1)
    assert err.max() <= 1e-6, f"max relative L2 {err.max():.3g}"
    assert_one_row_per_image(store)
    again = run(subset, store)
    assert again["embedded"] == 0 and again["cached"] == N, again


def actor_pids():
    """Processes of the running `_Embedder` actors (Ray names them in their command line)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "_Embedder" in cmd:
                pids.append(int(d.name))
    return pids


def test_a_killed_actor_leaves_one_row_per_image_and_no_temp_files(cluster, subset, tmp_path):
    store = tmp_path / "store"
    result = {}
    worker = in_thread(result, subset, store, rows_per_part=6)
    killed = None
    deadline = time.monotonic() + 300
    while worker.is_alive() and time.monotonic() < deadline:
        parts = list(store.glob("part-*.parquet")) if store.is_dir() else []
        pids = actor_pids()
        if parts and pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.05)
    worker.join(timeout=600)
    assert killed is not None, "no actor was seen mid-run"
    assert "error" not in result and result["embedded"] == N, result
    assert_one_row_per_image(store)


def test_two_ray_runs_on_one_store_do_not_duplicate_rows(cluster, subset, tmp_path):
    store = tmp_path / "store"
    results = [{}, {}]
    threads = [in_thread(r, subset, store, num_workers=1) for r in results]
    for t in threads:
        t.join(timeout=600)
    assert all(r.get("selected") == N for r in results), results
    assert sum(r["embedded"] for r in results) >= N
    assert_one_row_per_image(store)
