"""YNAT files through Ray Data: one validated read task per file, for training and predict-batch alike.

Why one reader: training and `predict-batch` accept the same files, so they must parse, validate, number
and name rows the same way. Each read task runs `reading.read_file_rows` (parse + validate + the id/guid rule +
the file's own 1-based row numbers) on one file and yields Arrow rows; Ray Data splits each task's output
into blocks, so one big file still spreads over downstream tasks and actors. Skipped rows and per-file
record counts go to a 0-CPU `RowLedger` actor, which the driver asks afterwards; bad rows reach the one
quarantine writer, `quarantine.write_quarantine`. Read tasks receive only the `RowArgs` of the run.

Training files never pass through the driver (`stream_file_splits`):
  1. count pass: read + validate every file; per block, a 65,536-bucket histogram of the rows' (seed, guid)
     hashes -> the driver sums the histograms (O(1) memory), the ledger gives records and bad rows.
  2. collect pass (skipped when nothing is held out and nothing is capped): only rows whose hash bucket lies
     below the hold-out / tokenizer-sample boundary, plus the rows of the one or two boundary buckets ->
     a small DataFrame: the validation rows, a preset's tokenizer sample, and the exact thresholds.
  3. the train split: a lazy read -> filter by hash range -> (`features.to_token_dataset`) tokenize chain
     that Train workers consume while training, file by file, every epoch.
The read and the filter ask the same CPUs as tokenization, so Ray Data fuses them into one task per file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from ynat_ray.config import DataArgs, RowArgs
from ynat_ray.data.files import expand_paths
from ynat_ray.data.reading import read_file_rows, read_rows
from ynat_ray.data.splits import (
    BUCKETS,
    HashOrder,
    HashSplit,
    Splits,
    check_hold_out,
    hash_buckets,
    plan_hash_split,
    small_splits,
    split_hashes,
    split_ranks,
)
from ynat_ray.data.validation import BadRow, DataError, DataValidationError
from ynat_ray.errors import UsageError
from ynat_ray.labels import ID2LABEL
from ynat_ray.resources import READ_CPUS

# Columns a read task yields besides the text column (named as in the input, `RowArgs.text_column`).
READER_COLUMNS = ("guid", "label", "gold", "source", "row")


class RowLedger:
    """Per input file: how many records it had and which were skipped. Runs as a 0-CPU actor.

    Keyed by file, so a read task that Ray retries overwrites its own entry instead of counting twice.
    """

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, list[BadRow]]] = {}

    def record(self, source: str, rows: int, bad: list[BadRow]) -> None:
        self.files[source] = (rows, bad)

    def totals(self) -> tuple[int, list[BadRow]]:
        bad = [b for source in sorted(self.files) for b in self.files[source][1]]
        return sum(rows for rows, _ in self.files.values()), bad


def row_args(rows: RowArgs) -> RowArgs:
    """Just the `RowArgs` of `rows` (a `DataArgs` is one too): what a read task needs, and all it receives."""
    return RowArgs(**{f.name: getattr(rows, f.name) for f in fields(RowArgs)})


def row_ids(file_index: int, rows: np.ndarray) -> np.ndarray:
    """One int64 per input row, unique across a job's files: (index of the file in the job's list << 40) + row.

    predict-batch's resumable runs key their Ray Data checkpoint on it (`row_id`); the same arguments list the
    same files in the same order (`files.expand_paths` sorts), so a rerun gives every row the same id.
    """
    return (np.int64(file_index) << np.int64(40)) + rows.astype(np.int64)


def read_file(
    path: str, rows: RowArgs, ledger: Any = None, require_label: bool = False, file_index: int | None = None, skip: Any = None
) -> Iterator[pa.Table]:
    """Validate one file and yield its good rows: guid, <text column>, label, gold, source, row (and row_id
    when `file_index` is given, see `row_ids`, less the sorted row_ids in `skip`: a resumed predict-batch's done rows).

    `label` is the int id (-1 without a label; training asks `require_label=True`, which makes a missing
    label a bad row); `gold` is the topic name or null (predict-batch writes it next to its prediction).
    """
    import ray

    clean, records, bad = read_file_rows(path, rows, require_label=require_label)
    if ledger is not None:
        ray.get(ledger.record.remote(path, records, bad))
    columns: dict[str, Any] = {
        "guid": pa.array(clean["guid"].tolist(), pa.string()),
        rows.text_column: pa.array(clean["title"].tolist(), pa.string()),
        "label": pa.array(clean["label"].to_numpy(dtype=np.int64)),
        "gold": pa.array([ID2LABEL.get(int(i)) for i in clean["label"]], pa.string()),
        "source": pa.array([path] * len(clean), pa.string()),
        "row": pa.array(clean["row"].to_numpy(dtype=np.int64)),
    }
    table = pa.table(columns)
    if file_index is not None:
        ids = row_ids(file_index, clean["row"].to_numpy(dtype=np.int64))
        table = table.append_column("row_id", pa.array(ids))
        if skip is not None and len(skip):
            table = table.filter(pa.array(~np.isin(ids, skip)))
    yield table


class YnatFilesDatasource(Datasource):
    """One Ray Data read task per input file: `read_file` under `read_datasource`.

    Why a Datasource rather than map_batches over a list of paths: a map task's output is buffered into
    one block per task, and one block feeds one actor, so a single big file would run on one actor.
    Read tasks get Ray Data's block splitting, which spreads each file's rows downstream.
    """

    def __init__(
        self, files: list[str], rows: RowArgs, ledger: Any = None, *, require_label: bool = False, with_row_id: bool = False,
        skip_row_ids: Any = None,
    ) -> None:  # fmt: skip
        # Only the row options travel to the read tasks, even when the caller holds a DataArgs (a RowArgs too).
        self.files, self.rows, self.ledger, self.require_label = files, row_args(rows), ledger, require_label
        self.with_row_id, self.skip_row_ids = with_row_id, skip_row_ids

    def get_name(self) -> str:
        return "YnatFiles"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list[ReadTask]:
        return [
            ReadTask(
                functools.partial(
                    read_file, path, self.rows, self.ledger, self.require_label, index if self.with_row_id else None, self.skip_row_ids
                ),
                BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(path,)),
                per_task_row_limit=per_task_row_limit,
            )
            for index, path in enumerate(self.files)
        ]


def read_dataset(files: list[str], rows: RowArgs, *, ledger: Any = None, require_label: bool = False, num_cpus: float = READ_CPUS) -> Any:
    """The lazy Ray Dataset of validated rows from `files` (see `read_file` for the columns).

    One output block per file (more only past Ray Data's block-size limit): without `override_num_blocks`
    Ray Data cuts every file into ~200 / files blocks, and each block then costs a filter + tokenize task
    (with the tokenizer to unpickle), overhead that eats into training throughput on a few CPUs. predict-batch
    keeps the cutting (its blocks spread over actors; `batch.build_dataset`).
    """
    import ray

    source = YnatFilesDatasource(files, rows, ledger, require_label=require_label)
    return ray.data.read_datasource(source, num_cpus=num_cpus, override_num_blocks=len(files))


def unwrap_validation_error(err: BaseException) -> DataValidationError | None:
    """The DataValidationError a read task raised, from inside Ray's task-error wrappers."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, DataValidationError):
            return cur
        stack += [cur.__cause__, cur.__context__, getattr(cur, "cause", None)]
    return None


@contextlib.contextmanager
def validation_errors() -> Iterator[None]:
    """Re-raise a read task's DataValidationError as itself (file, row, field), not as Ray's wrapper."""
    try:
        yield
    except Exception as err:
        found = unwrap_validation_error(err)
        if found is None:
            raise
        raise DataValidationError(found.source, found.row, found.field, found.reason) from None


# ---------------------------------------------------------------------------------------------
# Streaming training split


def _bucket_counts(batch: pa.Table, seed: int) -> pa.Table:
    """One block -> (bucket, rows) pairs of its guid hashes: all the driver needs to rank the corpus."""
    buckets, rows = np.unique(hash_buckets(split_hashes(batch.column("guid").to_pylist(), seed)), return_counts=True)
    return pa.table({"bucket": pa.array(buckets, pa.int64()), "rows": pa.array(rows, pa.int64())})


def _rows_in_buckets(batch: pa.Table, seed: int, text_column: str, upto: int, extra: tuple[int, ...]) -> pa.Table:
    """Rows whose hash bucket is <= upto or in `extra`, as canonical columns plus their hash."""
    hashes = split_hashes(batch.column("guid").to_pylist(), seed)
    buckets = hash_buckets(hashes)
    keep = (buckets <= upto) | np.isin(buckets, np.asarray(extra, dtype=np.int64))
    mask = pa.array(keep)
    return pa.table(
        {
            "guid": batch.column("guid").filter(mask),
            "title": batch.column(text_column).filter(mask),
            "label": batch.column("label").filter(mask),
            "source": batch.column("source").filter(mask),
            "row": batch.column("row").filter(mask),
            "hash": pa.array(hashes[keep], pa.uint64()),
        }
    )


def _train_rows(batch: pa.Table, split: HashSplit, text_column: str) -> pa.Table:
    """Keep a block's train rows (by hash range): guid, title and label (what tokenization and a teacher need)."""
    mask = pa.array(split.train_mask(split_hashes(batch.column("guid").to_pylist(), split.seed)))
    columns = {"guid": batch.column("guid"), "title": batch.column(text_column), "label": batch.column("label")}
    return pa.table({name: column.filter(mask) for name, column in columns.items()})


def count_rows(files: list[str], data: DataArgs, *, num_cpus: float = READ_CPUS) -> tuple[HashOrder, int, list[BadRow]]:
    """Pass 1: read and validate every file in Ray Data tasks -> (hash histogram, records read, bad rows).

    With --on_bad_rows error this is where a malformed row stops the run, before any model is built.
    """
    import ray

    ledger = ray.remote(num_cpus=0)(RowLedger).remote()
    try:
        ds = read_dataset(files, data, ledger=ledger, require_label=True, num_cpus=num_cpus).map_batches(
            _bucket_counts, fn_kwargs={"seed": data.seed}, batch_format="pyarrow", batch_size=None, num_cpus=num_cpus
        )
        counts = np.zeros(BUCKETS, dtype=np.int64)
        with validation_errors():
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                np.add.at(counts, batch["bucket"], batch["rows"])
        records, bad = ray.get(ledger.totals.remote())
    finally:
        ray.kill(ledger)
    order = HashOrder(counts)
    if order.total != records - len(bad):
        raise RuntimeError(f"counted {order.total} good rows but the files have {records} records and {len(bad)} bad rows")
    return order, records, bad


def collect_rows(files: list[str], data: DataArgs, upto: int, extra: tuple[int, ...], *, num_cpus: float = READ_CPUS) -> pd.DataFrame:
    """Pass 2: the rows of hash buckets <= upto and of the `extra` buckets, in file order, with their hash.

    Only these small sets reach the driver: the hold-out, a preset's tokenizer sample, and the one or two
    buckets where a threshold falls (about rows / 65,536 rows each).
    """
    ds = read_dataset(files, data, require_label=True, num_cpus=num_cpus).map_batches(
        _rows_in_buckets,
        fn_kwargs={"seed": data.seed, "text_column": data.text_column, "upto": upto, "extra": extra},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=num_cpus,
    )
    with validation_errors():
        frame = ds.to_pandas()
    if not len(frame):
        return _no_rows()
    position = {path: i for i, path in enumerate(files)}  # Ray Data may finish blocks out of order
    frame = frame.assign(_file=frame["source"].map(position)).sort_values(["_file", "row"], kind="stable")
    return frame.drop(columns="_file").reset_index(drop=True)


def _no_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {"guid": pd.Series([], dtype=object), "title": pd.Series([], dtype=object), "label": np.array([], np.int64),
         "source": pd.Series([], dtype=object), "row": np.array([], np.int64), "hash": np.array([], np.uint64)}
    )  # fmt: skip


def _boundary_buckets(order: HashOrder, hold_out: int, ranks: dict[str, int], tokenizer_rows: int) -> tuple[int, tuple[int, ...]]:
    """(upto, extra): the collect pass keeps every row of buckets <= upto and of the `extra` buckets.

    Rows needed in full: the hold-out (below the validation boundary) and the tokenizer sample (just above
    it; everything when the sample is all train rows). Hashes needed: the train-cap boundary bucket too.
    """
    upto = order.bucket_at(hold_out) if hold_out else -1
    if tokenizer_rows:
        upto = max(upto, BUCKETS - 1 if order.bucket_at(ranks["tokenizer"]) is None else order.bucket_at(ranks["tokenizer"]))
    extra = tuple(b for b in [order.bucket_at(ranks["train"])] if b is not None) if "train" in ranks else ()
    return upto, extra


def _tokenizer_sample(order: HashOrder, split: HashSplit, small: pd.DataFrame, hashes: np.ndarray, rank: int) -> list[str]:
    """The train titles below the tokenizer-sample boundary (hash rank `rank`): a preset's bounded tokenizer corpus."""
    below = order.value_at(rank, hashes)
    picked = split.train_mask(hashes)
    if below is not None:
        picked &= hashes < np.uint64(below)
    return small.loc[picked, "title"].tolist()


def stream_file_splits(data: DataArgs, *, tokenizer_rows: int = 0, task_cpus: float = READ_CPUS) -> Splits:
    """Train/validation/test for training files without pulling the train split to the driver.

    Same rows as `sources.load_splits(data)` in memory (same hash rule, same thresholds). The train split is a
    lazy Dataset of guid/title/label rows whose tasks ask `task_cpus` each (at most the CPUs Train workers leave free).
    """
    if data.text_column in READER_COLUMNS:
        raise UsageError(f"--text_column {data.text_column!r} clashes with a column the reader adds ({', '.join(READER_COLUMNS)})")
    files = expand_paths(data.data)
    order, records, bad = count_rows(files, data)
    hold_out = 0 if data.validation_data else data.validation_size
    check_hold_out(hold_out, order.total)
    ranks = split_ranks(hold_out, data.max_train_samples, tokenizer_rows)
    upto, extra = _boundary_buckets(order, hold_out, ranks, tokenizer_rows)
    # Nothing held out, no cap, no tokenizer sample (--validation_data with a hub model): no second pass.
    small = collect_rows(files, data, upto, extra) if upto >= 0 or extra else _no_rows()
    hashes = small["hash"].to_numpy(dtype=np.uint64)
    split, train_rows = plan_hash_split(order, hashes, data.seed, hold_out, data.max_train_samples)
    if train_rows <= 0:
        raise DataError(f"no training rows left in {data.data} ({order.total} valid rows, {hold_out} held out)")

    sample = _tokenizer_sample(order, split, small, hashes, ranks["tokenizer"]) if tokenizer_rows else None
    if data.validation_data:
        valid = read_rows(data.validation_data, data, bad_rows=bad)
    else:
        valid = small.loc[split.validation_mask(hashes), ["guid", "title", "label", "source", "row"]].reset_index(drop=True)
        valid["label"] = valid["label"].astype("int64")
    test = read_rows(data.test_data, data, bad_rows=bad) if data.test_data else None

    train = read_dataset(files, data, require_label=True, num_cpus=task_cpus).map_batches(
        _train_rows,
        fn_kwargs={"split": split, "text_column": data.text_column},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=task_cpus,
    )
    splits = small_splits(data, None, valid, test, bad)
    splits.train_stream, splits.train_rows, splits.tokenizer_sample = train, train_rows, sample
    splits.input_rows, splits.files = records, files
    return splits
