#!/usr/bin/env python3
"""`just bench` row: xfer.ray.extract on a local 2-CPU Ray cluster vs `xfer extract` on the
same images, measured in one run, plus the peak memory summed over the cluster's processes.

usage: ray_bench.py DATA MODEL N XFER_BIN

Both extract the same N demo images (the first N/2 of each class, copied to a temporary
dataset) into fresh stores. The CLI runs with its defaults (ONNX Runtime threads = all
cores); Ray runs 2 actors of 1 CPU and 1 ORT thread each. The cluster is started before the
clock starts (its start-up time is printed separately). Memory: the proportional set size
(PSS, /proc/PID/smaps_rollup) of the driver and every process it started (GCS, raylet,
workers), sampled every 0.2 s, summed per sample; the peak sum is reported (the CLI's,
measured the same way, for comparison).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list:
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found:
                found.add(child)
                frontier.append(child)
    return sorted(found)


class PeakMemory:
    """Peak of the summed PSS of this process and its descendants, sampled in a thread."""

    def __init__(self):
        self.peak_kib, self.procs, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            pids = descendants(os.getpid())
            total = sum(pss_kib(p) for p in pids)
            if total > self.peak_kib:
                self.peak_kib, self.procs = total, len(pids)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def subset(data: Path, n: int, out: Path) -> Path:
    for cls in sorted(p.name for p in data.iterdir() if p.is_dir()):
        (out / cls).mkdir(parents=True)
        for f in sorted((data / cls).iterdir())[: n // 2]:
            shutil.copy(f, out / cls / f.name)
    return out


def main() -> None:
    data, model, n, xfer_bin = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    import ray
    import xfer.ray as xray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = subset(data, n, tmp / "data")
        with PeakMemory() as cli_mem:
            t = time.monotonic()
            cli = subprocess.run([xfer_bin, "extract", "--quiet", "--data", str(images), "--model", str(model),
                                  "--store", str(tmp / "cli"), "--batch-size", "32"], capture_output=True, text=True)
            cli_s = time.monotonic() - t
        if cli.returncode != 0:
            sys.exit(f"xfer extract failed: {cli.stderr}")
        t = time.monotonic()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        start_s = time.monotonic() - t
        with PeakMemory() as mem:
            t = time.monotonic()
            summary = xray.extract(images, model, tmp / "ray", num_workers=2, threads_per_worker=1, batch_size=32)
            ray_s = time.monotonic() - t
        ray.shutdown()
        if summary["embedded"] != n:
            sys.exit(f"Ray embedded {summary['embedded']} of {n}: {summary}")
        print(f"xfer extract (CLI, ORT threads = all cores): {n} images in {cli_s:.1f} s = {n / cli_s:.1f} images/s"
              + f"; peak {cli_mem.peak_kib / 1048576:.2f} GiB PSS")
        print(f"Ray cluster start (ray.init(num_cpus=2), not timed below): {start_s:.1f} s")
        print(f"xfer.ray.extract (2 actors x 1 CPU, 1 ORT thread each): {n} images in {ray_s:.1f} s = {n / ray_s:.1f} images/s")
        print(f"peak memory of the Ray cluster: {mem.peak_kib / 1048576:.2f} GiB PSS summed over {mem.procs} processes")
        ratio = cli_s / ray_s
        print(f"ratio Ray Data / CLI throughput: {ratio:.2f}x (target >= 0.85){'' if ratio >= 0.85 else '  < 0.85'}")


if __name__ == "__main__":
    main()
