"""Reading and validating YNAT rows from the hub, the embedded subsample, or local/remote files.

Why one validator: training, evaluation and batch prediction all accept the same files, and a bad row
must be reported the same way everywhere: the file, the 1-based row number and the field. With
`on_bad_rows="skip"` the row goes to a quarantine file instead and is counted, never silently dropped.

Canonical columns after validation: guid, title, label (int id, -1 when the input has no label), url, date.

One reader for every path: `read_file_rows` parses and validates one file (an `id` column stands in for a
missing `guid`; rows keep the file's own 1-based numbers). `read_rows` concatenates it in memory (evaluation,
--validation_data, --test_data); `ynat_ray.rows` runs it inside Ray Data read tasks (training files,
predict-batch), so the driver never holds a training corpus.

Splitting files without holding them: every row gets a 64-bit hash of (seed, guid) (`split_hashes`). The
hold-out is the --validation_size rows with the smallest hashes, --max_train_samples the next ones. The
thresholds come from a histogram over the hashes' top 16 bits plus the exact hashes of the few rows in the
boundary buckets (`HashOrder`), so the same rows are chosen whether the rows sit in a DataFrame or stream
through Ray Data, on every run with the same seed. Rows that share a guid always land on the same side.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from ynat_ray.config import EMBEDDED, HUB, YnatConfig
from ynat_ray.labels import LABEL2ID, LABELS, NUM_LABELS, label_to_id

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
COLUMNS = ("guid", "title", "label", "url", "date")
NO_LABEL = -1


class DataValidationError(ValueError):
    """A malformed row: says which file, which row (1-based) and which field."""

    def __init__(self, source: str, row: int, field_name: str, reason: str):
        self.source, self.row, self.field, self.reason = source, row, field_name, reason
        super().__init__(f"{source}: row {row}: field '{field_name}': {reason}")

    def __reduce__(self) -> tuple[Any, tuple[str, int, str, str]]:
        # Picklable with its fields, so a Ray task (batch prediction's read step) can raise it to the driver.
        return type(self), (self.source, self.row, self.field, self.reason)


class HubUnavailableError(RuntimeError):
    """The Hugging Face hub could not be reached; the message names the offline alternatives."""


@dataclass
class BadRow:
    source: str
    row: int
    field: str
    reason: str
    record: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {"source": self.source, "row": self.row, "field": self.field, "reason": self.reason, "record": self.record},
            ensure_ascii=False,
            default=str,
        )


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
    train_stream: Any = None  # ray.data.Dataset of title/label rows, read by Ray Data tasks (files only)
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


# ---------------------------------------------------------------------------------------------
# Files


def expand_paths(spec: str) -> list[str]:
    """A file, a directory (every supported file in it) or a glob, local or URI -> sorted file list."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(spec)
    if any(ch in path for ch in "*?["):
        found = fs.glob(path)
    elif fs.isdir(path):
        found = [p for p in fs.find(path) if p.endswith(SUFFIXES)]
    elif fs.exists(path):
        found = [path]
    else:
        raise FileNotFoundError(f"no such file or directory: {spec}")
    found = sorted(p for p in found if p.endswith(SUFFIXES))
    if not found:
        raise FileNotFoundError(f"{spec}: no {'/'.join(SUFFIXES)} files there")
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in found]


def read_records(path: str) -> pd.DataFrame:
    """Read one file as raw records (no validation). JSON may be a KLUE-style array or JSON lines.

    Whatever the bytes, this returns a DataFrame (one row per record, nothing dropped) or raises
    DataValidationError naming the file; a reader's own exception (UnicodeDecodeError, pandas'
    ParserError, pyarrow's ArrowInvalid, RecursionError from deeply nested JSON) never escapes.
    What `row` means in an error raised here, before any record exists:
    - a problem at a known place in a text file (bad UTF-8, a NUL byte, JSON or CSV syntax): the
      1-based line of the file (for JSON lines, blank lines count; for CSV, the header is line 1);
    - a JSON array element that is not an object: its 1-based position in the array (= the record row);
    - a problem with the file as a whole (unreadable Parquet, CSV error without a line): row 0.
    The field is then a pseudo-field: '<encoding>', '<json>', '<row>', '<csv>' or '<parquet>'.
    An empty file (0 bytes, or only whitespace for the text formats) is 0 records, not an error.
    JSON records keep their exact Python values (object columns), so a lone surrogate from a "\\ud800"
    escape reaches validation as a bad row instead of failing pandas' Arrow-backed string inference.
    """
    import fsspec

    with fsspec.open(path, "rb") as fh:
        raw = fh.read()
    if not raw:
        return pd.DataFrame()
    if path.endswith(".parquet"):
        return _read_parquet(path, raw)
    text = _decode_utf8(path, raw)
    if path.endswith(".csv"):
        return _read_csv(path, text)
    return _read_json(path, text)


def _decode_utf8(path: str, raw: bytes) -> str:
    """Strict UTF-8 (an optional BOM is dropped); bad bytes and NUL bytes name the byte offset and line."""
    start = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start
        line = raw.count(b"\n", 0, at) + 1
        reason = f"not valid UTF-8 at byte {at} ({err.reason}); save the file as UTF-8"
        raise DataValidationError(path, line, "<encoding>", reason) from None
    nul = text.find("\x00")
    if nul >= 0:
        # A text file with NUL bytes is binary or UTF-16; pandas' CSV tokenizer would take it apart silently.
        at = start + len(text[:nul].encode("utf-8"))
        line = text.count("\n", 0, nul) + 1
        raise DataValidationError(path, line, "<encoding>", f"NUL byte at byte {at}: not a UTF-8 text file (UTF-16?)")
    return text


def _read_parquet(path: str, raw: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(raw))
    except Exception as err:  # a corrupt file can fail anywhere in pyarrow's decoder; all of it means "unreadable"
        raise DataValidationError(path, 0, "<parquet>", f"not a readable Parquet file: {type(err).__name__}: {err}") from err


def _read_csv(path: str, text: str) -> pd.DataFrame:
    """Every cell as text, empty cells as "" (validation decides what a field means); a row wider than the header is an error."""
    if not text.strip():
        return pd.DataFrame()
    try:
        with warnings.catch_warnings():
            # index_col=False: without it pandas silently takes the first column as the index when the first data
            # row has one field more than the header (the title then lands in the index, the label in 'title').
            # With it pandas warns "loss of data" and drops the extra fields; make that warning an error instead.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except pd.errors.ParserWarning:
        line = _first_wide_csv_line(text)
        raise DataValidationError(path, line, "<csv>", "a row has more fields than the header") from None
    except (pd.errors.ParserError, ValueError) as err:
        message = " ".join(str(err).split()).removeprefix("Error tokenizing data. C error: ")
        raise DataValidationError(path, _csv_error_line(message), "<csv>", f"cannot parse CSV: {message}") from None


def _csv_error_line(message: str) -> int:
    """The 1-based file line in a pandas tokenizer message ('... in line 4, ...' is 1-based, '... at row 2' 0-based)."""
    found = re.search(r"\bline (\d+)", message)
    if found:
        return int(found.group(1))
    found = re.search(r"\brow (\d+)", message)
    return int(found.group(1)) + 1 if found else 0


def _first_wide_csv_line(text: str) -> int:
    """The line where the first record wider than the header ends (Python's csv module), or 0."""
    reader = csv.reader(io.StringIO(text))
    try:
        rows = (row for row in reader if row)
        width = len(next(rows))
        return next((reader.line_num for row in rows if len(row) > width), 0)
    except (csv.Error, StopIteration):
        return 0


def _load_json(path: str, text: str, first_line: int, what: str) -> Any:
    """json.loads, with every failure as a DataValidationError at the file's line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataValidationError(path, first_line + err.lineno - 1, "<json>", f"{what}: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise DataValidationError(path, first_line, "<json>", f"{what}: nested too deeply") from None
    except ValueError as err:  # an integer literal longer than Python's int_max_str_digits (4300); drop its sys.* advice
        raise DataValidationError(path, first_line, "<json>", f"{what}: {str(err).split(';')[0]}") from None


def _read_json(path: str, text: str) -> pd.DataFrame:
    if path.endswith(".json") and text.lstrip().startswith("["):
        records = _load_json(path, text, 1, "invalid JSON")
        bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataValidationError(path, bad + 1, "<row>", f"expected a JSON object, got {type(records[bad]).__name__}")
    else:
        # Lines end at "\n" only: str.splitlines() would also split at U+2028, U+0085 and friends, which
        # json.dumps(..., ensure_ascii=False) writes unescaped inside strings.
        records = []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            record = _load_json(path, line, lineno, "invalid JSON line")
            if not isinstance(record, dict):
                raise DataValidationError(path, lineno, "<row>", f"expected a JSON object, got {type(record).__name__}")
            records.append(record)
    columns = pd.Index(list(dict.fromkeys(key for record in records for key in record)), dtype=object)
    return pd.DataFrame(records, columns=columns, dtype=object)


# ---------------------------------------------------------------------------------------------
# Validation


# Characters that show nothing: whitespace (Z*), controls (Cc) and format characters (Cf: zero-width space,
# zero-width joiner, BOM, ...). BERT-style tokenizers drop them, so a text made only of them is blank.
_INVISIBLE = frozenset(("Cc", "Cf", "Zs", "Zl", "Zp"))


def text_problem(text: str) -> str | None:
    """Why a text cannot be classified, or None. One rule for rows, Serve requests and the CLI.

    Empty or blank text is refused everywhere (a model "prediction" for it is noise); blank includes
    text made only of invisible characters such as "\\u200b" or "\\ufeff", which the tokenizer drops.
    A lone surrogate (JSON's "\\ud800", or bytes decoded with surrogateescape) is not Unicode text, and
    the tokenizer would fail on it mid-batch.
    """
    if not text.strip():
        return "empty"
    problem = _unicode_problem(text)
    if problem:
        return problem
    if all(unicodedata.category(ch) in _INVISIBLE for ch in text):  # stops at the first visible character
        return "empty"
    return None


def _unicode_problem(text: str) -> str | None:
    """A lone surrogate makes a str unencodable (UTF-8, Arrow, JSON files): say where, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode: lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
    return None


def _missing(value: Any) -> bool:
    """None, NaN (Python or NumPy float), pd.NA or NaT: what pandas uses for an absent cell, whatever the dtype."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    return False


def _printable(text: str) -> str:
    """`text` with lone surrogates as \\udxxx escapes, so an error message that quotes it can be printed and logged."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _label_id(value: Any) -> int | str:
    """The label id of a present label value, or the reason it is not one.

    label_to_id accepts what labels.py documents; this keeps its reasons uniform ("wrong type: ...",
    "unknown label ...") for values it was not written for: lists/arrays (a 1-element NumPy array would
    otherwise pass as its element), non-ASCII digits ("²" gives int()'s own message, "٣" would be 3) and
    digit strings past Python's int() length limit.
    """
    if not pd.api.types.is_scalar(value):
        return f"wrong type: label must be an int id or a topic name, got {type(value).__name__}"
    if isinstance(value, str):
        name = value.strip()
        if name not in LABEL2ID and not _ASCII_INT.fullmatch(name):
            return f"unknown label {value!r}; expected one of {', '.join(LABELS)} or 0-{NUM_LABELS - 1}"
    try:
        return label_to_id(value)
    except TypeError as err:
        return f"wrong type: {err}"
    except ValueError as err:
        reason = str(err)
        return reason if reason.startswith("unknown label") else f"unknown label {value!r}; ids run 0-{NUM_LABELS - 1}"


_ASCII_INT = re.compile(r"-?[0-9]+")


def _check_row(rec: dict[str, Any], text_column: str, label_column: str, require_label: bool) -> tuple[str, str] | dict[str, Any]:
    """Return the canonical row, or (field, reason) when the row is malformed.

    Fields are checked in a fixed order (text, label, then guid/url/date), so the reported field is
    the first bad one. guid/url/date are kept as text; one holding a lone surrogate is a bad row, since
    neither pandas' Arrow strings nor the output files can hold it.
    """
    text = rec.get(text_column)
    if _missing(text):
        return text_column, "missing"
    if not isinstance(text, str):
        return text_column, f"wrong type: expected a string, got {type(text).__name__}"
    problem = text_problem(text)
    if problem:
        return text_column, problem
    label = rec.get(label_column)
    if _missing(label) or (isinstance(label, str) and not label.strip()):
        if require_label:
            return label_column, "missing"
        label_id = NO_LABEL
    else:
        found = _label_id(label)
        if isinstance(found, str):
            return label_column, found
        label_id = found
    out: dict[str, Any] = {"guid": None, "title": text, "label": label_id, "url": None, "date": None}
    for key in ("guid", "url", "date"):
        value = rec.get(key)
        if _missing(value) or (isinstance(value, str) and value == ""):
            continue
        value = value if isinstance(value, str) else str(value)
        problem = _unicode_problem(value)
        if problem:
            return key, problem
        out[key] = value
    return out


def validate_frame(
    df: pd.DataFrame,
    source: str,
    *,
    first_row: int = 1,
    text_column: str = "title",
    label_column: str = "label",
    require_label: bool = True,
    on_bad_rows: str = "error",
) -> tuple[pd.DataFrame, list[BadRow]]:
    """Validate raw records; return canonical rows and the bad ones (raises on the first when 'error').

    `first_row` is the 1-based row number of df's first record inside `source`, so a caller that
    validates a file in batches still reports the file's own row numbers.
    """
    if text_column not in df.columns and len(df):
        columns = ", ".join(_printable(str(c)) for c in df.columns)
        raise DataValidationError(source, first_row, text_column, f"column not found (columns: {columns})")
    good: list[dict[str, Any]] = []
    bad: list[BadRow] = []
    for offset, rec in enumerate(df.to_dict("records")):
        result = _check_row(rec, text_column, label_column, require_label)
        row = first_row + offset
        if isinstance(result, tuple):
            if on_bad_rows == "error":
                raise DataValidationError(source, row, *result)
            bad.append(BadRow(source, row, result[0], result[1], rec))
            continue
        if result["guid"] is None:
            result["guid"] = f"{os.path.basename(source)}:{row}"
        good.append(result)
    out = pd.DataFrame.from_records(good, columns=list(COLUMNS))
    out["label"] = out["label"].astype("int64")
    return out, bad


def canonical_ids(raw: pd.DataFrame, cfg: YnatConfig) -> pd.DataFrame:
    """The one `id` rule: an `id` column stands in for `guid` when the file has no `guid` (KLUE exports and
    many CSVs call it `id`), unless `id` is the text or label column."""
    if "guid" not in raw.columns and "id" in raw.columns and "id" not in (cfg.text_column, cfg.label_column):
        return raw.rename(columns={"id": "guid"})
    return raw


def read_file_rows(path: str, cfg: YnatConfig, *, require_label: bool = True) -> tuple[pd.DataFrame, int, list[BadRow]]:
    """Read and validate ONE file: (canonical rows plus the file's own 1-based `row`, records read, bad rows).

    Everything that reads YNAT files goes through here, in memory (`read_rows`) or in a Ray Data read task
    (`ynat_ray.rows.read_file`), so parsing, validation, row numbers and the id/guid rule cannot drift apart.
    """
    raw = canonical_ids(read_records(path), cfg)
    clean, bad = validate_frame(
        raw,
        path,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        require_label=require_label,
        on_bad_rows=cfg.on_bad_rows,
    )
    skipped = {b.row for b in bad}
    clean["row"] = np.array([r for r in range(1, len(raw) + 1) if r not in skipped], dtype=np.int64)
    return clean, len(raw), bad


def read_rows(spec: str, cfg: YnatConfig, *, require_label: bool = True, bad_rows: list[BadRow] | None = None) -> pd.DataFrame:
    """Read and validate every file that `spec` names into memory; skipped rows are appended to `bad_rows`.

    For small inputs (evaluation, validation/test files). Training files stream through `ynat_ray.rows`.
    """
    frames = []
    for path in expand_paths(spec):
        clean, _, bad = read_file_rows(path, cfg, require_label=require_label)
        frames.append(clean[list(COLUMNS)])
        if bad_rows is not None:
            bad_rows.extend(bad)
    return pd.concat(frames, ignore_index=True)


def write_quarantine(bad_rows: Iterable[BadRow], path: str) -> int:
    """Write skipped rows as JSON lines (source, row, field, reason, record) to a local path or any fsspec URI
    (s3://, gs://, memory://, file://); return how many. Nothing is written when there are none.

    The one quarantine writer: training, evaluation and predict-batch all call it.
    """
    rows = list(bad_rows)
    if rows:
        import fsspec

        fs, target = fsspec.core.url_to_fs(path)
        parent = fs._parent(target)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        # Korean stays readable (ensure_ascii=False); a lone surrogate (a row quarantined for exactly that) is
        # written as its JSON escape (\\ud800) instead of failing the write.
        data = "".join(r.to_json() + "\n" for r in rows).encode("utf-8", "backslashreplace")
        with fs.open(target, "wb") as fh:
            fh.write(data)
    return len(rows)


# ---------------------------------------------------------------------------------------------
# Deterministic hash split (in memory and streaming alike)

BUCKET_BITS = 16
BUCKETS = 1 << BUCKET_BITS
_BUCKET_SHIFT = np.uint64(64 - BUCKET_BITS)
# A streamed preset run trains its WordPiece tokenizer on at most this many train titles (the lowest hashes):
# enough for a stable 8k vocabulary, bounded so the driver never holds the corpus.
TOKENIZER_ROWS = 100_000


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
        raise ValueError("no valid training rows: the files are empty or every row was malformed (see the quarantine file)")
    if hold_out >= total:
        raise ValueError(f"cannot hold out {hold_out} rows from {total}; lower --validation_size")


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


# ---------------------------------------------------------------------------------------------
# Sources and splits


def embedded_split(split: str) -> pd.DataFrame:
    """The real YNAT subsample shipped in the package (CC BY-SA 4.0, see its README)."""
    path = resources.files("ynat_ray") / "assets" / "ynat_default" / f"{split}.parquet"
    with resources.as_file(path) as local:
        df, _ = validate_frame(pd.read_parquet(local), f"embedded/{split}.parquet")
    return df


def hub_split(split: str, cfg: YnatConfig, bad_rows: list[BadRow] | None = None) -> pd.DataFrame:
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
    df, bad = validate_frame(ds.to_pandas(), f"hub:klue/ynat/{split}", on_bad_rows=cfg.on_bad_rows)
    if bad_rows is not None:
        bad_rows.extend(bad)
    return df


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or n >= len(df):
        return df
    return df.sample(n=n, random_state=seed).reset_index(drop=True)


def _hold_out(df: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split n seeded rows off df: (rest, held_out)."""
    if n >= len(df):
        raise ValueError(f"cannot hold out {n} rows from {len(df)}; lower --validation_size")
    held = df.sample(n=n, random_state=seed)
    return df.drop(held.index).reset_index(drop=True), held.reset_index(drop=True)


def load_splits(cfg: YnatConfig, *, stream: bool = False, tokenizer_rows: int = 0, task_cpus: float = 1.0) -> Splits:
    """Train/validation/test rows for a run, reproducible from cfg.seed.

    - embedded: the shipped 10k/1k/1k subsample.
    - hub: klue/ynat train; its validation split is cut into validation and test like the notebook.
    - files: --data for training; --validation_data, or a hold-out of the --validation_size rows with the
      lowest (seed, guid) hashes; --max_train_samples keeps the next lowest. With `stream=True` (training)
      the train split stays a lazy Ray Dataset read by Ray Data tasks (`ynat_ray.rows`), with the same rows
      as the in-memory split; `tokenizer_rows` bounds the titles collected for a preset's tokenizer and
      `task_cpus` is what each of its read tasks asks for. Needs a Ray connection.
    """
    if stream and cfg.data not in (EMBEDDED, HUB):
        from ynat_ray.rows import stream_file_splits

        return stream_file_splits(cfg, tokenizer_rows=tokenizer_rows, task_cpus=task_cpus)
    bad: list[BadRow] = []
    if cfg.data == EMBEDDED:
        train, valid, test = embedded_split("train"), embedded_split("validation"), embedded_split("test")
        train = _sample(train, cfg.max_train_samples, cfg.seed)
    elif cfg.data == HUB:
        train = _sample(hub_split("train", cfg, bad), cfg.max_train_samples, cfg.seed)
        rest, test = _hold_out(hub_split("validation", cfg, bad), cfg.validation_size, cfg.seed)
        valid = _sample(rest, cfg.validation_size, cfg.seed)
    else:
        rows = read_rows(cfg.data, cfg, bad_rows=bad)
        test = read_rows(cfg.test_data, cfg, bad_rows=bad) if cfg.test_data else None
        if cfg.validation_data:
            valid = read_rows(cfg.validation_data, cfg, bad_rows=bad)
            train, _ = hash_split_frame(rows, cfg.seed, 0, cfg.max_train_samples)
        else:
            train, valid = hash_split_frame(rows, cfg.seed, cfg.validation_size, cfg.max_train_samples)
    if cfg.test_data and cfg.data in (EMBEDDED, HUB):
        test = read_rows(cfg.test_data, cfg, bad_rows=bad)
    return small_splits(cfg, train, valid, test, bad)


def small_splits(cfg: YnatConfig, train: pd.DataFrame | None, valid: pd.DataFrame, test: pd.DataFrame | None, bad: list[BadRow]) -> Splits:
    """Apply --max_eval_samples (seeded) to validation and test; shared by the in-memory and streaming paths."""
    valid = _sample(valid, cfg.max_eval_samples, cfg.seed)
    test = None if test is None else _sample(test, cfg.max_eval_samples, cfg.seed)
    return Splits(train=train, validation=valid, test=test, bad_rows=bad)


def evaluation_rows(cfg: YnatConfig, bad_rows: list[BadRow] | None = None) -> tuple[str, pd.DataFrame]:
    """Rows `ynat-ray evaluate` scores: --test_data, else the test split of embedded/hub, else all of --data."""
    if cfg.test_data:
        return cfg.test_data, read_rows(cfg.test_data, cfg, bad_rows=bad_rows)
    if cfg.data == EMBEDDED:
        return "embedded test", _sample(embedded_split("test"), cfg.max_eval_samples, cfg.seed)
    if cfg.data == HUB:
        _, test = _hold_out(hub_split("validation", cfg, bad_rows), cfg.validation_size, cfg.seed)
        return "klue/ynat test (notebook split)", _sample(test, cfg.max_eval_samples, cfg.seed)
    return cfg.data, _sample(read_rows(cfg.data, cfg, bad_rows=bad_rows), cfg.max_eval_samples, cfg.seed)
