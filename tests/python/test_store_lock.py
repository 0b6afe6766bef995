"""Writers of one store, as users run them: concurrent, killed, waiting (issue 17, defects 1-2).

Runs the real `xfer extract` (Xception on a fixed sample of the demo data) and reads the
store back with pyarrow, the way notebook clients see it: xfer's own readers would hide a
duplicated row as "superseded", pyarrow does not.
Needs `just setup fetch-data` (models/xception, data/cats_vs_dogs) and a built xfer.
"""

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from test_store_clients import DATA, MODEL, ROOT, xfer_bin

N = 40  # images in the sample


def extract_cmd(store: Path, *extra: str, rows_per_part: int = 8) -> list[str]:
    return [str(xfer_bin()), "extract", "--quiet", "--data", str(DATA), "--model", str(MODEL),
            "--store", str(store), "--limit", str(N), "--rows-per-part", str(rows_per_part), *extra]


@pytest.fixture(autouse=True)
def demo_parts():
    if not (MODEL / "model.json").is_file() or not DATA.is_dir():
        pytest.skip("demo model/data missing; run `just setup fetch-data`")


def ids_in(store: Path) -> list[str]:
    return ds.dataset(store, format="parquet").to_table(columns=["id"]).column("id").to_pylist()


def test_two_concurrent_extracts_store_each_image_once(tmp_path):
    store = tmp_path / "store"
    procs = [subprocess.Popen(extract_cmd(store), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = ids_in(store)
    assert len(ids) == N, f"{len(ids)} rows for {N} images: {outs}"
    assert len(set(ids)) == N
    # One of the two embedded everything, the other found it all stored.
    summaries = " ".join(o for o, _ in outs)
    assert f"embedded {N}" in summaries and "embedded 0" in summaries, summaries


def hold_lock(store: Path, holder: str):
    """Takes the store's lock the way another xfer writer does (flock on .xfer-lock)."""
    store.mkdir(parents=True, exist_ok=True)
    f = open(store / ".xfer-lock", "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.truncate(0)
    f.write(holder)
    f.flush()
    return f


def test_a_held_lock_is_named_and_no_wait_fails_at_once(tmp_path):
    store = tmp_path / "store"
    held = hold_lock(store, "pid 4242 on somehost since 0 (unix seconds): xfer extract --store s\n")
    t = time.monotonic()
    r = subprocess.run(extract_cmd(store, "--no-wait"), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "locked by pid 4242 on somehost" in r.stderr and "xfer extract --store s" in r.stderr, r.stderr
    assert time.monotonic() - t < 30
    assert not list(store.glob("*.parquet"))

    # Without --no-wait it says who holds the lock, waits, and runs once it is released.
    waiting = subprocess.Popen(extract_cmd(store), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert waiting.poll() is None, waiting.communicate()
    assert not list(store.glob("*.parquet"))
    held.close()
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err
    assert "locked by pid 4242 on somehost" in err and "waiting" in err, err
    assert sorted(ids_in(store)) == sorted(set(ids_in(store))) and len(ids_in(store)) == N


def test_a_killed_writer_blocks_nobody_and_its_temp_files_go(tmp_path):
    store = tmp_path / "store"
    victim = subprocess.Popen(extract_cmd(store, "--batch-size", "4", rows_per_part=64),
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = store / ".xfer-lock"
    deadline = time.monotonic() + 120
    # Kill it once it holds the lock and is writing its first part (a temp file of its own).
    while time.monotonic() < deadline:
        mine = list(store.glob(f".part-*-p{victim.pid}-*.tmp"))
        if mine and lock.is_file() and str(victim.pid) in lock.read_text():
            break
        time.sleep(0.05)
    else:
        victim.kill()
        pytest.fail(f"the writer never started a part: {victim.communicate()}")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert list(store.glob(f".part-*-p{victim.pid}-*.tmp"))
    # And one of a writer killed long ago (its pid is not running).
    (store / ".part-0000000000001-p999999999-00000.parquet.tmp").write_bytes(b"half a parquet file")

    r = subprocess.run(extract_cmd(store, "--no-wait"), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "removed 2 temporary part file(s) of killed writers" in r.stdout, r.stdout
    assert not list(store.glob(".part-*.tmp"))
    ids = ids_in(store)
    assert len(ids) == N and len(set(ids)) == N
