"""Accuracy and macro-F1 (KLUE's official YNAT metric), per-class F1 and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ynat_ray.labels import LABELS, NUM_LABELS


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


def format_report(metrics: dict[str, Any]) -> str:
    """Human-readable table: headline numbers, per-class F1, and the confusion matrix (rows = gold)."""
    lines = [f"rows {metrics['num_rows']}  accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}", "", "per-class F1:"]
    lines += [f"  {name:<6} {f1:.4f}" for name, f1 in metrics["per_class_f1"].items()]
    lines += ["", "confusion matrix (rows: gold, columns: predicted):", "        " + " ".join(f"{n[:4]:>6}" for n in LABELS)]
    for name, row in zip(LABELS, metrics["confusion_matrix"]):
        lines.append(f"  {name[:4]:<6}" + " ".join(f"{v:>6}" for v in row))
    return "\n".join(lines)
