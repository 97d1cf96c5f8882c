"""`ynat-ray` console script: train, evaluate, predict, serve, predict-batch.

Every command parses the same YnatConfig (see `ynat-ray <command> --help`), so a YAML file written for
training also works for serving and batch prediction.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from ynat_ray.config import YnatConfig, build_parser, parse_config


def _need_checkpoint(cfg: YnatConfig) -> str:
    if not cfg.checkpoint:
        sys.exit("error: --checkpoint DIR is required (a training run prints where its best checkpoint is)")
    return cfg.checkpoint


def cmd_train(argv: list[str]) -> None:
    from ynat_ray.train import run_training

    cfg, _ = parse_config(argv, build_parser("Fine-tune a YNAT topic classifier with Ray Train."))
    run_training(cfg)


def cmd_evaluate(argv: list[str]) -> None:
    from ynat_ray.data import evaluation_rows, write_quarantine
    from ynat_ray.inference import TextClassifier
    from ynat_ray.metrics import classification_metrics, format_report

    parser = build_parser("Accuracy, macro-F1, per-class F1 and the confusion matrix of a checkpoint.")
    parser.add_argument("--json", action="store_true", help="Print the metrics as JSON instead of a table.")
    cfg, extra = parse_config(argv, parser)
    bad: list = []
    name, rows = evaluation_rows(cfg, bad)
    if bad:
        print(f"skipped {write_quarantine(bad, cfg.quarantine_path or 'quarantine.jsonl')} malformed row(s)", file=sys.stderr)
    clf = TextClassifier(_need_checkpoint(cfg), use_gpu=cfg.use_gpu, precision=cfg.precision, max_length=cfg.max_length)
    probs = clf.probabilities(rows["title"].tolist(), batch_size=cfg.eval_batch_size)
    metrics = classification_metrics(rows["label"].tolist(), probs.argmax(1).tolist())
    print(json.dumps(metrics, ensure_ascii=False, indent=2) if extra.json else f"{name}: {format_report(metrics)}")


def cmd_predict(argv: list[str]) -> None:
    from ynat_ray.inference import TextClassifier

    parser = build_parser("Classify titles given on the command line; prints pipeline-shaped output.")
    parser.add_argument("texts", nargs="+", help="One or more news titles.")
    parser.add_argument("--top_k", type=int, default=1, help="Labels per title (like pipeline(top_k=...)).")
    cfg, extra = parse_config(argv, parser)
    clf = TextClassifier(_need_checkpoint(cfg), use_gpu=cfg.use_gpu, precision=cfg.precision, max_length=cfg.max_length)
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
    "evaluate": (cmd_evaluate, "accuracy, macro-F1, per-class F1, confusion matrix of a checkpoint"),
    "predict": (cmd_predict, "classify titles given on the command line"),
    "serve": (cmd_serve, "serve a checkpoint with Ray Serve"),
    "predict-batch": (cmd_predict_batch, "score files with Ray Data"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: ynat-ray <command> [options]   (ynat-ray <command> --help for options)\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<14} {text}")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    main()
