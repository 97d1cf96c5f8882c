"""Reading, validating and splitting YNAT rows from the hub, the embedded subsample, or local/remote files.

One module per job, imported by path (this package re-exports nothing, so each name has one home):

- `files`: which files a spec names (`expand_paths`) and their raw records (`read_records`: JSON, JSON lines,
  CSV, Parquet; every parse failure becomes a `DataValidationError` naming file and line).
- `validation`: the row rules (`validate_frame`, `text_problem`, the id/guid rule `canonical_ids`) and the error
  types that name file, row and field. Canonical columns after validation: guid, title, label (int id, -1 when
  the input has no label), url, date.
- `quarantine`: `write_quarantine`, the one writer of skipped rows (training, evaluation, predict-batch).
- `splits`: the deterministic (seed, guid) hash split shared by the in-memory and streaming paths, and `Splits`.
- `reading`: one file parsed and validated (`read_file_rows`), or a whole spec in memory (`read_rows`).
- `stream`: the same reader inside Ray Data read tasks (training files, predict-batch), and the streamed
  training split, so the driver never holds a training corpus.
- `sources`: which rows a run trains, validates and tests on: embedded, hub or files (`load_splits`,
  `evaluation_rows`).

Imports flow one way (A -> B: A imports B): files, quarantine, splits -> validation; reading -> files, validation;
stream -> files, reading, splits, validation; sources -> reading, splits, validation, and stream (lazily, only on the
streamed path, which needs Ray Data). Nothing imports `sources`.
"""
