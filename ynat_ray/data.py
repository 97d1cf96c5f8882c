"""Reading and validating YNAT rows from the hub, the embedded subsample, or local/remote files.

Why one validator: training, evaluation and batch prediction all accept the same files, and a bad row
must be reported the same way everywhere: the file, the 1-based row number and the field. With
`on_bad_rows="skip"` the row goes to a quarantine file instead and is counted, never silently dropped.

Canonical columns after validation: guid, title, label (int id, -1 when the input has no label), url, date.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pandas as pd

from ynat_ray.config import EMBEDDED, HUB, YnatConfig
from ynat_ray.labels import label_to_id

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
    """Read one file as raw records (no validation). JSON may be a KLUE-style array or JSON lines."""
    import fsspec

    with fsspec.open(path, "rb") as fh:
        raw = fh.read()
    if path.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(raw))
    if path.endswith(".csv"):
        # Everything as text, empty cells as "": validation decides what a field means.
        return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    text = raw.decode("utf-8-sig")
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataValidationError(path, err.lineno, "<json>", f"invalid JSON: {err.msg}") from None
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataValidationError(path, lineno, "<json>", f"invalid JSON line: {err.msg}") from None
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataValidationError(path, bad + 1, "<row>", f"expected a JSON object, got {type(records[bad]).__name__}")
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------------------------------------
# Validation


def text_problem(text: str) -> str | None:
    """Why a text cannot be classified, or None. One rule for rows, Serve requests and the CLI.

    Empty or blank text is refused everywhere (a model "prediction" for it is noise). A lone surrogate
    (JSON's "\\ud800", or bytes decoded with surrogateescape) is not Unicode text, and the tokenizer
    would fail on it mid-batch.
    """
    if not text.strip():
        return "empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return f"not valid Unicode: lone surrogate U+{ord(text[err.start]):04X} at character {err.start}"
    return None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _check_row(rec: dict[str, Any], text_column: str, label_column: str, require_label: bool) -> tuple[str, str] | dict[str, Any]:
    """Return the canonical row, or (field, reason) when the row is malformed."""
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
        try:
            label_id = label_to_id(label)
        except TypeError as err:
            return label_column, f"wrong type: {err}"
        except ValueError as err:
            return label_column, str(err)
    out = {"guid": rec.get("guid"), "title": text, "label": label_id, "url": rec.get("url"), "date": rec.get("date")}
    for key in ("guid", "url", "date"):
        if _missing(out[key]) or out[key] == "":
            out[key] = None
        else:
            out[key] = str(out[key])
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
        raise DataValidationError(source, first_row, text_column, f"column not found (columns: {', '.join(map(str, df.columns))})")
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
        with open(path, "w", encoding="utf-8") as fh:
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
