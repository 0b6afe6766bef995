#!/usr/bin/env python3
"""The precision table of `just bench` (scripts/precision.sh): for each dataset and precision,
bare-ORT images/s and its ratio to fp32 (demo only), the relative L2 of the features against
the fp32 rows of the same images (median and worst), and the test accuracy and log loss of
`xfer train-head` trained on that precision's store, plus peak RSS of the bare run.

Usage: precision_table.py OUT   (OUT holds speed.txt, store-<data>-<precision>/, head-<data>-<precision>/)
"""
import glob
import json
import os
import re
import sys

import numpy as np
import pyarrow.parquet as pq

PRECISIONS = ["fp32", "bf16", "int8"]


def load_store(path):
    """{id: embedding} of a store folder."""
    rows = {}
    for part in sorted(glob.glob(os.path.join(path, "*.parquet"))):
        t = pq.read_table(part, columns=["id", "embedding"])
        ids = t.column("id").to_pylist()
        emb = t.column("embedding").combine_chunks()
        values = np.asarray(emb.values.to_numpy(zero_copy_only=False), dtype=np.float64)
        values = values.reshape(len(ids), -1)
        rows.update(zip(ids, values))
    return rows


def rel_l2(store, reference):
    ids = sorted(set(store) & set(reference))
    if not ids:
        return None
    errs = np.array([np.linalg.norm(store[i] - reference[i]) / max(np.linalg.norm(reference[i]), 1e-30) for i in ids])
    return float(np.median(errs)), float(errs.max()), len(ids)


def speed(out):
    """{precision: (images/s, peak RSS GB)} from speed.txt (`<precision>: bare ... R images/s ..., peak RSS G GB`), median of repeats."""
    rates = {}
    path = os.path.join(out, "speed.txt")
    if not os.path.exists(path):
        return {}
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"^([\w-]+): bare .*?([0-9.]+) images/s.*peak RSS ([0-9.]+) GB", line)
        if m:
            rates.setdefault(m.group(1), []).append((float(m.group(2)), float(m.group(3))))
    return {p: (float(np.median([r for r, _ in v])), max(g for _, g in v)) for p, v in rates.items()}


def head(out, data, precision):
    path = os.path.join(out, f"head-{data}-{precision}", "metrics.json")
    if not os.path.exists(path):
        return None
    test = json.load(open(path)).get("test") or {}
    return test.get("accuracy"), test.get("log_loss")


def main():
    out = sys.argv[1]
    rates = speed(out)
    datasets = sorted({os.path.basename(p).split("-")[1] for p in glob.glob(os.path.join(out, "store-*-fp32"))})
    print("| data | precision | images/s (bare ORT) | ÷ fp32 | feature rel. L2 median / worst | test accuracy | test log loss | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for data in datasets:
        reference = load_store(os.path.join(out, f"store-{data}-fp32"))
        fp32_rate = rates.get("fp32", (None, None))[0]
        for precision in PRECISIONS:
            store_dir = os.path.join(out, f"store-{data}-{precision}")
            if not os.path.isdir(store_dir):
                continue
            err = rel_l2(load_store(store_dir), reference)
            acc = head(out, data, precision)
            rate, rss = rates.get(precision, (None, None)) if data == "cats_vs_dogs" else (None, None)
            cells = [
                data,
                precision,
                f"{rate:.1f}" if rate else "–",
                f"{rate / fp32_rate:.2f}×" if rate and fp32_rate else "–",
                f"{err[0]:.3g} / {err[1]:.3g} ({err[2]} images)" if err else "–",
                f"{acc[0]:.3f}" if acc and acc[0] is not None else "–",
                f"{acc[1]:.4f}" if acc and acc[1] is not None else "–",
                f"{rss:.2f} GB" if rss else "–",
            ]
            print("| " + " | ".join(cells) + " |")
    if "int8-openvino" in rates and rates.get("fp32"):
        rate, rss = rates["int8-openvino"]
        print(f"\nint8 QDQ model on the OpenVINO provider: {rate:.1f} images/s = {rate / rates['fp32'][0]:.2f}× fp32 ORT"
              f" (on ORT's CPU provider: {rates.get('int8', (0, 0))[0]:.1f} images/s), peak RSS {rss:.2f} GB")


if __name__ == "__main__":
    main()
