"""Rebuild the small YNAT subsample that ships inside the package (maintainers only).

Why: the offline default must train on real headlines without the HF hub, but the package must stay
small. We mirror the notebook's sizes (10k train, 1k validation, 1k test) and its seed (42).

Usage: python scripts/make_embedded_data.py --source ../shared/data/ynat
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "ynat_ray" / "assets" / "ynat_default"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help="folder with partial_train.jsonl and validation.jsonl")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (the notebook's)")
    args = parser.parse_args()
    src = Path(args.source)
    train = pd.read_json(src / "partial_train.jsonl", lines=True)
    dev = pd.read_json(src / "validation.jsonl", lines=True)
    train = train.sample(n=10_000, random_state=args.seed).sort_values("guid")
    # Like the notebook: test = 1k from the dev split, validation = 1k from the rest of it.
    test = dev.sample(n=1_000, random_state=args.seed)
    valid = dev.drop(test.index).sample(n=1_000, random_state=args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, df in (("train", train), ("validation", valid), ("test", test.sort_values("guid"))):
        df = df.sort_values("guid").reset_index(drop=True)
        df["label"] = df["label"].astype("int64")
        df.to_parquet(OUT / f"{name}.parquet", compression="zstd", index=False)
        print(name, len(df), df["label"].value_counts().sort_index().tolist())


if __name__ == "__main__":
    main()
