#!/usr/bin/env python3
"""Import the second benchmark dataset: scikit-learn's handwritten digits (1797 real
8x8 grayscale scans of digits 0-9, the UCI "optical recognition of handwritten digits"
test set), shipped inside the pinned scikit-learn wheel of tests/python/requirements.txt
as sklearn/datasets/data/digits.csv.gz. The file is checked against its sha256 and
written as data/digits/<digit>/<index>.png (grey levels 0-16 scaled to 0-255), the class
folder layout xfer reads. Idempotent: a complete import is left as it is.

Usage: .venv/bin/python scripts/digits.py [OUT]   (default data/digits)
"""
import gzip
import hashlib
import os
import shutil
import struct
import sys
import zlib

import sklearn

SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
COUNT = 1797
MARKER = ".imported"


def png_gray(pixels, side):
    """A minimal 8-bit grayscale PNG of side x side pixels (row-major list of 0-255)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(pixels[r * side:(r + 1) * side]) for r in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data", "digits")
    out = os.path.abspath(out)
    marker = os.path.join(out, MARKER)
    if os.path.exists(marker) and open(marker).read().strip() == SHA256:
        print(f"{out}: digits already imported ({COUNT} images)")
        return
    source = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "data", "digits.csv.gz")
    raw = open(source, "rb").read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256:
        sys.exit(f"{source}: sha256 {digest} differs from the pinned {SHA256}; "
                 "install the pinned scikit-learn with `just py-env`")
    lines = [l for l in gzip.decompress(raw).decode().splitlines() if l.strip()]
    if len(lines) != COUNT:
        sys.exit(f"{source}: {len(lines)} rows, expected {COUNT}")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for i, line in enumerate(lines):
        values = [int(float(v)) for v in line.split(",")]
        label, grey = values[64], values[:64]
        folder = os.path.join(tmp, str(label))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:04d}.png"), "wb") as f:
            f.write(png_gray([min(255, v * 16) for v in grey], 8))
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write(SHA256 + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    print(f"{out}: imported {COUNT} digits (scikit-learn {sklearn.__version__}, sha256 verified)")


if __name__ == "__main__":
    main()
