"""Per-run artifacts a person looks at: metrics history (JSON, CSV), learning curve and confusion matrix PNGs."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from ynat_ray.labels import LABELS

# Plot labels when no Hangul font is installed (matplotlib would draw empty boxes).
ENGLISH = {
    "IT과학": "IT/Science",
    "경제": "Economy",
    "사회": "Society",
    "생활문화": "Life/Culture",
    "세계": "World",
    "스포츠": "Sports",
    "정치": "Politics",
}


def _hangul_font() -> str | None:
    from matplotlib import font_manager

    for font in font_manager.fontManager.ttflist:
        if any(key in font.name for key in ("Nanum", "Noto Sans CJK", "Noto Sans KR", "Malgun", "AppleGothic", "Baekmuk", "UnDotum")):
            return font.name
    return None


def write_history(history: Sequence[dict[str, Any]], out_dir: str) -> None:
    """metrics_history.json and .csv, one row per epoch."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics_history.json"), "w", encoding="utf-8") as fh:
        json.dump(list(history), fh, ensure_ascii=False, indent=2)
    keys = sorted({k for row in history for k in row if not isinstance(row[k], (dict, list))})
    with open(os.path.join(out_dir, "metrics_history.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def plot_learning_curve(history: Sequence[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.legend()
    ax_score.plot(epochs, [h["val_accuracy"] for h in history], marker="o", label="validation accuracy")
    ax_score.plot(epochs, [h["val_macro_f1"] for h in history], marker="o", label="validation macro-F1")
    ax_score.set_xlabel("epoch")
    ax_score.set_ylim(0, 1)
    ax_score.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: str, title: str = "confusion matrix") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = _hangul_font()
    names = list(LABELS) if font else [ENGLISH[n] for n in LABELS]
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    font_kw = {"fontname": font} if font else {}
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", **font_kw)
    ax.set_yticks(range(len(names)), names, **font_kw)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trials(table: Sequence[dict[str, Any]], curves: dict[str, Sequence[dict[str, Any]]], path: str, metric: str) -> None:
    """A search at a glance: best validation macro-F1 against learning rate (one dot per trial, early stops hollow),
    and every trial's learning curve, so a stopped trial shows where ASHA cut it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, (ax_lr, ax_curve) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in table:
        if row.get(metric) is None or row.get("learning_rate") is None:
            continue
        early = row.get("status", "").startswith("stopped")
        ax_lr.scatter(row["learning_rate"], row[metric], s=40, facecolors="none" if early else "C0", edgecolors="C0")
        tag = row["trial"].split("_")[-1]
        ax_lr.annotate(tag, (row["learning_rate"], row[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax_lr.set_xscale("log")
    # A search often spans less than a decade: label a few round values, not every crowded minor tick.
    ax_lr.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax_lr.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:.2g}"))
    ax_lr.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax_lr.set_xlabel("learning rate")
    ax_lr.set_ylabel(f"best {metric}")
    ax_lr.set_title("trials (hollow: stopped early by ASHA)")
    for i, (name, history) in enumerate(sorted(curves.items())):
        if history:
            epochs, scores = [h["epoch"] for h in history], [h[metric] for h in history]
            ax_curve.plot(epochs, scores, marker="o", ms=3, color=f"C{i % 10}", label=name.split("_")[-1])
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel(metric)
    ax_curve.set_title("learning curves")
    if curves:
        ax_curve.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
