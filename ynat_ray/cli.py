"""`ynat-ray` console script: train, evaluate, predict, serve, predict-batch.

Every command parses the same YnatConfig (see `ynat-ray <command> --help`), so a YAML file written for
training also works for serving and batch prediction.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from ynat_ray.config import UsageError, YnatConfig, build_parser, parse_config
from ynat_ray.data import text_problem


def _need_checkpoint(cfg: YnatConfig) -> str:
    if not cfg.checkpoint:
        raise UsageError("--checkpoint DIR is required (a training run prints where its best checkpoint is)")
    return cfg.checkpoint


def classifier_for(cfg: YnatConfig) -> Any:
    """The inference engine for `predict` / `evaluate`, saying on stderr which backend runs and why."""
    from ynat_ray.inference import TextClassifier

    clf = TextClassifier(
        _need_checkpoint(cfg),
        backend=cfg.backend,
        use_gpu=cfg.use_gpu,
        precision=cfg.precision,
        max_length=cfg.max_length,
        threads=cfg.threads,
    )
    print(f"[ynat-ray] engine {clf.backend} ({clf.choice.reason}), max_length {clf.max_length}, {clf.threads} thread(s)", file=sys.stderr)
    return clf


def cmd_export(argv: list[str]) -> None:
    from ynat_ray.checkpoint import resolve_checkpoint
    from ynat_ray.data import embedded_split, read_rows
    from ynat_ray.export import export_checkpoint

    parser = build_parser(
        "Export a checkpoint (local dir, URI or hub id) to ONNX fp32 + int8 and record their parity with torch. "
        "Files go into <checkpoint>/onnx, or a cache keyed by the weights' hash when the checkpoint is not writable."
    )
    parser.add_argument("--force", action="store_true", help="Export again even if an up-to-date export exists.")
    cfg, extra = parse_config(argv, parser)
    path = resolve_checkpoint(_need_checkpoint(cfg))
    rows = read_rows(cfg.validation_data, cfg) if cfg.validation_data else embedded_split("validation")
    record = export_checkpoint(
        path, texts=rows["title"].tolist(), labels=rows["label"].tolist(), max_length=cfg.max_length, threads=cfg.threads, force=extra.force
    )
    print(json.dumps(record, ensure_ascii=False, indent=2))


def cmd_train(argv: list[str]) -> None:
    from ynat_ray.train import run_training

    cfg, _ = parse_config(argv, build_parser("Fine-tune a YNAT topic classifier with Ray Train."))
    run_training(cfg)


def cmd_tune(argv: list[str]) -> None:
    from ynat_ray.tune import DEFAULT_SPACE, load_space, run_tune

    parser = build_parser(
        "Search training hyperparameters with Ray Tune (ASHA on validation macro-F1) over the same TorchTrainer loop. "
        "Other options are fixed for every trial; writes results.csv, trials.png and best.yaml (for `train --config`)."
    )
    parser.add_argument("--space", default=DEFAULT_SPACE, help="YAML search space: YnatConfig keys, fixed or ranges.")
    parser.add_argument("--num_samples", type=int, default=8, help="Trials to sample (with `grid` entries: samples per grid point).")
    parser.add_argument("--max_concurrent_trials", type=int, default=None, help="Trials at once (default: what CPUs/GPUs hold).")
    parser.add_argument("--grace_period", type=int, default=2, help="ASHA: epochs every trial runs before it can be stopped.")
    parser.add_argument("--reduction_factor", type=int, default=2, help="ASHA: keep the best 1/N of trials at each rung.")
    parser.add_argument("--trial_failures", type=int, default=1, help="Tune: times a failed trial is retried (workers: --max_failures).")
    parser.add_argument("--out", default=None, help="Directory for results.csv, trials.png, best.yaml (default: the search's folder).")
    pre, _ = parser.parse_known_args(argv)
    space = load_space(pre.space)
    given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
    clash = sorted(given & set(space.searched))
    if clash:
        raise UsageError(f"--{clash[0]} is searched by {space.path}; fix it there or drop the flag")
    parser.set_defaults(**space.fixed)
    cfg, extra = parse_config(argv, parser)
    if extra.num_samples < 1:
        raise UsageError("--num_samples must be at least 1")
    run_tune(
        cfg, space, num_samples=extra.num_samples, max_concurrent_trials=extra.max_concurrent_trials, grace_period=extra.grace_period,
        reduction_factor=extra.reduction_factor, trial_failures=extra.trial_failures, out_dir=extra.out,
    )  # fmt: skip


def cmd_evaluate(argv: list[str]) -> None:
    from ynat_ray.data import evaluation_rows, write_quarantine
    from ynat_ray.metrics import classification_metrics, format_report

    parser = build_parser("Accuracy, macro-F1, per-class F1 and the confusion matrix of a checkpoint.")
    parser.add_argument("--json", action="store_true", help="Print the metrics as JSON instead of a table.")
    cfg, extra = parse_config(argv, parser)
    bad: list = []
    name, rows = evaluation_rows(cfg, bad)
    if bad:
        print(f"skipped {write_quarantine(bad, cfg.quarantine_path or 'quarantine.jsonl')} malformed row(s)", file=sys.stderr)
    clf = classifier_for(cfg)
    probs = clf.probabilities(rows["title"].tolist(), batch_size=cfg.eval_batch_size)
    metrics = classification_metrics(rows["label"].tolist(), probs.argmax(1).tolist())
    print(json.dumps(metrics, ensure_ascii=False, indent=2) if extra.json else f"{name}: {format_report(metrics)}")


def cmd_predict(argv: list[str]) -> None:
    parser = build_parser("Classify titles given on the command line; prints pipeline-shaped output.")
    parser.add_argument("texts", nargs="+", help="One or more news titles.")
    parser.add_argument("--top_k", type=int, default=1, help="Labels per title (like pipeline(top_k=...)).")
    cfg, extra = parse_config(argv, parser)
    for i, text in enumerate(extra.texts):
        problem = text_problem(text)
        if problem:
            raise UsageError(f"text {i + 1} ({text!r}) is {problem}" if problem != "empty" else f"text {i + 1} is empty")
    clf = classifier_for(cfg)
    print(json.dumps(clf(extra.texts, top_k=extra.top_k), ensure_ascii=False, indent=1))


def cmd_serve(argv: list[str]) -> None:
    from ynat_ray.serving import run_server

    cfg, _ = parse_config(argv, build_parser("Serve a checkpoint over HTTP with Ray Serve (autoscaling, batching)."))
    _need_checkpoint(cfg)
    run_server(cfg)


def cmd_predict_batch(argv: list[str]) -> None:
    from ynat_ray.batch import run_batch_prediction

    cfg, _ = parse_config(argv, build_parser("Score files with Ray Data (actor pool); writes parquet/jsonl."))
    _need_checkpoint(cfg)
    run_batch_prediction(cfg)


COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "train": (cmd_train, "fine-tune on Ray Train (default: offline preset on the embedded YNAT subsample)"),
    "tune": (cmd_tune, "search training hyperparameters with Ray Tune (ASHA), write best.yaml"),
    "evaluate": (cmd_evaluate, "accuracy, macro-F1, per-class F1, confusion matrix of a checkpoint"),
    "predict": (cmd_predict, "classify titles given on the command line"),
    "serve": (cmd_serve, "serve a checkpoint with Ray Serve"),
    "predict-batch": (cmd_predict_batch, "score files with Ray Data"),
    "export": (cmd_export, "export a checkpoint to ONNX (fp32 + int8) and check parity with torch"),
}


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user asked for something that cannot work": one line, exit 2, no traceback.

    ValueError covers config checks (unknown keys, impossible CPU plans, bad values) and JSON/YAML files
    that do not parse; the project's own error types say which file, row, field or path is wrong.
    """
    import yaml

    from ynat_ray.checkpoint import CheckpointError
    from ynat_ray.config import UsageError
    from ynat_ray.data import DataValidationError, HubUnavailableError
    from ynat_ray.modeling import ModelLoadError

    return (UsageError, CheckpointError, DataValidationError, HubUnavailableError, ModelLoadError, FileNotFoundError,
            FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError, yaml.YAMLError, ValueError)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a command; user mistakes print `ynat-ray: error: ...` and exit 2 (`--debug` shows the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("YNAT_RAY_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ynat-ray: error: unknown command {argv[0]!r}", file=sys.stderr)
        print("usage: ynat-ray <command> [options] [--debug]   (ynat-ray <command> --help for options)\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<14} {text}")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    try:
        COMMANDS[argv[0]][0](argv[1:])
    except KeyboardInterrupt:
        print("ynat-ray: interrupted", file=sys.stderr)
        sys.exit(130)
    except user_error_types() as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"ynat-ray: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
