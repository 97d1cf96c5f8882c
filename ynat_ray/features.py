"""Rows -> model inputs: tokenization as a Ray Data `map_batches` step and padding per batch.

Why pad per batch: YNAT titles are ~20 tokens. The notebook padded every title to 512, so ~95% of
each forward pass was padding. Here Ray Data stores unpadded token ids and the collate function pads
each batch only to its own longest title.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from ray.data.collate_fn import NumpyBatchCollateFn


def tokenize_batch(batch: pd.DataFrame, tokenizer: Any, max_length: int) -> pa.Table:
    """Token ids (unpadded, truncated to max_length) and labels for one batch of canonical rows."""
    enc = tokenizer(batch["title"].tolist(), truncation=True, max_length=max_length, padding=False)
    return pa.table(
        {
            "input_ids": pa.array(enc["input_ids"], type=pa.list_(pa.int32())),
            "labels": pa.array(batch["label"].to_numpy(dtype=np.int64)),
        }
    )


def to_token_dataset(
    rows: pd.DataFrame, tokenizer: Any, max_length: int, *, materialize: bool, task_cpus: float = 1.0, blocks: int = 8
) -> Any:
    """A Ray Dataset of token ids built from validated rows (tokenized in Ray Data tasks).

    `task_cpus` must fit in the CPUs that Train workers leave free, or streaming stalls forever.
    """
    import ray

    frame = rows[["title", "label"]].reset_index(drop=True)
    step = max(1, -(-len(frame) // blocks))
    ds = ray.data.from_pandas([frame.iloc[i : i + step] for i in range(0, max(len(frame), 1), step)])
    ds = ds.map_batches(
        tokenize_batch,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        batch_format="pandas",
        batch_size=1024,
        num_cpus=task_cpus,
    )
    return ds.materialize() if materialize else ds


def pad_batch(sequences: Any, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) padded to the longest sequence in this batch."""
    length = max(len(s) for s in sequences)
    ids = np.full((len(sequences), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), length), dtype=np.int64)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    return ids, mask


class PadCollate(NumpyBatchCollateFn):
    """Collate for `iter_torch_batches`: pads per batch, returns tensors Ray moves to the device."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        ids, mask = pad_batch(batch["input_ids"], self.pad_id)
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.as_tensor(batch["labels"], dtype=torch.long),
        }
