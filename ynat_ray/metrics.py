"""Accuracy and macro-F1 (KLUE's official YNAT metric), per-class F1 and the confusion matrix, and `score`,
the one way a checkpoint is scored on labelled rows (`ynat-ray evaluate`, the end-of-training report)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ynat_ray.labels import LABELS, NUM_LABELS

if TYPE_CHECKING:
    from ynat_ray.inference import TextClassifier


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, Any]:
    """Metrics over all 7 topics (a topic absent from y_true still counts in the macro average as 0,
    which is what sklearn's f1_score(average='macro', labels=range(7)) and KLUE report)."""
    from sklearn.metrics import confusion_matrix, f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(NUM_LABELS))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean(per_class)),
        "per_class_f1": {LABELS[i]: float(v) for i, v in enumerate(per_class)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "num_rows": int(len(y_true)),
    }


def score(engine: TextClassifier, texts: Sequence[str], labels: Sequence[int], batch_size: int = 128) -> tuple[dict[str, Any], np.ndarray]:
    """Score `engine` (a loaded checkpoint, `inference.load_engine`) on labelled rows: the metrics of its top
    label per text, and its softmax probabilities (rows in input order, one column per topic).

    Why one home: `evaluate` and the end-of-training report must score a checkpoint the same way (the same
    engine path, batching and metric), or their numbers for one checkpoint drift apart.
    """
    probs = engine.probabilities(texts, batch_size=batch_size)
    return classification_metrics(labels, probs.argmax(axis=1)), probs


def format_report(metrics: dict[str, Any]) -> str:
    """Human-readable table: headline numbers, per-class F1, and the confusion matrix (rows = gold)."""
    lines = [f"rows {metrics['num_rows']}  accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}", "", "per-class F1:"]
    lines += [f"  {name:<6} {f1:.4f}" for name, f1 in metrics["per_class_f1"].items()]
    lines += ["", "confusion matrix (rows: gold, columns: predicted):", "        " + " ".join(f"{n[:4]:>6}" for n in LABELS)]
    for name, row in zip(LABELS, metrics["confusion_matrix"]):
        lines.append(f"  {name[:4]:<6}" + " ".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
