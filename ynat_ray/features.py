"""Rows -> model inputs: tokenization as a Ray Data `map_batches` step and padding per batch.

Tokenize-and-pad lives here only: the training collate, `TextClassifier`, Serve and batch jobs all call
`encode_texts` / `pad_token_ids`, so every path pads the way the tokenizer says (pad id, padding side).

Why pad per batch: YNAT titles are a few dozen tokens at most. The notebook padded every title to 512, so
nearly all of each forward pass was padding. Here Ray Data stores unpadded token ids and the collate function pads
each batch only to its own longest title.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

TEACHER_COLUMN = "teacher_probs"  # a distillation teacher's probabilities (ynat_ray.distill), carried to the collate


def tokenize_batch(batch: pd.DataFrame, tokenizer: Any, max_length: int) -> pa.Table:
    """Token ids (unpadded, truncated to max_length) and labels for one batch of canonical rows (and the teacher's
    probabilities, when a distillation teacher scored the rows)."""
    enc = tokenizer(batch["title"].tolist(), truncation=True, max_length=max_length, padding=False)
    columns = {
        "input_ids": pa.array(enc["input_ids"], type=pa.list_(pa.int32())),
        "labels": pa.array(batch["label"].to_numpy(dtype=np.int64)),
    }
    if TEACHER_COLUMN in batch:
        probs = np.stack(batch[TEACHER_COLUMN].to_numpy()).astype(np.float32)
        columns[TEACHER_COLUMN] = pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1])
    return pa.table(columns)


def to_token_dataset(
    rows: pd.DataFrame | Any, tokenizer: Any, max_length: int, *, materialize: bool, task_cpus: float = 1.0, blocks: int = 8
) -> Any:
    """A Ray Dataset of token ids, tokenized in Ray Data tasks, from validated rows (title, label).

    `rows` is a DataFrame (small splits; embedded/hub train) or a lazy Ray Dataset (a train split streamed
    from files: read -> filter -> tokenize stays one lazy chain, so the driver never holds it).
    `task_cpus` must fit in the CPUs that Train workers leave free, or streaming stalls forever.
    """
    import ray

    if isinstance(rows, pd.DataFrame):
        frame = rows[["title", "label", *([TEACHER_COLUMN] if TEACHER_COLUMN in rows else [])]].reset_index(drop=True)
        step = max(1, -(-len(frame) // blocks))
        ds = ray.data.from_pandas([frame.iloc[i : i + step] for i in range(0, max(len(frame), 1), step)])
    else:
        ds = rows
    ds = ds.map_batches(
        tokenize_batch,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        batch_format="pandas",
        batch_size=1024,
        num_cpus=task_cpus,
    )
    return ds.materialize() if materialize else ds


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int, return_tensors: str = "np") -> dict[str, Any]:
    """Tokenize, truncate to max_length and pad to this batch's longest text: the one inference encoder.

    Padding comes from the tokenizer (its pad id and `padding_side`), exactly as `pipeline()` pads.
    """
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors=return_tensors)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def pad_token_ids(tokenizer: Any, sequences: Sequence[Sequence[int]], return_tensors: str = "pt") -> dict[str, Any]:
    """Pad already-tokenized ids to the longest in the batch with `tokenizer.pad` (DataCollatorWithPadding's way).

    Same pad id, `padding_side` and attention mask as `encode_texts`, so training and inference batches
    look alike. (The wrapper only silences the fast-tokenizer hint that pre-tokenized ids are padded here.)
    """
    from transformers.data.data_collator import pad_without_fast_tokenizer_warning

    enc = pad_without_fast_tokenizer_warning(
        tokenizer, {"input_ids": [list(map(int, s)) for s in sequences]}, padding=True, return_tensors=return_tensors
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
