"""``xfer.ray.extract``: xfer's extraction on Ray Data, into the store the CLI writes.

Steps (each named below): list the dataset and tag splits with the CLI's seeded rule
(``_plan``), hash the files (``_hashes``), drop what the store already holds
(``Store.missing``), then ``map_batches`` over an actor pool where each actor holds one
``xfer.Model`` with ONNX Runtime threads = the actor's CPUs (``_Embedder``) and writes one
part per input block, keyed by the block's content, so a retried task replaces its own part.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from . import DEFAULT_SEED, DEMO_SPLITS, Model, Store, XferError, _native, content_hash

__all__ = ["extract"]


class _Embedder:
    """One actor: a ``Model`` with ``threads`` ONNX Runtime (and decoder) threads."""

    def __init__(self, model_dir: str, store_dir: str, classes: List[str], threads: int,
                 ort_lib: Optional[str], batch_size: int):
        self.model = Model(model_dir, threads=threads, ort_lib=ort_lib)
        self.store = Store(store_dir)
        self.classes = classes
        self.batch_size = batch_size

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        out: Dict[str, list] = {"key": [], "rows": [], "skipped": [], "pid": []}
        for i, key in enumerate(batch["key"]):
            paths = [str(p) for p in batch["paths"][i]]
            features, hashes, kept, failures = self.model.embed_files(paths, self.batch_size)
            ids = [str(batch["ids"][i][k]) for k in kept]
            if ids:
                self.store.write(
                    self.model, self.classes, ids,
                    [int(batch["labels"][i][k]) for k in kept],
                    [str(batch["splits"][i][k]) for k in kept],
                    hashes, features, part_key=str(key),
                )
            out["key"].append(str(key))
            out["rows"].append(len(ids))
            out["skipped"].append("\n".join(f"{batch['ids'][i][k]}: {msg}" for k, msg in failures))
            out["pid"].append(os.getpid())
        return out


def _plan(data: str, splits: str, seed: int, stratified: bool) -> Dict[str, Any]:
    """The dataset listing (as ``xfer extract`` lists it) and each image's split."""
    listing = _native.list_dataset(data)
    tags = _native.assign_splits(listing["ids"], splits, seed, listing["labels"], stratified)
    rows = [
        (i, p, l, s)
        for i, p, l, s in zip(listing["ids"], listing["paths"], listing["labels"], tags)
        if s is not None
    ]
    return {"classes": listing["classes"], "rows": rows, "not_in_split": len(tags) - len(rows)}


def _hashes(rows) -> Dict[str, str]:
    """``content_hash`` of every selected file ("" when unreadable), read by the driver on
    all its cores (Rust, GIL released): one pass over the bytes, as ``xfer extract`` does."""
    hashes = _native.hash_files([os.fspath(r[1]) for r in rows])
    return {r[0]: h or "" for r, h in zip(rows, hashes)}


def _block_size(n: int) -> int:
    """Images per input block: about 32 blocks (so every actor of a cluster gets work), from
    32 to 256 images each; it depends only on the number of selected images, so runs over
    the same dataset cut the same blocks whatever their workers."""
    return min(256, max(32, -(-n // 32)))


def _blocks(rows, hashes: Dict[str, str], missing: set, rows_per_part: int, fingerprint: str):
    """Input blocks: the selected images in id order cut every ``rows_per_part`` (so the cut
    does not depend on what is cached), each keeping its missing images; the key names the
    block's content (model, ids, hashes), so the same work always gets the same part."""
    blocks = []
    for start in range(0, len(rows), rows_per_part):
        todo = [r for r in rows[start:start + rows_per_part] if r[0] in missing]
        if not todo:
            continue
        text = "\n".join([fingerprint] + [f"{r[0]}\t{hashes[r[0]]}" for r in todo])
        blocks.append({
            "key": "ray-" + content_hash(text.encode()),
            "ids": [r[0] for r in todo],
            "paths": [os.fspath(r[1]) for r in todo],
            "labels": [int(r[2]) for r in todo],
            "splits": [r[3] for r in todo],
        })
    return blocks


def extract(
    data: "os.PathLike[str] | str",
    model_dir: "os.PathLike[str] | str",
    store_dir: "os.PathLike[str] | str",
    splits: str = DEMO_SPLITS,
    seed: int = DEFAULT_SEED,
    batch_size: int = 32,
    num_workers: Optional[int] = None,
    threads_per_worker: Optional[int] = None,
    rows_per_part: Optional[int] = None,
    stratified: bool = False,
    ort_lib: "os.PathLike[str] | str | None" = None,
) -> Dict[str, Any]:
    """Extracts the embeddings of the dataset ``data`` with the model ``model_dir`` into the
    store ``store_dir`` on the Ray cluster this process is connected to (``ray.init(...)``
    first; a local one is started otherwise).

    The store is the one ``xfer extract`` writes: same ids, labels, splits (``splits`` and
    ``seed`` follow the CLI's rule) and content hashes; images it already holds are not
    embedded again. ``num_workers`` actors (default: cluster CPUs // ``threads_per_worker``)
    each hold one model with ``threads_per_worker`` ONNX Runtime threads (default 1) and
    reserve as many CPUs. Paths must be readable at the same place on every node (a shared
    filesystem), and so must ``store_dir``. ``ort_lib`` defaults to the library this process
    finds (``ORT_DYLIB_PATH`` or ``.ort/``), passed to the workers as an absolute path.
    ``rows_per_part``: images per input block, each written as one part file (default: about
    1/32 of the selection, 32 to 256).

    A worker that dies is restarted and its block retried (Ray Data's defaults for actor
    pools, ``max_restarts=-1``, ``max_task_retries=-1``); the retry replaces the block's part.

    Returns a summary dict: ``selected``, ``cached``, ``embedded``, ``skipped`` (id: reason),
    ``parts``, ``seconds``.
    """
    import ray
    import ray.data

    start = time.monotonic()
    if not ray.is_initialized():
        ray.init()
    data, model_dir, store_dir = (os.path.abspath(os.fspath(p)) for p in (data, model_dir, store_dir))
    threads = int(threads_per_worker or 1)
    if num_workers is None:
        num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    lib = os.path.abspath(os.fspath(ort_lib)) if ort_lib else os.fspath(_native.ort_library())
    fingerprint = _native.read_manifest(model_dir)["fingerprint"]
    plan = _plan(data, splits, seed, stratified)
    rows = plan["rows"]
    hashes = _hashes(rows)
    store = Store(store_dir)
    missing = set(store.missing([r[0] for r in rows], [hashes.get(r[0], "") for r in rows], fingerprint))
    blocks = _blocks(rows, hashes, missing, rows_per_part or _block_size(len(rows)), fingerprint)
    results = []
    if blocks:
        ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
        out = ds.map_batches(
            _Embedder,
            fn_constructor_kwargs=dict(model_dir=model_dir, store_dir=store_dir, classes=plan["classes"],
                                       threads=threads, ort_lib=lib, batch_size=batch_size),
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=threads,
        )
        results = out.take_all()
    store.remove_dead_temp_files()
    return {
        "selected": len(rows),
        "not_in_split": plan["not_in_split"],
        "cached": len(rows) - len(missing),
        "embedded": sum(int(r["rows"]) for r in results),
        "skipped": [s for r in results for s in str(r["skipped"]).split("\n") if s],
        "parts": len(results),
        "seconds": time.monotonic() - start,
    }


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m xfer.ray``: :func:`extract` from the command line."""
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m xfer.ray",
        description="Extract embeddings with Ray Data into an xfer store (the store `xfer extract` writes; "
                    "images already stored are not embedded again).",
    )
    parser.add_argument("--data", required=True, help="dataset root (class folders or a CSV manifest)")
    parser.add_argument("--model", required=True, help="model folder (model.onnx + model.json)")
    parser.add_argument("--store", required=True, help="store directory (on a filesystem every node mounts)")
    parser.add_argument("--split", default=DEMO_SPLITS, help="split tags, as xfer extract (default " + DEMO_SPLITS.replace("%", "%%") + ")")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the split order")
    parser.add_argument("--stratified", action="store_true", help="slice each class separately")
    parser.add_argument("--batch-size", type=int, default=32, help="images per ONNX Runtime run")
    parser.add_argument("--workers", type=int, default=None, help="actors (default: cluster CPUs / threads per worker)")
    parser.add_argument("--threads-per-worker", type=int, default=None, help="CPUs and ORT threads per actor (1)")
    parser.add_argument("--rows-per-part", type=int, default=None, help="images per input block / part file")
    parser.add_argument("--ort-lib", default=None, help="ONNX Runtime library (default: ORT_DYLIB_PATH, then .ort/ up from here)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (e.g. auto or ray://HEAD:10001); default: start a local one")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (without --address)")
    args = parser.parse_args(argv)

    import ray

    if args.address:
        ray.init(address=args.address)
    else:
        ray.init(num_cpus=args.num_cpus)
    try:
        summary = extract(args.data, args.model, args.store, splits=args.split, seed=args.seed,
                          batch_size=args.batch_size, num_workers=args.workers,
                          threads_per_worker=args.threads_per_worker, rows_per_part=args.rows_per_part,
                          stratified=args.stratified, ort_lib=args.ort_lib)
    except XferError as e:
        raise SystemExit(f"error: {e}")
    finally:
        ray.shutdown()
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
