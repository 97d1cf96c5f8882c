"""MLflow tracking: which store a run logs to, one run per training run (also across a worker death and a resume by
name), what a run holds when read back through `MlflowClient` from a real `mlflow server`, the logged model loaded
back as a `transformers` pipeline with Korean labels, and a Tune search's parent run with one child per trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from ynat_ray.labels import LABELS
from ynat_ray.tracking import EPOCH_METRICS, PARENT_TAG, RUN_NAME_TAG, STATUS_TAG, TRIAL_TAG, TrackingError

TITLES = ["코스피 외국인 매수에 상승 마감", "손흥민 시즌 10호골", "유튜브 내달 2일까지 크리에이터 지원 공간 운영"]
RUN_FILES = {
    "run_spec.json", "metrics_history.json", "metrics_history.csv", "learning_curve.png", "confusion_matrix.png", "final_metrics.json",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Without Ray


def test_which_store_a_run_logs_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from ynat_ray.config import TrainConfig, parse_command
    from ynat_ray.tracking import resolve_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"  # embedded, beside the runs
    assert resolve_uri("none", str(tmp_path)) is None and resolve_uri("None", str(tmp_path)) is None
    assert resolve_uri("http://127.0.0.1:5000", str(tmp_path)) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")  # what an MLflow user has set
    assert resolve_uri(None, str(tmp_path)) == "http://tracking:5000"
    assert resolve_uri("none", str(tmp_path)) is None, "the flag wins over the environment"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_uri(None, "s3://bucket/runs") is None, "object storage cannot hold a SQLite store"
    assert "MLflow tracking off" in capsys.readouterr().out
    with pytest.raises(TrackingError, match="expected http"):
        resolve_uri("~/mlruns", str(tmp_path))
    cfg, _ = parse_command(TrainConfig, ["--tracking_uri", "none"])
    assert cfg.train.tracking_uri == "none"


def test_params_are_flat_strings() -> None:
    from ynat_ray.tracking import flat_params

    flat = flat_params({"data": {"seed": 42, "test_data": None}, "train": {"learning_rate": 1e-3, "nested": {"x": [1, 2]}}})
    assert flat == {"data.seed": "42", "data.test_data": "None", "train.learning_rate": "0.001", "train.nested.x": "[1, 2]"}


def test_a_reused_run_name_reopens_its_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`ynat-ray train --run_name <same>` resumes the Ray run, so it must continue the same MLflow run."""
    from mlflow import MlflowClient

    from ynat_ray.tracking import start_run

    first = start_run(None, str(tmp_path), "run-a", {"train.epochs": 2})
    first.client().set_terminated(first.run_id, "FAILED")  # the driver died
    again = start_run(None, str(tmp_path), "run-a", {"train.epochs": 4, "train.seed": 1})
    other = start_run(None, str(tmp_path), "run-b", {})
    assert again.run_id == first.run_id and other.run_id != first.run_id
    run = MlflowClient(again.uri).get_run(again.run_id)
    assert run.info.status == "RUNNING" and run.data.params == {"train.epochs": "2", "train.seed": "1"}
    assert "keeps its first values of train.epochs" in capsys.readouterr().out
    assert len(MlflowClient(again.uri).search_runs([again.experiment_id])) == 2


def test_a_server_that_does_not_answer_is_a_one_line_error(tmp_path: Path) -> None:
    from ynat_ray.tracking import start_run

    with pytest.raises(TrackingError, match="does not answer.*--tracking_uri none"):
        start_run(f"http://127.0.0.1:{free_port()}", str(tmp_path), "run", {})


def test_tracking_off_imports_no_mlflow() -> None:
    code = (
        "import sys\nimport ynat_ray.train, ynat_ray.tune\nfrom ynat_ray.tracking import start_run\n"
        "assert start_run('none', '/tmp', 'x', {}) is None\nassert not [m for m in sys.modules if m.startswith('mlflow')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# A real tracking server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on loopback with a SQLite backend and proxied artifacts (clients upload over HTTP, as a
    cluster's driver and workers would); its whole process group is stopped at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer in 180 s"
            time.sleep(0.5)
        yield url, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _only_run(client, run_name: str):
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def _check_model(client, run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's model loads back as a transformers pipeline and as pyfunc, both with Korean topic labels, and carries
    its ONNX exports and their parity record."""
    import json

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # how runs:/ and mlflow-artifacts:/ URIs resolve
    classifier = mlflow.transformers.load_model(f"runs:/{run.info.run_id}/model")
    predictions = classifier(TITLES)
    assert len(predictions) == 3 and all(p["label"] in LABELS for p in predictions), predictions
    table = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").predict(TITLES)
    assert list(table["label"]) == [p["label"] for p in predictions]
    model = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")[0]
    parity = mlflow.artifacts.download_artifacts(f"{model.artifact_location}/onnx/parity.json")
    assert json.loads(Path(parity).read_text(encoding="utf-8"))["fp32_ok"]


def _epochs(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_default_run_is_tracked_beside_it(trained, storage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's training run (no --tracking_uri): an embedded store under its storage folder, no server."""
    from mlflow import MlflowClient

    from ynat_ray.checkpoint import read_run_spec

    store = Path(storage, "mlflow.db")
    assert store.exists()
    client = MlflowClient(f"sqlite:///{store}")
    run = _only_run(client, trained.run_name)
    assert run.info.status == "FINISHED"
    assert read_run_spec(trained.best_checkpoint).mlflow["run_id"] == run.info.run_id, "the checkpoint names its run"
    params = run.data.params
    assert params["train.learning_rate"] == "0.001" and params["data.max_train_samples"] == "2000" and params["model.max_length"] == "48"
    for key in EPOCH_METRICS:
        assert _epochs(client, run.info.run_id, key) == [1, 2, 3], key
    assert run.data.metrics["test_macro_f1"] == pytest.approx(trained.final_metrics["macro_f1"])
    assert {f"test_f1/{label}" for label in LABELS} <= set(run.data.metrics)
    assert RUN_FILES <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert run.info.artifact_uri.startswith(Path(storage, "mlartifacts").as_uri()), "artifacts beside the store"
    _check_model(client, run, monkeypatch)


def test_server_run_is_one_run_across_a_worker_death(ray_session, storage: str, mlflow_server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker dies in epoch 2 and Train restarts the group: still exactly one MLflow run, holding both epochs,
    logged over HTTP to a real server, with its model loadable from it."""
    from mlflow import MlflowClient

    from ynat_ray.config import TrainConfig
    from ynat_ray.train import FAIL_AT_EPOCH_ENV, run_training

    url, root = mlflow_server
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "1")
    name = f"tracked-{uuid.uuid4().hex[:6]}"
    cfg = TrainConfig.of(
        max_train_samples=400, max_eval_samples=100, epochs=2, num_workers=2, storage_path=storage, log_every=0, max_failures=1,
        run_name=name, tracking_uri=url,
    )  # fmt: skip
    outcome = run_training(cfg)
    assert outcome.history[1]["resumed_from_epoch"] == 1, "epoch 2 must come from a restarted worker group"
    client = MlflowClient(url)
    run = _only_run(client, name)
    assert run.info.status == "FINISHED"
    assert _epochs(client, run.info.run_id, "val_macro_f1") == [1, 2] and _epochs(client, run.info.run_id, "train_loss") == [1, 2]
    assert run.data.params["data.max_train_samples"] == "400" and run.data.params["train.tracking_uri"] == url
    assert {"test_macro_f1", "test_accuracy"} <= set(run.data.metrics)
    assert RUN_FILES <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((root / "artifacts").rglob("learning_curve.png")), "artifacts went through the server"
    _check_model(client, run, monkeypatch)


def test_tune_search_is_a_parent_run_with_a_child_per_trial(ray_session, tmp_path: Path) -> None:
    """Two trials, one at a time; ASHA (grace 1, keep the best half) stops the useless learning rate after epoch 1.
    Its child run ends KILLED with ynat.status saying why; the parent holds the search's files and best score."""
    from mlflow import MlflowClient

    from ynat_ray.config import TuneConfig
    from ynat_ray.train import SCORE_METRIC
    from ynat_ray.tune import load_space, run_tune

    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        "model: ynat-tiny\nmax_train_samples: 2000\nmax_eval_samples: 200\nbatch_size: 16\nmax_length: 32\nwarmup_ratio: 0.0\n"
        "hidden_dropout: 0.1\nattention_dropout: 0.1\ntoken_dropout: 0.0\nweight_decay: 0.01\nvocab_size: 4000\n"
        "learning_rate: {grid: [1.0e-3, 1.0e-7]}\nepochs: {choice: [2]}\n",
        encoding="utf-8",
    )
    space = load_space(str(space_file))
    storage = tmp_path / "runs"
    cfg = TuneConfig.of(**space.fixed, storage_path=str(storage), num_workers=2, num_samples=1, grace_period=1)
    outcome = run_tune(cfg, space)

    client = MlflowClient(f"sqlite:///{storage}/mlflow.db")
    parent = _only_run(client, outcome.name)
    assert parent.info.status == "FINISHED" and parent.data.params["search.learning_rate"] == "grid [0.001, 1e-07]"
    assert {"best.yaml", "results.csv", "trials.png", "search_space.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.metrics[f"best_{SCORE_METRIC}"] == pytest.approx(outcome.best[SCORE_METRIC])
    children = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
    assert sorted(c.data.tags[TRIAL_TAG] for c in children) == sorted(row["trial"] for row in outcome.table)
    by_trial = {c.data.tags[TRIAL_TAG]: c for c in children}
    expected = {"finished": "FINISHED", "stopped early (ASHA)": "KILLED"}
    for row in outcome.table:
        child = by_trial[row["trial"]]
        assert child.data.tags[STATUS_TAG] == row["status"] and child.info.status == expected[row["status"]], row
        assert _epochs(client, child.info.run_id, SCORE_METRIC) == list(range(1, row["epochs_run"] + 1))
        assert child.data.params["train.learning_rate"] == str(row["learning_rate"])
    assert {row["status"] for row in outcome.table} == set(expected), outcome.table
    assert parent.data.tags["ynat.best_run_id"] == by_trial[outcome.best["trial"]].info.run_id
