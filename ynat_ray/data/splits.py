"""The deterministic train/validation split by (seed, guid) hash, the same in memory and streaming through Ray Data.

Why hashes: every row gets a 64-bit hash of (seed, guid) (`split_hashes`). The hold-out is the --validation_size
rows with the smallest hashes, --max_train_samples the next ones. The thresholds come from a histogram over the
hashes' top 16 bits plus the exact hashes of the few rows in the boundary buckets (`HashOrder`), so the same
rows are chosen whether the rows sit in a DataFrame or stream through Ray Data, on every run with the same
seed, without the driver ever holding a training corpus. Rows that share a guid always land on the same side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ynat_ray.config import DataArgs
from ynat_ray.data.validation import BadRow, DataError
from ynat_ray.errors import UsageError

BUCKET_BITS = 16
BUCKETS = 1 << BUCKET_BITS
_BUCKET_SHIFT = np.uint64(64 - BUCKET_BITS)
# A streamed preset run trains its tokenizer on at most this many train titles (the lowest hashes): enough for
# a stable vocabulary, bounded so the driver never holds the corpus.
TOKENIZER_ROWS = 100_000


@dataclass
class Splits:
    """Rows of one run. The train split is either in memory (`train`) or a lazy Ray Dataset (`train_stream`).

    Validation and test are small (rank 0 scores all of validation; the final report scores test), so they
    are always DataFrames. A streamed train split comes with its exact row count and, for the offline
    presets, a bounded hash sample of its titles to train the tokenizer on.
    """

    train: pd.DataFrame | None
    validation: pd.DataFrame
    test: pd.DataFrame | None
    bad_rows: list[BadRow] = field(default_factory=list)
    train_stream: Any = None  # ray.data.Dataset of guid/title/label rows, read by Ray Data tasks (files only)
    train_rows: int = -1  # filled from `train` when it is a DataFrame
    tokenizer_sample: list[str] | None = None  # streamed runs: the lowest-hash train titles (at most tokenizer_rows)
    input_rows: int | None = None  # streamed runs: records in the training files, bad and held-out rows included
    files: list[str] = field(default_factory=list)  # streamed runs: the training files

    def __post_init__(self) -> None:
        if self.train is not None:
            self.train_rows = len(self.train)

    @property
    def streamed(self) -> bool:
        return self.train is None

    def tokenizer_texts(self) -> Iterable[str]:
        """Titles a preset's tokenizer learns from: every in-memory train title, or the streamed run's sample."""
        if self.train is not None:
            return self.train["title"]
        return self.tokenizer_sample or []


def split_hashes(guids: Sequence[str] | Iterable[str], seed: int) -> np.ndarray:
    """A stable 64-bit hash per guid, keyed by the seed (blake2b: same value on every machine and Python run,
    unlike hash()). Every row has a guid: the file's own, or '<file name>:<row>' from validation."""
    key = str(seed).encode()
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(g).encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest(), "big") for g in guids),
        dtype=np.uint64,
    )


def hash_buckets(hashes: np.ndarray) -> np.ndarray:
    """The top BUCKET_BITS bits of each hash: which histogram bucket it counts in."""
    return (hashes >> _BUCKET_SHIFT).astype(np.int64)


class HashOrder:
    """The rank order of every row's hash, known from a histogram plus the hashes of a few boundary buckets.

    Why: the k-th smallest hash decides a hold-out of k rows. A histogram of the top 16 bits (65,536 counts,
    whatever the corpus size) says which bucket holds rank k; only that bucket's hashes (about N / 65,536 rows)
    are then needed to find the exact value. In memory the same class runs on all hashes, so both paths pick
    identical rows.
    """

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.cum = np.cumsum(self.counts)
        self.total = int(self.cum[-1]) if len(self.cum) else 0

    @classmethod
    def from_hashes(cls, hashes: np.ndarray) -> HashOrder:
        return cls(np.bincount(hash_buckets(hashes), minlength=BUCKETS))

    def bucket_at(self, rank: int) -> int | None:
        """The bucket holding the row of this 0-based rank, or None when there are not that many rows."""
        if rank >= self.total:
            return None
        return int(np.searchsorted(self.cum, rank, side="right"))

    def _bucket_values(self, bucket: int, hashes: np.ndarray) -> np.ndarray:
        values = np.sort(hashes[hash_buckets(hashes) == bucket])
        if len(values) != self.counts[bucket]:  # the input changed between the counting and the collecting pass
            raise RuntimeError(f"hash bucket {bucket}: {len(values)} rows now, {self.counts[bucket]} when counted; did the files change?")
        return values

    def value_at(self, rank: int, hashes: np.ndarray) -> int | None:
        """The hash at this 0-based rank (None: fewer rows). `hashes` must hold every hash of `bucket_at(rank)`."""
        bucket = self.bucket_at(rank)
        if bucket is None:
            return None
        before = int(self.cum[bucket - 1]) if bucket else 0
        return int(self._bucket_values(bucket, hashes)[rank - before])

    def count_below(self, value: int | None, hashes: np.ndarray) -> int:
        """Rows whose hash is < value (None: all rows). `hashes` must hold every hash of value's bucket."""
        if value is None:
            return self.total
        if value == 0:  # "no hold-out": nothing is below it, and bucket 0 need not have been collected
            return 0
        bucket = value >> (64 - BUCKET_BITS)
        before = int(self.cum[bucket - 1]) if bucket else 0
        return before + int((self._bucket_values(bucket, hashes) < np.uint64(value)).sum())


@dataclass(frozen=True)
class HashSplit:
    """Where a row goes, by its hash h: h < valid_below -> validation; valid_below <= h < train_below -> train.

    valid_below is 0 when nothing is held out (--validation_data given); train_below is None without
    --max_train_samples (or when it asks for at least every row). Picklable: Ray Data tasks apply it.
    """

    seed: int
    valid_below: int
    train_below: int | None = None

    def validation_mask(self, hashes: np.ndarray) -> np.ndarray:
        return hashes < np.uint64(self.valid_below)

    def train_mask(self, hashes: np.ndarray) -> np.ndarray:
        mask = hashes >= np.uint64(self.valid_below)
        if self.train_below is not None:
            mask &= hashes < np.uint64(self.train_below)
        return mask


def split_ranks(hold_out: int, max_train: int | None, tokenizer_rows: int = 0) -> dict[str, int]:
    """The 0-based hash ranks whose values bound the split (and a preset's tokenizer sample)."""
    ranks = {"validation": hold_out}
    if max_train is not None:
        ranks["train"] = hold_out + max_train
    if tokenizer_rows:
        ranks["tokenizer"] = hold_out + min(tokenizer_rows, max_train if max_train is not None else tokenizer_rows)
    return ranks


def check_hold_out(hold_out: int, total: int) -> None:
    """Refuse a hold-out that leaves no training rows (and a corpus with no valid row at all)."""
    if total == 0:
        raise DataError("no valid training rows: the files are empty or every row was malformed (see the quarantine file)")
    if hold_out >= total:
        raise UsageError(f"cannot hold out {hold_out} rows from {total}; lower --validation_size")


def plan_hash_split(order: HashOrder, hashes: np.ndarray, seed: int, hold_out: int, max_train: int | None) -> tuple[HashSplit, int]:
    """(the split, its exact train row count) from the hash order; `hashes` must cover the boundary buckets.

    The hold-out is the `hold_out` lowest hashes (fewer only if guids repeat across the boundary), the train
    sample the next `max_train`.
    """
    check_hold_out(hold_out, order.total)
    valid_below = order.value_at(hold_out, hashes) if hold_out else 0
    train_below = order.value_at(hold_out + max_train, hashes) if max_train is not None else None
    split = HashSplit(seed, int(valid_below or 0), train_below)
    return split, order.count_below(train_below, hashes) - order.count_below(split.valid_below, hashes)


def hash_split_frame(df: pd.DataFrame, seed: int, hold_out: int, max_train: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The in-memory twin of the streaming split: (train, held-out) rows of df, each in df's order."""
    hashes = split_hashes(df["guid"], seed)
    split, _ = plan_hash_split(HashOrder.from_hashes(hashes), hashes, seed, hold_out, max_train)
    return (
        df[split.train_mask(hashes)].reset_index(drop=True),
        df[split.validation_mask(hashes)].reset_index(drop=True),
    )


def sample_rows(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most n rows of df, a seeded sample (df itself when it has no more than n)."""
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def small_splits(data: DataArgs, train: pd.DataFrame | None, valid: pd.DataFrame, test: pd.DataFrame | None, bad: list[BadRow]) -> Splits:
    """Apply --max_eval_samples (seeded) to validation and test; shared by the in-memory and streaming paths."""
    valid = sample_rows(valid, data.max_eval_samples, data.seed)
    test = None if test is None else sample_rows(test, data.max_eval_samples, data.seed)
    return Splits(train=train, validation=valid, test=test, bad_rows=bad)
