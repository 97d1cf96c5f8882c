"""Which rows a run trains, validates and tests on: the embedded subsample, the hub, or files.

- embedded: the real YNAT subsample shipped in the package (offline; a 10k/1k/1k split).
- hub: `datasets.load_dataset("klue", "ynat")`; its validation split is cut into validation and test like the
  notebook.
- files: --data for training, validated like every other input; the hold-out is the hash split of `splits`,
  in memory here or streamed through Ray Data by `stream.stream_file_splits`.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from ynat_ray.config import EMBEDDED, HUB, DataArgs, RowArgs
from ynat_ray.data.reading import read_rows
from ynat_ray.data.splits import Splits, hash_split_frame, sample_rows, small_splits
from ynat_ray.data.validation import BadRow, validate_frame
from ynat_ray.errors import UsageError, YnatError


class HubUnavailableError(YnatError):
    """The Hugging Face hub could not be reached; the message names the offline alternatives."""


def embedded_split(split: str) -> pd.DataFrame:
    """The real YNAT subsample shipped in the package (CC BY-SA 4.0, see its README)."""
    path = resources.files("ynat_ray") / "assets" / "ynat_default" / f"{split}.parquet"
    with resources.as_file(path) as local:
        df, _ = validate_frame(pd.read_parquet(local), f"embedded/{split}.parquet")
    return df


def hub_split(split: str, rows: RowArgs, bad_rows: list[BadRow] | None = None) -> pd.DataFrame:
    """datasets.load_dataset('klue', 'ynat'): the real thing, for machines that reach the hub.

    Validated like a file: with --on_bad_rows skip, bad rows are appended to `bad_rows` (quarantined and
    counted by the caller), never dropped silently.
    """
    try:
        from datasets import load_dataset

        ds = load_dataset("klue", "ynat", split=split)
    except Exception as err:  # noqa: BLE001 - any hub/network failure gets the same advice
        raise HubUnavailableError(
            f"could not load klue/ynat ({split}) from the Hugging Face hub: {err}. "
            "Offline? Use --data embedded (the YNAT subsample shipped with ynat-ray) or --data PATH "
            "to local YNAT files (json, jsonl, csv, parquet)."
        ) from err
    df, bad = validate_frame(ds.to_pandas(), f"hub:klue/ynat/{split}", on_bad_rows=rows.on_bad_rows)
    if bad_rows is not None:
        bad_rows.extend(bad)
    return df


def _hold_out(df: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split n seeded rows off df: (rest, held_out)."""
    if n >= len(df):
        raise UsageError(f"cannot hold out {n} rows from {len(df)}; lower --validation_size")
    held = df.sample(n=n, random_state=seed)
    return df.drop(held.index).reset_index(drop=True), held.reset_index(drop=True)


def load_splits(data: DataArgs, *, stream: bool = False, tokenizer_rows: int = 0, task_cpus: float = 1.0) -> Splits:
    """Train/validation/test rows for a run, reproducible from data.seed.

    - embedded: the shipped subsample.
    - hub: klue/ynat train; its validation split is cut into validation and test like the notebook.
    - files: --data for training; --validation_data, or a hold-out of the --validation_size rows with the
      lowest (seed, guid) hashes; --max_train_samples keeps the next lowest. With `stream=True` (training)
      the train split stays a lazy Ray Dataset read by Ray Data tasks (`stream.stream_file_splits`), with the
      same rows as the in-memory split; `tokenizer_rows` bounds the titles collected for a preset's tokenizer
      and `task_cpus` is what each of its read tasks asks for. Needs a Ray connection.
    """
    if stream and data.data not in (EMBEDDED, HUB):
        from ynat_ray.data.stream import stream_file_splits  # imports Ray Data: only the streamed path pays for it

        return stream_file_splits(data, tokenizer_rows=tokenizer_rows, task_cpus=task_cpus)
    bad: list[BadRow] = []
    if data.data == EMBEDDED:
        train, valid, test = embedded_split("train"), embedded_split("validation"), embedded_split("test")
        train = sample_rows(train, data.max_train_samples, data.seed)
    elif data.data == HUB:
        train = sample_rows(hub_split("train", data, bad), data.max_train_samples, data.seed)
        rest, test = _hold_out(hub_split("validation", data, bad), data.validation_size, data.seed)
        valid = sample_rows(rest, data.validation_size, data.seed)
    else:
        rows = read_rows(data.data, data, bad_rows=bad)
        test = read_rows(data.test_data, data, bad_rows=bad) if data.test_data else None
        if data.validation_data:
            valid = read_rows(data.validation_data, data, bad_rows=bad)
            train, _ = hash_split_frame(rows, data.seed, 0, data.max_train_samples)
        else:
            train, valid = hash_split_frame(rows, data.seed, data.validation_size, data.max_train_samples)
    if data.test_data and data.data in (EMBEDDED, HUB):
        test = read_rows(data.test_data, data, bad_rows=bad)
    return small_splits(data, train, valid, test, bad)


def evaluation_rows(data: DataArgs, bad_rows: list[BadRow] | None = None) -> tuple[str, pd.DataFrame]:
    """Rows `ynat-ray evaluate` scores: --test_data, else the test split of embedded/hub, else all of --data."""
    if data.test_data:
        return data.test_data, read_rows(data.test_data, data, bad_rows=bad_rows)
    if data.data == EMBEDDED:
        return "embedded test", sample_rows(embedded_split("test"), data.max_eval_samples, data.seed)
    if data.data == HUB:
        _, test = _hold_out(hub_split("validation", data, bad_rows), data.validation_size, data.seed)
        return "klue/ynat test (notebook split)", sample_rows(test, data.max_eval_samples, data.seed)
    return data.data, sample_rows(read_rows(data.data, data, bad_rows=bad_rows), data.max_eval_samples, data.seed)
