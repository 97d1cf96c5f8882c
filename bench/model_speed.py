"""The model alone: torch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 (and torch bf16 autocast where the CPU
has native bf16: `amx_bf16` or `avx512_bf16`, `ynat_ray.cpu.has_native_bf16`), per trained checkpoint.

What one cell measures: the product's engine (`load_engine`, a backend, N threads) `.logits(chunk, batch_size=B)` over
consecutive chunks of B real validation titles, so tokenization, padding and the forward pass are all
included (the same call a Serve replica or a batch actor makes). Titles rotate through the input file; each
cell runs for `--seconds` after a short warm-up and reports texts/s. Every backend runs with the same
explicit intra-op thread count (`--threads`, default 2).

Parity, on every row of `--input` (batches of 64, the engine's length-sorted padding):
  - ONNX fp32 vs torch fp32: the largest absolute difference of any softmax probability, and label agreement;
  - ONNX int8 vs ONNX fp32: label agreement, and macro-F1 against the gold labels of both;
  - torch bf16 (when measured) vs torch fp32: label agreement and macro-F1.

    . .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/model_speed.py --model tiny=/path/to/tiny/checkpoint --model 6x384=/path/to/small/checkpoint \\
        --input /path/to/klue-ynat/validation.jsonl

Writes bench/results/model_speed_<unix time>.json and prints a markdown table. The validation rows are KLUE
YNAT (Park et al., KLUE, 2021), CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from functools import partial
from typing import Any

import common
import numpy as np

from ynat_ray.config import EngineArgs
from ynat_ray.inference import TextClassifier, load_engine
from ynat_ray.metrics import classification_metrics

PARITY_BATCH = 64


def engine(checkpoint: str, variant: str, threads: int) -> TextClassifier:
    """torch-fp32 / torch-bf16 / onnx / onnx-int8 -> the product's engine on CPU with `threads` intra-op threads."""
    backend = "torch" if variant.startswith("torch") else variant
    precision = {"torch-fp32": "fp32", "torch-bf16": "bf16"}.get(variant, "auto")  # ONNX Runtime runs fp32 or int8 as exported
    return load_engine(EngineArgs(checkpoint=checkpoint, backend=backend, precision=precision), cpus=threads)


def speed(clf: TextClassifier, titles: list[str], batch: int, seconds: float, warmup_s: float) -> dict[str, float]:
    """texts/s over consecutive chunks of `batch` titles (rotating through `titles`) for about `seconds`."""
    pos = 0

    def step() -> None:
        nonlocal pos
        chunk = titles[pos : pos + batch]
        if len(chunk) < batch:
            chunk += titles[: batch - len(chunk)]
        pos = (pos + batch) % len(titles)
        clf.logits(chunk, batch_size=batch)

    until, calls = time.perf_counter() + warmup_s, 0
    while time.perf_counter() < until or calls < 5:  # first calls pay for kernel selection / JIT
        step()
        calls += 1
    import psutil

    done, started = 0, time.perf_counter()
    cpu0, machine0 = time.process_time(), psutil.cpu_times()
    while True:
        step()
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    cpu, machine1 = time.process_time() - cpu0, psutil.cpu_times()
    busy = (sum(machine1) - machine1.idle - machine1.iowait) - (sum(machine0) - machine0.idle - machine0.iowait)
    # cpu_util: cores this process kept busy; other_cpu: cores everything else on the machine used meanwhile (noise)
    return {"texts_per_s": done / elapsed, "texts": done, "seconds": elapsed, "cpu_util": cpu / elapsed, "other_cpu": max(0.0, busy - cpu) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(parser, required=True)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32], help="Titles per call (the engine's batch size).")
    parser.add_argument("--threads", type=int, default=2, help="Intra-op threads for every backend (torch and ONNX Runtime).")
    parser.add_argument("--seconds", type=float, default=4.0, help="Measured seconds per cell (after the warm-up).")
    parser.add_argument("--warmup_s", type=float, default=1.0, help="Warm-up seconds per cell (not measured).")
    parser.add_argument(
        "--variants", nargs="+", default=None, choices=["torch-fp32", "torch-bf16", "onnx", "onnx-int8"],
        help="Engines to measure. Default: torch-fp32, onnx, onnx-int8, plus torch-bf16 when the CPU has native bf16.",
    )  # fmt: skip
    common.add_quiet_args(parser, retries=3)
    parser.add_argument("--no_parity", action="store_true", help="Skip the parity pass over every --input row.")
    common.add_out_arg(parser)
    args = parser.parse_args()

    models = common.parse_models(args.model)
    cpu = common.machine()
    variants = args.variants or ["torch-fp32", *(["torch-bf16"] if cpu["native_bf16"] else []), "onnx", "onnx-int8"]
    rows = common.read_ynat(args.input)
    titles = rows["title"].tolist()
    gold = rows["label"].to_numpy(dtype=np.int64) if "label" in rows else None
    print(f"CPU: {cpu['model']}, {cpu['usable_cpus']} usable CPUs; flags {', '.join(k for k, v in cpu['flags'].items() if v)}", flush=True)
    print(f"input: {args.input} ({len(titles)} rows); threads {args.threads}; variants {', '.join(variants)}", flush=True)

    started = time.time()
    cells: list[dict[str, Any]] = []
    parity: dict[str, dict[str, Any]] = {}
    engines: dict[str, dict[str, Any]] = {}
    for name, checkpoint in models.items():
        probs: dict[str, np.ndarray] = {}
        for variant in variants:
            clf = engine(checkpoint, variant, args.threads)
            engines[f"{name}/{variant}"] = clf.describe()
            for batch in args.batch_sizes:
                result, _, _ = common.undisturbed(
                    partial(speed, clf, titles, batch, args.seconds, args.warmup_s), f"{name} {variant} batch {batch}",
                    args.max_foreign_cores, args.retries, foreign_of=lambda r: r["other_cpu"],
                )  # fmt: skip
                cells.append({"model": name, "variant": variant, "batch": batch, **{k: round(v, 2) for k, v in result.items()}})
                print(f"  {name:<8} {variant:<10} batch {batch:>3}: {result['texts_per_s']:>8.1f} texts/s (cpu {result['cpu_util']:.2f}, other processes {result['other_cpu']:.2f})", flush=True)
            if not args.no_parity:
                probs[variant] = clf.probabilities(titles, batch_size=PARITY_BATCH)
            del clf
            gc.collect()
        if probs:
            parity[name] = parity_report(probs, gold)
            print(f"  {name} parity: {json.dumps(parity[name])}", flush=True)

    print()
    print(table(cells, args.batch_sizes))
    if parity:
        print()
        print(parity_table(parity, len(titles)))
    results = {
        "args": vars(args), "models": models, "cpu": cpu, "rows": len(titles), "engines": engines,
        "cells": cells, "parity": parity, "versions": common.versions("torch", "onnxruntime", "transformers"),
    }  # fmt: skip
    common.write_results("model_speed", results, args.out, started=started)


def parity_report(probs: dict[str, np.ndarray], gold: np.ndarray | None) -> dict[str, Any]:
    """Parity figures between the engines' softmax outputs on the same rows (see the module docstring)."""
    pred = {k: v.argmax(axis=1) for k, v in probs.items()}
    out: dict[str, Any] = {}
    if "torch-fp32" in probs and "onnx" in probs:
        out["onnx_fp32_max_abs_prob_diff_vs_torch"] = float(np.abs(probs["onnx"] - probs["torch-fp32"]).max())
        out["onnx_fp32_label_agreement_vs_torch"] = float((pred["onnx"] == pred["torch-fp32"]).mean())
    fp32 = "onnx" if "onnx" in probs else "torch-fp32" if "torch-fp32" in probs else None
    if fp32 and "onnx-int8" in probs:
        out["int8_reference"] = fp32
        out["int8_label_agreement_vs_fp32"] = float((pred["onnx-int8"] == pred[fp32]).mean())
        out["int8_max_abs_prob_diff_vs_fp32"] = float(np.abs(probs["onnx-int8"] - probs[fp32]).max())
    if "torch-bf16" in probs and "torch-fp32" in probs:
        out["bf16_label_agreement_vs_fp32"] = float((pred["torch-bf16"] == pred["torch-fp32"]).mean())
        out["bf16_max_abs_prob_diff_vs_fp32"] = float(np.abs(probs["torch-bf16"] - probs["torch-fp32"]).max())
    if gold is not None:
        out["macro_f1"] = {k: round(classification_metrics(gold, v)["macro_f1"], 4) for k, v in pred.items()}
        out["accuracy"] = {k: round(float((v == gold).mean()), 4) for k, v in pred.items()}
    return out


def table(cells: list[dict[str, Any]], batches: list[int]) -> str:
    """One row per (model, engine): texts/s per batch size and the speed-up over torch fp32."""
    by = {(c["model"], c["variant"], c["batch"]): c["texts_per_s"] for c in cells}
    keys = list(dict.fromkeys((c["model"], c["variant"]) for c in cells))
    other = {(c["model"], c["variant"]): max(o["other_cpu"] for o in cells if (o["model"], o["variant"]) == (c["model"], c["variant"])) for c in cells}
    head = "| model | engine | " + " | ".join(f"batch {b} texts/s" for b in batches) + " | " + " | ".join(f"x torch fp32 @{b}" for b in batches)
    rows = [head + " | other processes' CPU (max) |", "|---|---|" + "---:|" * (2 * len(batches) + 1)]
    for model, variant in keys:
        speeds = [by.get((model, variant, b)) for b in batches]
        base = [by.get((model, "torch-fp32", b)) for b in batches]
        ratios = [f"{s / t:.2f}x" if s and t else "" for s, t in zip(speeds, base)]
        rows.append(f"| {model} | {variant} | " + " | ".join(f"{s:.0f}" if s else "" for s in speeds) + " | " + " | ".join(ratios) + f" | {other[(model, variant)]:.2f} |")
    return "\n".join(rows)


def parity_table(parity: dict[str, dict[str, Any]], n: int) -> str:
    rows = [
        f"| model | ONNX fp32 max abs prob diff vs torch ({n} rows) | int8 label agreement vs ONNX fp32 | macro-F1 torch fp32 / ONNX fp32 / ONNX int8 | bf16 agreement vs fp32 (macro-F1) |",
        "|---|---:|---:|---|---|",
    ]
    for model, p in parity.items():
        f1 = p.get("macro_f1", {})
        bf16 = f"{p['bf16_label_agreement_vs_fp32']:.2%} ({f1.get('torch-bf16', float('nan')):.4f})" if "bf16_label_agreement_vs_fp32" in p else "not measured"
        rows.append(
            f"| {model} | {p.get('onnx_fp32_max_abs_prob_diff_vs_torch', float('nan')):.1e} | {p.get('int8_label_agreement_vs_fp32', float('nan')):.2%} "
            f"| {f1.get('torch-fp32', float('nan')):.4f} / {f1.get('onnx', float('nan')):.4f} / {f1.get('onnx-int8', float('nan')):.4f} | {bf16} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
