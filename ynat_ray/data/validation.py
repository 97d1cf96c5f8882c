"""Row validation: one rule for what a row, a text and a label must be, and errors that name the file, row and field.

Why one validator: training, evaluation and batch prediction all accept the same files, and a bad row must
be reported the same way everywhere: the file, the 1-based row number and the field. With
`on_bad_rows="skip"` the row goes to a quarantine file instead and is counted, never silently dropped.

Canonical columns after validation: guid, title, label (int id, -1 when the input has no label), url, date.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ynat_ray.config import RowArgs
from ynat_ray.errors import YnatError
from ynat_ray.labels import LABEL2ID, LABELS, NUM_LABELS, label_to_id

COLUMNS = ("guid", "title", "label", "url", "date")
NO_LABEL = -1


class DataError(YnatError):
    """The input rows cannot give what was asked (no valid training row, none left after the hold-out)."""


class DataValidationError(DataError):
    """A malformed row: says which file, which row (1-based) and which field."""

    def __init__(self, source: str, row: int, field_name: str, reason: str):
        self.source, self.row, self.field, self.reason = source, row, field_name, reason
        super().__init__(f"{source}: row {row}: field '{field_name}': {reason}")

    def __reduce__(self) -> tuple[Any, tuple[str, int, str, str]]:
        # Picklable with its fields, so a Ray task (batch prediction's read step) can raise it to the driver.
        return type(self), (self.source, self.row, self.field, self.reason)


@dataclass
class BadRow:
    """A skipped row, as the quarantine file records it: where it was, what was wrong, and the record itself."""

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


_ASCII_INT = re.compile(r"-?[0-9]+")


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


def canonical_ids(raw: pd.DataFrame, rows: RowArgs) -> pd.DataFrame:
    """The one `id` rule: an `id` column stands in for `guid` when the file has no `guid` (KLUE exports and
    many CSVs call it `id`), unless `id` is the text or label column."""
    if "guid" not in raw.columns and "id" in raw.columns and "id" not in (rows.text_column, rows.label_column):
        return raw.rename(columns={"id": "guid"})
    return raw
