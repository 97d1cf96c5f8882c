"""Real TorchTrainer fits on the session cluster: 2 workers on 2 CPUs, resume after a worker dies,
pipeline() on the checkpoint, the CLI, and `ray job submit` with auth on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ynat_ray.labels import LABELS

REPO = Path(__file__).resolve().parents[1]


def test_two_worker_fit_streams_data_without_deadlock(trained):
    # The fixture ran the default CPU plan with 2 workers on a 2-CPU cluster, streaming (not materialized).
    assert [h["epoch"] for h in trained.history] == [1, 2, 3]
    assert all(h["val_rows"] == 300 for h in trained.history), "validation must not lose rows to sharding"
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    final = trained.final_metrics
    assert final["split"] == "test" and final["num_rows"] == 300
    assert 0.0 <= final["macro_f1"] <= 1.0 and set(final["per_class_f1"]) == set(LABELS)
    assert final["macro_f1"] > 0.2, "must beat chance (0.14) and the majority class (macro-F1 ~0.08)"


def test_every_epoch_reshuffles_the_whole_shard(ray_session):
    # Blocks reach a worker in the same order every epoch; the shuffle buffer must still mix the whole shard.
    import ray

    from ynat_ray.train import shuffle_options

    ds = ray.data.range(10_000, override_num_blocks=40).materialize()
    orders = []
    for epoch in (0, 1):
        batches = list(ds.iterator().iter_batches(batch_size=64, batch_format="numpy", **shuffle_options(64, 42, epoch)))
        assert max(batches[0]["id"]) >= 7500, "the first batch must draw from the far end of the shard"
        orders.append([int(i) for b in batches for i in b["id"]])
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(10_000)), "no row lost or repeated"
    assert orders[0] != orders[1], "each epoch reshuffles"


def test_checkpoint_is_a_pipeline_ready_hf_directory(checkpoint_dir):
    from transformers import pipeline

    from ynat_ray.inference import TextClassifier

    files = set(os.listdir(checkpoint_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "ynat_run_config.json", "metrics.json"} <= files
    config = json.loads(Path(checkpoint_dir, "config.json").read_text(encoding="utf-8"))
    assert list(config["id2label"].values()) == list(LABELS)
    titles = ["유튜브 내달 2일까지 크리에이터 지원 공간 운영", "코스피 외국인 매수에 상승 마감", "손흥민 시즌 10호골"]
    out = pipeline("text-classification", model=checkpoint_dir)(titles)
    assert [set(o) for o in out] == [{"label", "score"}] * 3 and all(o["label"] in LABELS for o in out)
    for backend in ("torch", "onnx"):  # fp32 engines equal pipeline() to 1e-4
        ours = TextClassifier(checkpoint_dir, backend=backend, precision="fp32")(titles)
        assert [o["label"] for o in ours] == [o["label"] for o in out]
        assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(ours, out))
    # Training exported ONNX fp32 + int8 into the checkpoint and recorded their parity on the validation rows.
    parity = json.loads(Path(checkpoint_dir, "onnx", "parity.json").read_text(encoding="utf-8"))
    assert parity["fp32_ok"] and parity["fp32_max_abs_diff"] <= 1e-4 and parity["rows"] == 300
    assert {"model.onnx", "model.int8.onnx"} <= set(os.listdir(Path(checkpoint_dir, "onnx")))
    auto = TextClassifier(checkpoint_dir)
    assert auto.backend == ("onnx-int8" if parity["int8_ok"] else "onnx") and "parity" in auto.choice.reason


def test_every_inference_path_uses_the_trained_max_length(checkpoint_dir):
    """The fixture trained at max_length 48, not the default 64: inference reads it from the checkpoint."""
    from conftest import TRAINED_MAX_LENGTH

    from ynat_ray.checkpoint import read_run_spec
    from ynat_ray.inference import TextClassifier

    assert read_run_spec(checkpoint_dir).max_length == TRAINED_MAX_LENGTH
    assert TextClassifier(checkpoint_dir, backend="onnx").max_length == TRAINED_MAX_LENGTH
    assert TextClassifier(checkpoint_dir, backend="onnx", max_length=16).max_length == 16  # shorter: as asked
    capped = TextClassifier(checkpoint_dir, backend="onnx", max_length=500)  # longer: capped, and said so
    assert capped.max_length == TRAINED_MAX_LENGTH and "capped" in capped.choice.reason
    out = run_cli("evaluate", "--checkpoint", checkpoint_dir, "--max_eval_samples", "50")
    assert out.returncode == 0 and f"max_length {TRAINED_MAX_LENGTH}" in out.stderr, out.stderr


def test_artifacts_for_people(trained):
    art = Path(trained.artifacts_dir)
    for name in ("metrics_history.json", "metrics_history.csv", "learning_curve.png", "confusion_matrix.png", "final_metrics.json"):
        assert (art / name).stat().st_size > 0, name
    assert (art / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len(trained.examples) == 3 and all(e["label"] in LABELS for e in trained.examples)


def test_worker_death_resumes_from_checkpoint(ray_session, storage, monkeypatch):
    from ynat_ray.config import TrainConfig
    from ynat_ray.train import FAIL_AT_EPOCH_ENV, run_training

    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "1")  # the last worker exits at the start of epoch 2, once
    cfg = TrainConfig.of(
        max_train_samples=400, max_eval_samples=100, epochs=2, num_workers=2, storage_path=storage, log_every=0, max_failures=1
    )
    outcome = run_training(cfg)
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    assert outcome.history[0]["resumed_from_epoch"] == 0
    assert outcome.history[1]["resumed_from_epoch"] == 1, "epoch 2 must come from a restarted worker group"


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ynat_ray.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_cli_predict_and_evaluate(checkpoint_dir):
    out = run_cli("predict", "--checkpoint", checkpoint_dir, "코스피 외국인 매수에 상승 마감", "유튜브 크리에이터 지원")
    assert out.returncode == 0, out.stderr
    preds = json.loads(out.stdout)
    assert len(preds) == 2 and all(p["label"] in LABELS and 0 < p["score"] <= 1 for p in preds)
    out = run_cli("evaluate", "--checkpoint", checkpoint_dir, "--max_eval_samples", "200")
    assert out.returncode == 0, out.stderr
    assert "macro-F1" in out.stdout and "confusion matrix" in out.stdout and "생활문화" in out.stdout
    out = run_cli("predict")
    assert out.returncode == 2 and out.stderr.startswith("ynat-ray: error:") and "texts" in out.stderr


@pytest.mark.slow
def test_ray_job_submit_with_auth(ray_cluster, storage):
    """`ray job submit --working-dir . -- python jobs/train.py` against a `ray start --head` cluster, token auth on."""
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", str(REPO),
        "--", "python", "jobs/train.py", "--max_train_samples", "300", "--max_eval_samples", "100", "--epochs", "1",
        "--num_workers", "1", "--log_every", "0", "--storage_path", storage, "--run_name", "submitted-job",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ray_cluster.env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout and "macro-F1" in done.stdout
    assert (Path(storage) / "submitted-job" / "artifacts" / "final_metrics.json").exists()


@pytest.mark.slow
def test_console_of_a_short_run_is_clean(tmp_path):
    """What a person sees from `ynat-ray train` on a laptop: every line once, no Python warnings, a progress
    bar per epoch and the summary. (Its own local Ray cluster, as a laptop user starts it; no --verbose.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    args = ["train", "--max_train_samples", "300", "--max_eval_samples", "60", "--epochs", "2", "--num_workers", "2",
            "--storage_path", str(tmp_path)]  # fmt: skip
    done = run_cli(*args, env=env, timeout=600)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console[-40:])
    assert not [line for line in console if "Warning" in line], [line for line in console if "Warning" in line]
    # Progress bars redraw in place (carriage returns; tqdm repaints a closing bar), so they are checked for
    # presence below, and every other line must not repeat the one before it.
    lines = [line for line in console if line.strip() and "step/s" not in line]
    repeats = [a for a, b in zip(lines, lines[1:]) if a == b]
    assert not repeats, repeats
    assert sum("[ynat-ray] epoch 1/2:" in line for line in console) == 1, "worker lines must reach the console once"
    assert any("epoch 2/2" in line and "samples/s" in line and "step" in line for line in console), "progress for every epoch"
    # Not a terminal (captured, as in `ray job logs` or CI): plain progress lines, at most one per ~10 % of an epoch.
    progress = [line for line in console if "[ynat-ray] epoch 1/2 step" in line]
    assert 1 <= len(progress) <= 11, progress
    assert not [line for line in console if "Starting execution of Dataset" in line], "Ray Data INFO is off without --verbose"
    assert not [line for line in console if "Reporting training result" in line], "Ray Train's per-rank INFO is off without --verbose"
    assert any(line.startswith("checkpoint ") for line in console) and any("macro-F1" in line for line in console)
