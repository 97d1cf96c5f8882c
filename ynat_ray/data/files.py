"""Raw records from files: which files a spec names, and each file's records before any validation.

Why a reader of its own: whatever the bytes (bad UTF-8, a NUL byte, broken JSON or CSV, a corrupt Parquet
file, JSON nested too deeply), a file gives a DataFrame or a `DataValidationError` naming the file and the
line, never a reader's own exception. Validation then decides what each record means.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import warnings
from typing import Any

import pandas as pd

from ynat_ray.data.validation import DataValidationError

SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


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
