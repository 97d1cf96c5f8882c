"""Offline batch prediction with Ray Data: files in, one prediction per input row out.

Pipeline, and why each step looks the way it does:

  expand_paths(--input) -> read_datasource(YnatFiles): ONE read task per file (READ_CPUS each) runs the
     reader training uses too (`ynat_ray.data.stream`: parse + validate + the id/guid rule), so a malformed row is
     reported exactly like in training, with the file's own 1-based row number. Good rows stream on with
     `source` and `row` columns; Ray Data splits each task's output into several blocks, so one big file
     still spreads over every actor. Skipped rows go to a tiny ledger actor that the driver asks for the
     quarantine file (`write_quarantine`, local or URI) and the input row count.
  -> map_batches(Predictor, compute=ActorPoolStrategy(size=num_actors), num_cpus/num_gpus per actor):
     each actor loads the checkpoint once into the inference engine (`TextClassifier`: ONNX Runtime int8
     on CPU where its parity check passed, length-sorted batches padded by the tokenizer), with as many
     intra-op threads as the actor has CPUs.
  -> write_parquet / write_json with `preserve_order`, so output files follow the input order.

Then the driver re-reads the written files' (source, row, gold, label) columns and raises unless the row
count equals input rows minus quarantined rows and (source, row) only ever increases: rows are never
dropped or reordered silently. The same pass yields accuracy and macro-F1 when the input has gold labels.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ynat_ray.config import BatchArgs, BatchConfig, EngineArgs, local_path
from ynat_ray.data.files import expand_paths
from ynat_ray.data.quarantine import write_quarantine
from ynat_ray.data.stream import RowLedger, YnatFilesDatasource, unwrap_validation_error  # the one reader
from ynat_ray.data.validation import BadRow, DataValidationError
from ynat_ray.errors import UsageError
from ynat_ray.labels import LABEL2ID
from ynat_ray.resources import READ_CPUS, WRITE_CPUS

# Rows per predictor call: several forward passes of --eval_batch_size each, sorted by length across the
# whole call (less padding), and few enough calls that Ray's per-task overhead stays small next to the model.
ROWS_PER_CALL = 1024
PREDICTED_COLUMNS = ("guid", "label", "score", "gold", "source", "row", "row_id")
SCORE_PREFIX = "scores_"
OUTPUT_SUFFIXES = (".parquet", ".jsonl")


class OutputMismatchError(RuntimeError):
    """The written predictions do not account for every input row, or are out of input order."""


# ---------------------------------------------------------------------------------------------
# Workers (the reader, `read_file` / `YnatFilesDatasource` / `RowLedger`, lives in ynat_ray.data.stream)


class Predictor:
    """Ray Data actor: loads the checkpoint once, then adds label/score (and optionally all scores)."""

    def __init__(self, engine: EngineArgs, cpus: float, gpus: float, text_column: str, eval_batch_size: int, all_scores: bool):
        from ynat_ray.inference import load_engine

        self.clf = load_engine(engine, cpus=cpus, gpus=gpus)  # one thread per reserved CPU, no oversubscription
        self.text_column, self.eval_batch_size, self.all_scores = text_column, eval_batch_size, all_scores

    def __call__(self, batch: pa.Table) -> pa.Table:
        return predict_table(self.clf, batch, self.text_column, self.eval_batch_size, self.all_scores)


def predict_table(clf: Any, batch: pa.Table, text_column: str, eval_batch_size: int, all_scores: bool) -> pa.Table:
    """Rows from `read_file` -> output rows: guid, text, label, score, [scores_<topic>...], gold, source, row."""
    probs = clf.probabilities(batch.column(text_column).to_pylist(), batch_size=eval_batch_size)
    best = probs.argmax(axis=1)
    columns: dict[str, Any] = {
        "guid": batch.column("guid"),
        text_column: batch.column(text_column),
        "label": pa.array([clf.id2label[int(i)] for i in best], pa.string()),
        "score": pa.array(probs[np.arange(len(best)), best], pa.float32()),
    }
    if all_scores:
        for j, name in enumerate(clf.labels):
            columns[f"{SCORE_PREFIX}{name}"] = pa.array(probs[:, j], pa.float32())
    for name in ("gold", "source", "row", "row_id"):
        if name in batch.column_names:
            columns[name] = batch.column(name)
    return pa.table(columns)


# ---------------------------------------------------------------------------------------------
# Driver


def check_config(cfg: BatchConfig) -> None:
    """Fail before any work on options that would produce an unreadable or ambiguous output."""
    job, text_column = cfg.batch, cfg.rows.text_column
    for name, value in (("checkpoint", cfg.engine.checkpoint), ("input", job.input), ("output", job.output)):
        if not value:
            raise UsageError(f"predict-batch needs --{name}")
    if text_column in PREDICTED_COLUMNS or text_column.startswith(SCORE_PREFIX):
        raise UsageError(f"--text_column {text_column!r} clashes with an output column ({', '.join(PREDICTED_COLUMNS)})")
    if job.num_actors < 1 or job.eval_batch_size < 1 or job.rows_per_file < 1:
        raise UsageError("--num_actors, --eval_batch_size and --rows_per_file must be >= 1")


def prepare_engine(cfg: BatchConfig) -> str:
    """Export a local checkpoint once here, before the actors start, and say which backend they will run.

    Why in the driver: N actors would otherwise race to export the same checkpoint (a lock makes that safe,
    but all but one would wait), and the user should see the engine choice before the job runs.
    """
    from ynat_ray.inference import choose_backend

    backend, path = cfg.engine.backend, local_path(cfg.engine.checkpoint or "")
    if cfg.batch.actor_gpus > 0:
        return choose_backend(backend, "cuda", None).name
    if backend == "torch" or not os.path.isdir(path):
        return backend if backend != "auto" else "auto (chosen in each actor)"
    from ynat_ray.export import export_checkpoint

    choice = choose_backend(backend, "cpu", export_checkpoint(path, log=lambda _: None))
    return f"{choice.name} ({choice.reason})"


def default_quarantine_path(output: str) -> str:
    """Beside the output directory, so readers of the directory never mistake it for predictions."""
    return output.rstrip("/") + ".quarantine.jsonl"


def in_progress_path(output: str) -> str:
    """The marker of a run that has not finished writing `output` (beside it, like the quarantine file).

    While it exists, the same command resumes instead of refusing the non-empty output; success removes it.
    """
    return output.rstrip("/") + ".in-progress.json"


def _remove(uri: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def prepare_output(job: BatchArgs, quarantine: str) -> bool:
    """Refuse a non-empty output directory unless --overwrite or it belongs to an unfinished run of the same
    output (`mark_in_progress`); clear a stale quarantine file. Returns True when this run resumes one.

    --overwrite only ever deletes a directory of prediction files, so a mistyped --output (say, the data
    directory or $HOME) is an error instead of a disaster.
    """
    import fsspec

    output, marker = job.output or "", in_progress_path(job.output or "")
    mfs, mpath = fsspec.core.url_to_fs(marker)
    resuming = mfs.exists(mpath) and not job.overwrite
    fs, path = fsspec.core.url_to_fs(output)
    if fs.exists(path) and (not fs.isdir(path) or fs.ls(path)):
        # (an object store may list the folder's own marker object, "bucket/preds/", among its files)
        found = [p for p in (fs.find(path) if fs.isdir(path) else [path]) if p.rstrip("/") != path.rstrip("/")]
        foreign = [p for p in found if not p.endswith(OUTPUT_SUFFIXES)]
        if foreign and (job.overwrite or resuming):
            raise FileExistsError(f"{output} holds files that are not predictions (e.g. {foreign[0]}); refusing to overwrite it")
        if not job.overwrite and not resuming:
            raise FileExistsError(f"{output} already exists and is not empty; pass --overwrite to replace it or pick a new --output")
        if job.overwrite:
            fs.rm(path, recursive=True)
    qfs, qpath = fsspec.core.url_to_fs(quarantine)
    if qfs.exists(qpath):
        qfs.rm(qpath)
    return resuming


def mark_in_progress(job: BatchArgs) -> None:
    """Written just before the first prediction file can be: from here on, a stopped run is one to resume."""
    import fsspec

    with fsspec.open(in_progress_path(job.output or ""), "w") as fh:
        json.dump({"input": job.input, "output": job.output, "output_format": job.output_format}, fh)


def written_row_ids(output: str, output_format: str) -> np.ndarray:
    """The row_ids already in `output`'s prediction files, sorted; a file a killed run left half-written (it does
    not parse) is deleted, so its rows are predicted again. Exactly once holds per row, whatever the files."""
    import fsspec

    ids = []
    for path in output_files(output, output_format):
        try:
            ids.append(read_output_file(path, ["row_id"])["row_id"].to_numpy(dtype=np.int64))
        except Exception:  # noqa: BLE001 - truncated parquet (no footer) or a cut-off JSON line
            fs, local = fsspec.core.url_to_fs(path)
            fs.rm(local)
    return np.unique(np.concatenate(ids)) if ids else np.array([], np.int64)


def remove_output(output: str) -> None:
    """Delete what a failed run wrote (prepare_output made sure nothing else was there), and its marker."""
    _remove(output)
    _remove(in_progress_path(output))


@contextlib.contextmanager
def preserved_order() -> Iterator[None]:
    """Ray Data may finish blocks out of order; for this job it must not (restored afterwards)."""
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


def build_dataset(cfg: BatchConfig, files: list[str], ledger: Any, done: np.ndarray | None = None) -> Any:
    """The lazy Ray Dataset: file list -> validated rows (less the row_ids in `done`) -> predictions (written by
    `write_output`). Each actor receives only its engine options, its resources and the columns it writes."""
    import ray

    job = cfg.batch
    source = YnatFilesDatasource(files, cfg.rows, ledger, with_row_id=True, skip_row_ids=done)
    ds = ray.data.read_datasource(source, num_cpus=READ_CPUS)
    return ds.map_batches(
        Predictor,
        fn_constructor_kwargs={
            "engine": cfg.engine,
            "cpus": job.actor_cpus,
            "gpus": job.actor_gpus,
            "text_column": cfg.rows.text_column,
            "eval_batch_size": job.eval_batch_size,
            "all_scores": job.all_scores,
        },  # fmt: skip
        compute=ray.data.ActorPoolStrategy(size=job.num_actors),
        num_cpus=job.actor_cpus,
        num_gpus=job.actor_gpus or None,
        batch_size=max(ROWS_PER_CALL, job.eval_batch_size),
        batch_format="pyarrow",
        udf_modifying_row_count=False,
    )


def write_output(ds: Any, job: BatchArgs) -> None:
    remote = {"num_cpus": WRITE_CPUS}
    if job.output_format == "parquet":
        ds.write_parquet(job.output, min_rows_per_file=job.rows_per_file, ray_remote_args=remote)
    else:
        from ray.data.datasource import FilenameProvider

        ds.write_json(
            job.output,
            filename_provider=FilenameProvider(file_format="jsonl"),
            min_rows_per_file=job.rows_per_file,
            ray_remote_args=remote,
            force_ascii=False,  # Korean stays readable
        )


@dataclass
class OutputScan:
    files: list[str]
    rows: int = 0
    gold: list[int] = field(default_factory=list)
    predicted: list[int] = field(default_factory=list)


def _natural_key(path: str) -> list[Any]:
    """'..._000002-10.parquet' after '..._000002-9.parquet': numbers compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def output_files(output: str, output_format: str) -> list[str]:
    """The prediction files a run wrote, in name order (Ray names them by write-task index = input order)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(output)
    fs.invalidate_cache(path)  # s3fs caches listings: a listing from before this run's writes would be stale
    suffix = OUTPUT_SUFFIXES[0] if output_format == "parquet" else OUTPUT_SUFFIXES[1]
    if not fs.exists(path):
        return []
    found = sorted((p for p in fs.find(path) if p.endswith(suffix)), key=_natural_key)
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in found]


def read_output_file(path: str, columns: list[str] | None = None) -> Any:
    """One written file as a pandas DataFrame (parquet or JSON lines)."""
    import fsspec
    import pandas as pd

    with fsspec.open(path, "rb") as fh:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(fh, columns=columns).to_pandas()
        frame = pd.read_json(fh, lines=True, dtype=False)
    return frame if columns is None else frame[columns]


def scan_output(output: str, output_format: str, inputs: list[str], resumed: bool = False) -> OutputScan:
    """Count the written rows, check each input row is there at most once (and, for a run in one go, in input
    order), and collect gold/predicted ids. A resumed run's files interleave with the first run's, so only
    uniqueness is checked across them."""
    scan = OutputScan(files=output_files(output, output_format))
    last, seen = -1, []
    for path in scan.files:
        frame = read_output_file(path, ["source", "row", "gold", "label", "row_id"])
        keys = frame["row_id"].to_numpy(dtype=np.int64)  # (input file index << 40) + row: sortable, see rows.row_ids
        seen.append(keys)
        steps = np.diff(np.concatenate([[last], keys]))
        if not resumed and (steps <= 0).any():
            at = int(np.argmax(steps <= 0))
            raise OutputMismatchError(f"{path}: row {frame['row'].iloc[at]} of {frame['source'].iloc[at]} is out of input order")
        last = int(keys[-1]) if len(keys) else last
        scan.rows += len(frame)
        labeled = frame[frame["gold"].notna()]
        scan.gold += [LABEL2ID[g] for g in labeled["gold"]]
        scan.predicted += [LABEL2ID[p] for p in labeled["label"]]
    every = np.concatenate(seen) if seen else np.array([], np.int64)
    unique, counts = np.unique(every, return_counts=True)
    if (counts > 1).any():
        key = int(unique[np.argmax(counts > 1)])
        raise OutputMismatchError(f"row {key & ((1 << 40) - 1)} of {inputs[key >> 40]} was written {counts.max()} times")
    return scan


def execute(cfg: BatchConfig, files: list[str], done: np.ndarray | None = None) -> tuple[float, int, list[BadRow]]:
    """Run the pipeline to the written files: (seconds, input rows, skipped rows).

    On failure the partial output is deleted, and a read task's DataValidationError is re-raised as itself.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: the ledger must outlive the loss of any other node (its counts are the check below).
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    ledger = ray.remote(num_cpus=0, scheduling_strategy=here)(RowLedger).remote()
    started = time.perf_counter()
    try:
        with preserved_order():
            write_output(build_dataset(cfg, files, ledger, done), cfg.batch)
        seconds = time.perf_counter() - started
        input_rows, bad = ray.get(ledger.totals.remote())
    except Exception as err:
        validation = unwrap_validation_error(err)
        if validation is not None:
            remove_output(cfg.batch.output or "")  # a data error: never leave a partial result (a rerun must not resume past it)
            raise DataValidationError(validation.source, validation.row, validation.field, validation.reason) from None
        print("[ynat-ray] predict-batch failed; run the same command again to resume (or pass --overwrite to start over)", flush=True)
        raise
    finally:
        ray.kill(ledger)
    return seconds, input_rows, bad


def run_batch_prediction(cfg: BatchConfig) -> dict[str, Any]:
    """Everything `ynat-ray predict-batch` / `jobs/predict.py` do; returns the printed summary as a dict."""
    import ray

    from ynat_ray.cluster import init_ray
    from ynat_ray.metrics import classification_metrics
    from ynat_ray.resources import alive_node_cpus, check_actor_budget

    check_config(cfg)
    job = cfg.batch
    output, files = job.output or "", expand_paths(job.input or "")
    quarantine = cfg.rows.quarantine_path or default_quarantine_path(output)
    resuming = prepare_output(job, quarantine)
    done = written_row_ids(output, job.output_format) if resuming else None
    init_ray(verbose=job.verbose)
    check_actor_budget(job.num_actors, job.actor_cpus, job.actor_gpus, ray.cluster_resources().get("CPU", 0.0), alive_node_cpus())
    if done is not None:
        print(f"[ynat-ray] resuming an unfinished run: {len(done)} row(s) already in {output} are kept, the rest predicted", flush=True)
    print(
        f"[ynat-ray] predict-batch: {len(files)} file(s) from {job.input} -> {output} ({job.output_format}); "
        f"{job.num_actors} actor(s) x {job.actor_cpus:g} CPU / {job.actor_gpus:g} GPU, batch {job.eval_batch_size}; "
        f"engine {prepare_engine(cfg)}",
        flush=True,
    )
    mark_in_progress(job)
    seconds, input_rows, bad = execute(cfg, files, done)
    quarantined = write_quarantine(bad, quarantine)
    scan = scan_output(output, job.output_format, files, resumed=resuming)
    if scan.rows != input_rows - quarantined:
        raise OutputMismatchError(f"wrote {scan.rows} rows but the input has {input_rows} rows and {quarantined} were quarantined")
    _remove(in_progress_path(output))
    summary: dict[str, Any] = {
        "input": job.input,
        "input_files": len(files),
        "input_rows": input_rows,
        "rows": scan.rows,
        "quarantined": quarantined,
        "quarantine_path": quarantine if quarantined else None,
        "seconds": seconds,
        "rows_per_s": scan.rows / seconds if seconds > 0 else 0.0,
        "output": output,
        "output_files": scan.files,
        "metrics": classification_metrics(scan.gold, scan.predicted) if scan.gold else None,
    }
    print_summary(summary, job.output_format)
    return summary


def print_summary(summary: dict[str, Any], output_format: str) -> None:
    """The end-of-job block: rows written and quarantined, throughput, where the files are, gold-label scores."""
    from ynat_ray.metrics import format_report

    print("\n" + "=" * 72)
    print(f"rows         {summary['rows']} written of {summary['input_rows']} read ({summary['quarantined']} quarantined)")
    if summary["quarantined"]:
        print(f"quarantine   {summary['quarantine_path']}")
    print(f"throughput   {summary['rows_per_s']:.1f} rows/s ({summary['seconds']:.1f} s end to end, model loading included)")
    print(f"output       {summary['output']}  ({len(summary['output_files'])} {output_format} file(s))")
    if summary["metrics"]:
        print(f"gold labels  {format_report(summary['metrics'])}")
    print("=" * 72, flush=True)
