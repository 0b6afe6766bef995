"""xfer in Python: embed images with ONNX Runtime into xfer's Parquet store.

The same Rust code as the ``xfer`` CLI (decoding, resizing, ONNX Runtime, the store):
a file embedded here gives the embedding ``xfer embed`` and ``xfer extract`` give.

>>> import xfer
>>> model = xfer.Model("models/xception", threads=2)
>>> features = model.embed(["data/cats_vs_dogs/cat/cat.1.png"])   # float32 [1, 2048]
>>> store = xfer.Store("store")
>>> df = store.to_pandas()                                        # one row per image

``xfer.ray.extract(...)`` runs the extraction on a Ray cluster into the same store.
ONNX Runtime is found as the CLI finds it: ``ORT_DYLIB_PATH``, else ``.ort/`` in the working
directory or one of its ancestors (where ``just setup`` puts it), else ``ort_lib=`` given to
``Model``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

from . import _native
from ._native import (
    DEFAULT_SEED,
    DEMO_SPLITS,
    Model,
    XferError,
    assign_splits,
    content_hash,
    hash_files,
    list_dataset,
    ort_library,
    read_manifest,
)

__version__ = _native.__version__

__all__ = [
    "DEFAULT_SEED",
    "DEMO_SPLITS",
    "Model",
    "Store",
    "XferError",
    "assign_splits",
    "content_hash",
    "hash_files",
    "list_dataset",
    "ort_library",
    "read_manifest",
]


class Store:
    """An xfer embeddings store (a folder of Parquet part files).

    Readers get one row per ``(id, model)``: the newest, as ``xfer train-head`` reads it
    (rows superseded by a changed image are left out until ``xfer store compact`` drops them).
    """

    def __init__(self, dir: "os.PathLike[str] | str"):
        self._native = _native.Store(os.fspath(dir))

    @property
    def dir(self) -> str:
        return os.fspath(self._native.dir)

    def __repr__(self) -> str:
        return f"xfer.Store({self.dir!r})"

    def info(self) -> Dict[str, Any]:
        """``xfer store info`` as a dict (``text`` holds the CLI's report)."""
        return self._native.info()

    def missing(self, ids: Sequence[str], content_hashes: Sequence[str], model: "Model | str") -> List[str]:
        """The ids whose image (with this content hash) the store does not hold for ``model``
        (a ``Model`` or a fingerprint) yet: what an extraction still has to embed."""
        fingerprint = model if isinstance(model, str) else model.fingerprint
        return self._native.missing(list(ids), list(content_hashes), fingerprint)

    def write(
        self,
        model: Model,
        classes: Sequence[str],
        ids: Sequence[str],
        labels: Sequence[int],
        splits: Sequence[str],
        content_hashes: Sequence[str],
        embeddings: Any,
        part_key: str,
        allow_mixed_models: bool = False,
        wait: bool = True,
    ) -> Dict[str, Any]:
        """Adds one part file atomically (the store's schema and footer metadata, under the
        store lock ``.xfer-lock`` that ``xfer extract`` and ``xfer store compact`` take);
        writing the same ``part_key`` again replaces that part instead of adding rows.
        ``wait=False`` raises ``XferError`` instead of waiting for a held lock."""
        import numpy as np

        array = np.ascontiguousarray(embeddings, dtype=np.float32)
        return self._native.write(
            model,
            list(classes),
            list(ids),
            [int(x) for x in labels],
            list(splits),
            list(content_hashes),
            array,
            part_key,
            allow_mixed_models,
            wait,
        )

    def remove_dead_temp_files(self, wait: bool = True) -> int:
        """Removes temporary part files of writers that are no longer running (under the lock)."""
        return self._native.remove_dead_temp_files(wait)

    def to_arrow(self):
        """The live rows as a ``pyarrow.Table`` (columns id, label, label_name, split,
        content_hash, model, embedding), part files in time order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for path, live in self._native.live_rows():
            table = pq.read_table(os.fspath(path))
            if not all(live):
                table = table.filter(pa.array(live, type=pa.bool_()))
            tables.append(table)
        if not tables:
            raise XferError(f"store {self.dir} holds no part files yet")
        return pa.concat_tables(tables, promote_options="permissive")

    def to_pandas(self):
        """The live rows as a ``pandas.DataFrame`` (embedding: one numpy array per row)."""
        return self.to_arrow().to_pandas()
