"""A bigger validation set for recipe decisions: the KLUE YNAT dev rows the embedded splits did not take.

The embedded validation and test splits are 1,000 rows each, drawn from YNAT's 7,107 dev rows; one run's
macro-F1 on 1,000 rows moves by about +-0.015 with the seed alone, so small recipe gains cannot be seen on
them. The other 5,107 dev rows are from the same distribution, disjoint from the embedded test rows, and
were never used for training, so they can decide between recipes without touching the test split.

    python bench/heldout_dev.py --dev ../shared/data/ynat/validation.jsonl CHECKPOINT [CHECKPOINT ...]

Each checkpoint is scored with `ynat-ray evaluate --backend torch` (the product's own evaluation path);
the char TF-IDF + logistic regression baseline (trained on the embedded train rows) is scored beside them.
Writes bench/results/heldout_dev_<time>.json. The rows are KLUE YNAT (Park et al., 2021), CC BY-SA 4.0;
the held-out file goes to a temporary directory and is not kept.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common
import pandas as pd
from tfidf_baseline import macro_f1, yardstick


def held_out_rows(dev_path: str) -> pd.DataFrame:
    """YNAT dev rows (read and validated by the project's row reader) minus the embedded validation and test rows."""
    from ynat_ray.data.sources import embedded_split

    dev = common.read_ynat(dev_path, strict=True)
    taken = set(embedded_split("validation")["guid"]) | set(embedded_split("test")["guid"])
    return dev[~dev["guid"].isin(taken)].reset_index(drop=True)


def tfidf_macro_f1(rows: pd.DataFrame) -> float:
    """The yardstick (bench/tfidf_baseline.py), trained on the embedded train rows, on these rows."""
    from ynat_ray.data.sources import embedded_split

    train = embedded_split("train")
    return macro_f1(rows["label"], yardstick().fit(train["title"], train["label"]).predict(rows["title"]))


def checkpoint_macro_f1(checkpoint: str, rows_path: str) -> float:
    """macro-F1 from `ynat-ray evaluate --json` on the held-out rows."""
    out = subprocess.run(
        [sys.executable, "-m", "ynat_ray.cli", "evaluate", "--checkpoint", checkpoint, "--test_data", rows_path, "--backend", "torch", "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(json.loads(out.stdout[out.stdout.index("{") :])["macro_f1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True, help="KLUE YNAT dev rows (jsonl with guid, title, label).")
    parser.add_argument("--no_tfidf", action="store_true", help="Skip the TF-IDF baseline (about 20 s).")
    parser.add_argument("checkpoints", nargs="+", help="Checkpoint directories to score.")
    args = parser.parse_args()
    rows = held_out_rows(args.dev)
    result: dict = {"rows": len(rows), "checkpoints": {}}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "heldout_dev.jsonl")
        rows.to_json(path, orient="records", lines=True, force_ascii=False)
        for checkpoint in args.checkpoints:
            result["checkpoints"][checkpoint] = score = checkpoint_macro_f1(checkpoint, path)
            print(f"{score:.4f}  {checkpoint}", flush=True)
    if not args.no_tfidf:
        result["tfidf_macro_f1"] = tfidf_macro_f1(rows)
        print(f"{result['tfidf_macro_f1']:.4f}  char TF-IDF + logistic regression", flush=True)
    scores = list(result["checkpoints"].values())
    result["mean_macro_f1"] = sum(scores) / len(scores)
    print(f"held-out dev rows: {len(rows)}; mean macro-F1 of {len(scores)} checkpoint(s): {result['mean_macro_f1']:.4f}")
    common.write_results("heldout_dev", result)


if __name__ == "__main__":
    main()
