"""The one quarantine writer: rows skipped under `--on_bad_rows skip` go to a JSON-lines file, never nowhere.

Training, evaluation and predict-batch all call `write_quarantine`, so a quarantine file has one shape
wherever it came from: source, 1-based row, field, reason and the record as read.
"""

from __future__ import annotations

from collections.abc import Iterable

from ynat_ray.data.validation import BadRow


def write_quarantine(bad_rows: Iterable[BadRow], path: str) -> int:
    """Write skipped rows as JSON lines (source, row, field, reason, record) to a local path or any fsspec URI
    (s3://, gs://, memory://, file://); return how many. Nothing is written when there are none.
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
