"""Reading and validating YNAT rows from the hub, the embedded subsample, or local/remote files.

Why one validator: training, evaluation and batch prediction all accept the same files, and a bad row
must be reported the same way everywhere: the file, the 1-based row number and the field. With
`on_bad_rows="skip"` the row goes to a quarantine file instead and is counted, never silently dropped.

Canonical columns after validation: guid, title, label (int id, -1 when the input has no label), url, date.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable
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
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame | None
    bad_rows: list[BadRow] = field(default_factory=list)


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


def read_rows(spec: str, cfg: YnatConfig, *, require_label: bool = True, bad_rows: list[BadRow] | None = None) -> pd.DataFrame:
    """Read and validate every file that `spec` names; skipped rows are appended to `bad_rows`."""
    frames = []
    for path in expand_paths(spec):
        clean, bad = validate_frame(
            read_records(path),
            path,
            text_column=cfg.text_column,
            label_column=cfg.label_column,
            require_label=require_label,
            on_bad_rows=cfg.on_bad_rows,
        )
        frames.append(clean)
        if bad_rows is not None:
            bad_rows.extend(bad)
    return pd.concat(frames, ignore_index=True)


def write_quarantine(bad_rows: Iterable[BadRow], path: str) -> int:
    """Write skipped rows as JSON lines (source, row, field, reason, record); return how many."""
    rows = list(bad_rows)
    if rows:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Korean stays readable (ensure_ascii=False); a lone surrogate (a row quarantined for exactly that) is
        # written as its JSON escape (\\ud800) instead of failing the write.
        with open(path, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.writelines(r.to_json() + "\n" for r in rows)
    return len(rows)


# ---------------------------------------------------------------------------------------------
# Sources and splits


def embedded_split(split: str) -> pd.DataFrame:
    """The real YNAT subsample shipped in the package (CC BY-SA 4.0, see its README)."""
    path = resources.files("ynat_ray") / "assets" / "ynat_default" / f"{split}.parquet"
    with resources.as_file(path) as local:
        df, _ = validate_frame(pd.read_parquet(local), f"embedded/{split}.parquet")
    return df


def hub_split(split: str, cfg: YnatConfig) -> pd.DataFrame:
    """datasets.load_dataset('klue', 'ynat'): the real thing, for machines that reach the hub."""
    try:
        from datasets import load_dataset

        ds = load_dataset("klue", "ynat", split=split)
    except Exception as err:  # noqa: BLE001 - any hub/network failure gets the same advice
        raise HubUnavailableError(
            f"could not load klue/ynat ({split}) from the Hugging Face hub: {err}. "
            "Offline? Use --data embedded (the YNAT subsample shipped with ynat-ray) or --data PATH "
            "to local YNAT files (json, jsonl, csv, parquet)."
        ) from err
    df, _ = validate_frame(ds.to_pandas(), f"hub:klue/ynat/{split}", on_bad_rows=cfg.on_bad_rows)
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


def load_splits(cfg: YnatConfig) -> Splits:
    """Train/validation/test rows for a run, reproducible from cfg.seed.

    - embedded: the shipped 10k/1k/1k subsample.
    - hub: klue/ynat train; its validation split is cut into validation and test like the notebook.
    - files: --data for training; --validation_data, or a seeded hold-out of --validation_size rows.
    """
    bad: list[BadRow] = []
    if cfg.data == EMBEDDED:
        train, valid, test = embedded_split("train"), embedded_split("validation"), embedded_split("test")
    elif cfg.data == HUB:
        train = hub_split("train", cfg)
        rest, test = _hold_out(hub_split("validation", cfg), cfg.validation_size, cfg.seed)
        valid = _sample(rest, cfg.validation_size, cfg.seed)
    else:
        train = read_rows(cfg.data, cfg, bad_rows=bad)
        test = read_rows(cfg.test_data, cfg, bad_rows=bad) if cfg.test_data else None
        if cfg.validation_data:
            valid = read_rows(cfg.validation_data, cfg, bad_rows=bad)
        else:
            train, valid = _hold_out(train, cfg.validation_size, cfg.seed)
    if cfg.test_data and cfg.data in (EMBEDDED, HUB):
        test = read_rows(cfg.test_data, cfg, bad_rows=bad)
    train = _sample(train, cfg.max_train_samples, cfg.seed)
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
        _, test = _hold_out(hub_split("validation", cfg), cfg.validation_size, cfg.seed)
        return "klue/ynat test (notebook split)", _sample(test, cfg.max_eval_samples, cfg.seed)
    return cfg.data, _sample(read_rows(cfg.data, cfg, bad_rows=bad_rows), cfg.max_eval_samples, cfg.seed)
