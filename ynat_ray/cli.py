"""`ynat-ray` console script: train, tune, evaluate, predict, serve, predict-batch, export.

Each command parses only its own option groups (`ynat_ray.config`; `ynat-ray <command> --help` lists them,
grouped). A flag of another command is a one-line error naming that command; one YAML file may still hold
options of several commands, so a training config also works for `serve`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from ynat_ray.config import (
    BatchConfig,
    EvaluateConfig,
    ExportConfig,
    PredictConfig,
    ServeConfig,
    TrainConfig,
    TuneConfig,
    build_parser,
    parse_command,
)
from ynat_ray.errors import UsageError, YnatError


def _need_checkpoint(checkpoint: str | None) -> str:
    if not checkpoint:
        raise UsageError("--checkpoint DIR is required (a training run prints where its best checkpoint is)")
    return checkpoint


def local_engine(cfg: EvaluateConfig | PredictConfig) -> Any:
    """The inference engine of a one-process command, saying on stderr which backend runs and why."""
    from ynat_ray.inference import load_engine

    _need_checkpoint(cfg.engine.checkpoint)
    engine = load_engine(cfg.engine, cpus=cfg.local.threads, gpus=1.0 if cfg.local.use_gpu else 0.0)
    print(
        f"[ynat-ray] engine {engine.backend} ({engine.choice.reason}), max_length {engine.max_length}, {engine.threads} thread(s)",
        file=sys.stderr,
    )
    return engine


def cmd_train(argv: list[str]) -> None:
    from ynat_ray.train import run_training

    cfg, _ = parse_command(TrainConfig, argv)
    run_training(cfg)


def cmd_tune(argv: list[str]) -> None:
    from ynat_ray.tune import DEFAULT_SPACE, load_space, run_tune

    parser = build_parser(TuneConfig)
    pre, _ = parser.parse_known_args(argv)
    space = load_space(pre.space or DEFAULT_SPACE)
    given = {a[2:].split("=")[0] for a in argv if a.startswith("--")}
    clash = sorted(given & set(space.searched))
    if clash:
        raise UsageError(f"--{clash[0]} is searched by {space.path}; fix it there or drop the flag")
    cfg, _ = parse_command(TuneConfig, argv, parser, defaults=space.fixed)
    if cfg.tune.num_samples < 1:
        raise UsageError("--num_samples must be at least 1")
    run_tune(cfg, space)


def cmd_evaluate(argv: list[str]) -> None:
    from ynat_ray.data.quarantine import write_quarantine
    from ynat_ray.data.sources import evaluation_rows
    from ynat_ray.metrics import format_report, score

    parser = build_parser(EvaluateConfig)
    parser.add_argument("--json", action="store_true", help="Print the metrics as JSON instead of a table.")
    cfg, extra = parse_command(EvaluateConfig, argv, parser)
    bad: list = []
    name, rows = evaluation_rows(cfg.data, bad)
    if bad:
        print(f"skipped {write_quarantine(bad, cfg.data.quarantine_path or 'quarantine.jsonl')} malformed row(s)", file=sys.stderr)
    metrics, _ = score(local_engine(cfg), rows["title"].tolist(), rows["label"].tolist(), batch_size=cfg.local.eval_batch_size)
    print(json.dumps(metrics, ensure_ascii=False, indent=2) if extra.json else f"{name}: {format_report(metrics)}")


def cmd_predict(argv: list[str]) -> None:
    from ynat_ray.data.validation import text_problem

    parser = build_parser(PredictConfig)
    parser.add_argument("texts", nargs="+", help="One or more news titles.")
    parser.add_argument("--top_k", type=int, default=1, help="Labels per title (like pipeline(top_k=...)).")
    cfg, extra = parse_command(PredictConfig, argv, parser)
    for i, text in enumerate(extra.texts):
        problem = text_problem(text)
        if problem:
            raise UsageError(f"text {i + 1} ({text!r}) is {problem}" if problem != "empty" else f"text {i + 1} is empty")
    engine = local_engine(cfg)
    print(json.dumps(engine(extra.texts, top_k=extra.top_k), ensure_ascii=False, indent=1))


def cmd_serve(argv: list[str]) -> None:
    from ynat_ray.serving.app import run_server

    cfg, _ = parse_command(ServeConfig, argv)
    _need_checkpoint(cfg.engine.checkpoint)
    run_server(cfg)


def cmd_predict_batch(argv: list[str]) -> None:
    from ynat_ray.batch import run_batch_prediction

    cfg, _ = parse_command(BatchConfig, argv)
    _need_checkpoint(cfg.engine.checkpoint)
    run_batch_prediction(cfg)


def cmd_export(argv: list[str]) -> None:
    from ynat_ray.checkpoint import resolve_checkpoint
    from ynat_ray.data.reading import read_rows
    from ynat_ray.data.sources import embedded_split
    from ynat_ray.export import export_checkpoint

    parser = build_parser(ExportConfig)
    parser.add_argument("--force", action="store_true", help="Export again even if an up-to-date export exists.")
    cfg, extra = parse_command(ExportConfig, argv, parser)
    path = resolve_checkpoint(_need_checkpoint(cfg.engine.checkpoint))
    data = cfg.data
    rows = read_rows(data.validation_data, data) if data.validation_data else embedded_split("validation")
    record = export_checkpoint(
        path, texts=rows["title"].tolist(), labels=rows["label"].tolist(), max_length=cfg.engine.max_length, threads=cfg.local.threads,
        force=extra.force,
    )  # fmt: skip
    print(json.dumps(record, ensure_ascii=False, indent=2))


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

    The product's own `YnatError`s (bad options, rows, checkpoints, placements), files that are missing or in
    the way, and YAML that does not parse. Not `ValueError`: one raised inside pandas, pyarrow or numpy is a
    bug, and its traceback is what fixes it.
    """
    import yaml

    return (YnatError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError, yaml.YAMLError)


def usage() -> None:
    print("usage: ynat-ray <command> [options] [--debug]   (ynat-ray <command> --help for options)\n\ncommands:")
    for name, (_, text) in COMMANDS.items():
        print(f"  {name:<14} {text}")


def main(argv: list[str] | None = None) -> None:
    """Dispatch to a command; user mistakes print `ynat-ray: error: ...` and exit 2 (`--debug` shows the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("YNAT_RAY_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"ynat-ray: error: unknown command {argv[0]!r}", file=sys.stderr)
        usage()
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
