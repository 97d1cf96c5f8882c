"""Distillation (`ynat-ray train --teacher`): real teacher passes through Ray Data actors, real TorchTrainer students.

The teacher is the suite's own checkpoint (`checkpoint_dir`, a small model trained on 2,000 embedded rows), so it
disagrees with the gold labels often: a student that learned from it agrees with it clearly more than the same
student, on the same rows and seed, trained on the gold labels alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ynat_ray.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
AGREEMENT_ROWS = 400


def student(storage: str, **options: Any) -> Any:
    """A small, quick student (the teacher's architecture on 1,500 other embedded rows, one worker), the same seed every
    time; only the options given differ."""
    from ynat_ray.train import run_training

    values: dict[str, Any] = dict(
        model="ynat-bigram", max_train_samples=1500, max_eval_samples=200, epochs=3, num_workers=1, batch_size=16,
        learning_rate=1e-3, token_dropout=0.0, hidden_dropout=0.1, attention_dropout=0.1, storage_path=storage,
        progress_bar=False, tracking_uri="none", materialize="yes", seed=7, precision="fp32",  # the same on any CPU
    )  # fmt: skip
    return run_training(TrainConfig.of(**{**values, **options}))


def predictions(checkpoint: str, titles: list[str]) -> np.ndarray:
    from ynat_ray.config import EngineArgs
    from ynat_ray.inference import load_engine

    return load_engine(EngineArgs(checkpoint=checkpoint, backend="torch"), cpus=1).probabilities(titles).argmax(axis=1)


@pytest.fixture(scope="module")
def titles() -> list[str]:
    from ynat_ray.data.sources import embedded_split

    return embedded_split("test")["title"].tolist()[:AGREEMENT_ROWS]


def test_a_student_learns_its_teacher(ray_session, checkpoint_dir: str, tmp_path: Path, titles: list[str]) -> None:
    from transformers import pipeline

    from ynat_ray.checkpoint import read_run_spec

    taught = student(str(tmp_path), teacher=checkpoint_dir, distill_weight=1.0, distill_temperature=1.0)
    plain = student(str(tmp_path))
    teacher = predictions(checkpoint_dir, titles)
    agree_taught = float(np.mean(predictions(taught.best_checkpoint, titles) == teacher))
    agree_plain = float(np.mean(predictions(plain.best_checkpoint, titles) == teacher))
    print(f"\n[distill] agreement with the teacher on {len(titles)} test titles: taught {agree_taught:.3f}, plain {agree_plain:.3f}")
    assert agree_taught >= agree_plain + 0.08, (agree_taught, agree_plain)

    spec = read_run_spec(taught.best_checkpoint)
    assert spec is not None and spec.config["distill"]["teacher"] == checkpoint_dir
    assert spec.config["distill"]["distill_weight"] == 1.0 and spec.config["distill"]["distill_temperature"] == 1.0
    assert read_run_spec(plain.best_checkpoint).config["distill"]["teacher"] is None
    # A student checkpoint is a normal one: transformers' own pipeline loads it, Korean labels and all.
    out = pipeline("text-classification", model=taught.best_checkpoint, device=-1)(titles[0])
    assert out[0]["label"] in {"IT과학", "경제", "사회", "생활문화", "세계", "스포츠", "정치"}


def test_the_linear_teacher_end_to_end(ray_session, tmp_path: Path) -> None:
    from ynat_ray.checkpoint import read_run_spec

    outcome = student(str(tmp_path), teacher="linear", epochs=1)
    assert read_run_spec(outcome.best_checkpoint).config["distill"]["teacher"] == "linear"
    assert 0.0 <= outcome.final_metrics["macro_f1"] <= 1.0 and len(outcome.history) == 1


def test_teacher_pass_keeps_every_row_with_its_own_probabilities(ray_session, checkpoint_dir: str) -> None:
    """The teacher's output rides on the row it was computed from: every row once, same guid/title/label, and the
    probabilities are the teacher engine's own for that title (in the student's label order)."""
    from ynat_ray.config import DistillArgs, EngineArgs
    from ynat_ray.data.sources import embedded_split
    from ynat_ray.distill import TEACHER_COLUMN, teach
    from ynat_ray.inference import load_engine

    rows = embedded_split("train").iloc[:300]
    taught = teach(rows, DistillArgs(teacher=checkpoint_dir, teacher_cpus=0.5)).to_pandas().set_index("guid")
    assert sorted(taught.index) == sorted(rows["guid"]) and (taught.loc[rows["guid"], "label"].to_numpy() == rows["label"]).all()
    probs = np.stack(taught.loc[rows["guid"], TEACHER_COLUMN].to_numpy())
    # The teacher ran on the engine `auto` picks (ONNX int8 here: its activations are quantized per batch, so batches
    # cut differently move a probability by ~1e-3); another row's probabilities are a different distribution.
    want = load_engine(EngineArgs(checkpoint=checkpoint_dir), cpus=1).probabilities(rows["title"].tolist())
    np.testing.assert_allclose(probs, want, atol=0.02)
    assert np.abs(probs - np.roll(want, 1, axis=0)).max() > 0.3


def test_linear_teacher_is_out_of_fold() -> None:
    """Each row is scored by a fold model that never saw it: on its own rows the fold models are far less sure."""
    from ynat_ray.data.sources import embedded_split
    from ynat_ray.distill import LinearTeacher, fit_linear_folds, fold_of
    from ynat_ray.linear import yardstick

    rows = embedded_split("train").iloc[:1500]
    titles, labels, guids = rows["title"].tolist(), rows["label"].to_numpy(), rows["guid"].tolist()
    assert (fold_of(guids, 5) == fold_of(list(guids), 5)).all() and set(fold_of(guids, 5)) == set(range(5))
    import pyarrow as pa

    models = fit_linear_folds(titles, labels, guids)
    oof = np.stack(LinearTeacher(models)(pa.Table.from_pandas(rows[["guid", "title", "label"]])).column("teacher_probs").to_pylist())
    seen = yardstick().fit(titles, labels).predict_proba(titles)
    gold_oof, gold_seen = oof[np.arange(len(labels)), labels].mean(), seen[np.arange(len(labels)), labels].mean()
    assert gold_oof < gold_seen - 0.15, (gold_oof, gold_seen)


def test_distillation_loss() -> None:
    import torch
    import torch.nn.functional as F

    from ynat_ray.distill import distillation_loss

    logits, labels = torch.randn(16, 7), torch.randint(0, 7, (16,))
    teacher = torch.softmax(torch.randn(16, 7), dim=-1)
    assert torch.allclose(distillation_loss(logits, labels, teacher, 0.0, 2.0), F.cross_entropy(logits, labels))
    # A student that already matches the teacher has nothing to learn from the soft term, at any temperature.
    same = distillation_loss(torch.log(teacher), labels, teacher, 1.0, 3.0)
    assert float(same) == pytest.approx(0.0, abs=1e-5)
    assert float(distillation_loss(logits, labels, teacher, 1.0, 3.0)) > 0.01


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ynat_ray.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_a_teacher_with_other_labels_is_one_line_before_ray_starts(checkpoint_dir: str, tmp_path: Path) -> None:
    other = tmp_path / "three-topics"
    shutil.copytree(checkpoint_dir, other)
    config = json.loads((other / "config.json").read_text(encoding="utf-8"))
    config["id2label"] = {"0": "긍정", "1": "부정", "2": "중립"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    (other / "config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    done = run_cli("train", "--teacher", str(other), "--storage_path", str(tmp_path / "runs"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    want = f"ynat-ray: error: teacher {other} predicts 3 labels (긍정, 부정, 중립); the student needs the 7 YNAT topics"
    assert lines[0].startswith(want), lines


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--teacher", "linear", "--distill_weight", "1.5"], "--distill_weight 1.5 must be between 0 and 1"),
        (["--teacher", "linear", "--distill_temperature", "0"], "--distill_temperature 0 must be greater than 0"),
        (["--distill_weight", "0.3"], "--distill_weight needs --teacher (a checkpoint or 'linear')"),
    ],
)
def test_distillation_option_mistakes_are_one_line(flags: list[str], message: str, tmp_path: Path) -> None:
    done = run_cli("train", *flags, "--storage_path", str(tmp_path / "runs"))
    assert done.returncode == 2 and done.stderr.strip() == f"ynat-ray: error: {message}", done.stderr


def test_tune_can_search_the_distillation_options(tmp_path: Path) -> None:
    from ynat_ray.tune import load_space

    space = tmp_path / "space.yaml"
    space.write_text("teacher: linear\ndistill_weight: {uniform: [0.2, 0.8]}\ndistill_temperature: {choice: [1.0, 2.0, 4.0]}\n")
    loaded = load_space(str(space))
    assert {"teacher", "distill_weight", "distill_temperature"} <= set(loaded.fixed) | set(loaded.searched)
