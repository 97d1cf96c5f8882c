"""One reader for every path: a file parsed and validated (`read_file_rows`), or a whole spec in memory (`read_rows`).

Why one: `read_file_rows` is what every YNAT file goes through, in memory here (evaluation, --validation_data,
--test_data) or inside Ray Data read tasks (`ynat_ray.data.stream`: training files, predict-batch), so parsing,
validation, row numbers and the id/guid rule cannot drift apart. Rows keep the file's own 1-based numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ynat_ray.config import RowArgs
from ynat_ray.data.files import expand_paths, read_records
from ynat_ray.data.validation import COLUMNS, BadRow, canonical_ids, validate_frame


def read_file_rows(path: str, rows: RowArgs, *, require_label: bool = True) -> tuple[pd.DataFrame, int, list[BadRow]]:
    """Read and validate ONE file: (canonical rows plus the file's own 1-based `row`, records read, bad rows).

    `rows` says which columns hold the text and label and what a malformed row does (stop, or skip it).
    """
    raw = canonical_ids(read_records(path), rows)
    clean, bad = validate_frame(
        raw,
        path,
        text_column=rows.text_column,
        label_column=rows.label_column,
        require_label=require_label,
        on_bad_rows=rows.on_bad_rows,
    )
    skipped = {b.row for b in bad}
    clean["row"] = np.array([r for r in range(1, len(raw) + 1) if r not in skipped], dtype=np.int64)
    return clean, len(raw), bad


def read_rows(spec: str, rows: RowArgs, *, require_label: bool = True, bad_rows: list[BadRow] | None = None) -> pd.DataFrame:
    """Read and validate every file that `spec` names into memory; skipped rows are appended to `bad_rows`.

    For small inputs (evaluation, validation/test files). Training files stream through `ynat_ray.data.stream`.
    """
    frames = []
    for path in expand_paths(spec):
        clean, _, bad = read_file_rows(path, rows, require_label=require_label)
        frames.append(clean[list(COLUMNS)])
        if bad_rows is not None:
            bad_rows.extend(bad)
    return pd.concat(frames, ignore_index=True)
