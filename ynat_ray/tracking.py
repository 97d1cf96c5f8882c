"""MLflow tracking for `ynat-ray train` and `ynat-ray tune`: the one module that calls MLflow.

Why not Ray's `MLflowLoggerCallback`: Train V2 rejects that V1 callback (ray-project/ray#64179), it opened a second
run after a failure restart (#48664), and nested config dicts crashed its `log_params` (#33246). Ray's
experiment-tracking guide calls MLflow from the training function on rank 0; this module does that, with the run
owned by the driver:

  driver, before fit():  resolve the store -> create the run (or find it again: a reused run name is a Ray resume)
                         -> log the flat config as params -> the run's {uri, run_id} goes into the run spec, which
                         every worker receives and every checkpoint records
  rank 0, every epoch:   one `log_batch` to that run id at step = epoch. A restarted worker group gets the same
                         config, so the same run: one MLflow run per training run, however often Train restarts it
  driver, at the end:    run spec, artifacts, test metrics, the best checkpoint as an MLflow `transformers` model
                         with its ONNX export beside it; FINISHED, or FAILED when the run raised
  tune:                  a parent run per search; each trial's training run is its child (`mlflow.parentRunId`); the
                         tune driver records ASHA's verdict on each child and attaches best.yaml, results.csv, trials.png

Every call names its tracking URI (`MlflowClient(uri)`, no global active run), so one process can hold several runs
(a Tune driver, a test session) and nothing depends on MLflow globals set elsewhere. mlflow is imported lazily:
`--tracking_uri none` costs no import.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ynat_ray.config import is_uri, local_path
from ynat_ray.errors import YnatError

EXPERIMENT = "ynat-ray"  # MLFLOW_EXPERIMENT_NAME overrides it, as it does for any MLflow client
OFF = "none"
STORE_FILE = "mlflow.db"  # the embedded store: SQLite (MLflow 3 refuses new file stores)
ARTIFACTS_DIR = "mlartifacts"  # the embedded store's artifacts, beside its database
MODEL_NAME = "model"
RUN_NAME_TAG = "ynat.run_name"  # the Ray run name: the key a resumed run is found by
TRIAL_TAG = "ynat.trial"
STATUS_TAG = "ynat.status"  # a trial's end as the Tune table says it: finished, stopped early (ASHA), error
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests children under their parent
EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "train_samples_per_s", "epoch_time_s")
# A trial's status (tune.trial_table) -> the MLflow run status it ends with.
RUN_STATUS = {"finished": "FINISHED", "stopped early (ASHA)": "KILLED", "error": "FAILED"}
CREDENTIALS_PREFIX = "MLFLOW_TRACKING_"  # USERNAME/PASSWORD/TOKEN/INSECURE_TLS/...: what a server may need
BATCH_LIMIT = 100  # MLflow's most params (and tags) per log_batch request
EXAMPLE_TITLE = "코스피 외국인 매수에 상승 마감"


class TrackingError(YnatError):
    """A tracking URI or server that cannot be used; the message says which and how to go on."""


@dataclass(frozen=True)
class TrackedRun:
    """Where one MLflow run lives. Plain strings: it travels to workers and Tune trials, and into the run spec."""

    uri: str
    run_id: str
    experiment_id: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def client(self) -> Any:
        return _client(self.uri)

    def where(self) -> str:
        """How a person opens the run: its page on a server, or the `mlflow ui` command for a local store."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"mlflow ui --backend-store-uri {self.uri}  (run {self.run_id})"


# ---------------------------------------------------------------------------------------------
# Which store


def resolve_uri(flag: str | None, storage: str) -> str | None:
    """The tracking URI of a run or search; None when tracking is off.

    --tracking_uri, else MLFLOW_TRACKING_URI (what an MLflow user has already set), else an embedded SQLite store in
    the storage folder, shared by the runs stored there, so `mlflow ui` compares them. Object storage (s3://) cannot
    hold a SQLite file, and a file on the driver's disk is out of reach of a rank 0 on another node: there the default
    is off, with one line saying how to turn it on.
    """
    value = (flag or os.environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if value.lower() == OFF:
        return None
    if value:
        if "://" not in value and not value.startswith("databricks"):
            raise TrackingError(
                f"--tracking_uri {value!r}: expected http(s)://HOST:PORT, sqlite:////PATH/mlflow.db, another MLflow store URI, or 'none'"
            )
        return value
    if is_uri(storage):
        print(
            f"[ynat-ray] MLflow tracking off: {storage} cannot hold an embedded store; pass --tracking_uri http://HOST:5000 "
            "to track this run (docs/cluster.md)",
            flush=True,
        )
        return None
    return "sqlite:///" + os.path.join(os.path.abspath(local_path(storage)), STORE_FILE)


def worker_env() -> dict[str, str]:
    """The driver's MLFLOW_TRACKING_* credentials (user, password, token, TLS), for the runtime_env of the processes
    that log (Train workers, Tune trials): Ray does not pass a driver's environment on, and Ray's tracking guide
    hands credentials over exactly this way. The URI itself travels in the run spec."""
    return {k: v for k, v in os.environ.items() if k.startswith(CREDENTIALS_PREFIX) and k != "MLFLOW_TRACKING_URI"}


def _client(uri: str) -> Any:
    _quiet()
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _quiet() -> None:
    """MLflow logs INFO to the console ("Creating initial MLflow database tables...", "View run at ..."): noise in a
    training log. WARNING unless the user chose a level with MLflow's own MLFLOW_LOGGING_LEVEL."""
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def _check_reachable(uri: str) -> None:
    """A server that does not answer is a one-line error now, not MLflow's minutes of retries and a traceback.
    A server with its own TLS setup (MLFLOW_TRACKING_INSECURE_TLS, _SERVER_CERT_PATH) is left to MLflow's client."""
    custom_tls = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS") or os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    if not uri.startswith(("http://", "https://")) or custom_tls:
        return
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=10)
    except httpx.HTTPError as err:
        raise TrackingError(
            f"MLflow tracking server {uri} does not answer ({type(err).__name__}: {err}); start it, fix --tracking_uri, "
            "or pass --tracking_uri none"
        ) from None


def _experiment_id(client: Any, uri: str) -> str:
    """The experiment's id, created on first use; an embedded store keeps its artifacts beside its database (MLflow's
    default would be ./mlruns under whatever folder the command ran in)."""
    from mlflow.exceptions import MlflowException

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process (concurrent Tune trials)
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ---------------------------------------------------------------------------------------------
# Driver: open and close a run


def start_run(
    flag: str | None, storage: str, run_name: str, params: dict[str, Any], parent: TrackedRun | None = None,
    tags: dict[str, str] | None = None,
) -> TrackedRun | None:  # fmt: skip
    """Open the MLflow run of a training run or search before anything trains; None when tracking is off.

    A run name that already has a run (`ynat-ray train --run_name <same>`, which Ray resumes, or a Tune trial retried)
    reopens that run instead of starting a second one.
    """
    uri = resolve_uri(flag, storage)
    if uri is None:
        return None
    _check_reachable(uri)
    from mlflow.exceptions import MlflowException

    try:
        client = _client(uri)
        experiment = _experiment_id(client, uri)
        found = client.search_runs([experiment], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
        if found:
            run_id = found[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            tags = {RUN_NAME_TAG: run_name, **({PARENT_TAG: parent.run_id} if parent else {}), **(tags or {})}
            run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
        _log_params(client, run_id, params)
    except MlflowException as err:
        raise TrackingError(f"MLflow tracking store {uri}: {err.message}") from None
    print(f"[ynat-ray] MLflow run {run_id}{' (reopened)' if found else ''} in {uri}", flush=True)
    return TrackedRun(uri, run_id, experiment)


def flat_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"train": {"learning_rate": 0.001}}` -> `{"train.learning_rate": "0.001"}`. MLflow params are flat strings;
    a nested dict is what crashed Ray's callback (ray#33246), and None must be a value a person can read."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log the params a run does not have yet. MLflow refuses to change a param, so a resumed run keeps its first
    values and says which ones the new command would have changed."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    values = {k: str(v) for k, v in params.items()}
    changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
    if changed:
        print(f"[ynat-ray] MLflow run {run_id} keeps its first values of {', '.join(changed)} (MLflow params never change)", flush=True)
    fresh = [Param(k, v) for k, v in values.items() if k not in logged]
    for start in range(0, len(fresh), BATCH_LIMIT):
        client.log_batch(run_id, params=fresh[start : start + BATCH_LIMIT])


@contextmanager
def run_scope(run: TrackedRun | None) -> Iterator[None]:
    """Close `run` when the block ends: FINISHED, or FAILED when it raised (then the error goes on)."""
    if run is None:
        yield
        return
    try:
        yield
    except BaseException as err:
        _terminate(run, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    _terminate(run, "FINISHED")


def _terminate(run: TrackedRun, status: str) -> None:
    """Set the run's end status; a store that fails now gets one line, never hides the run's own error."""
    from mlflow.exceptions import MlflowException

    try:
        run.client().set_terminated(run.run_id, status)
    except MlflowException as err:
        print(f"[ynat-ray] MLflow: run {run.run_id} not marked {status} ({err.message})", flush=True)


# ---------------------------------------------------------------------------------------------
# Rank 0: one batch of metrics per epoch


def log_epoch(tracking: dict[str, str] | None, metrics: dict[str, Any]) -> None:
    """Rank 0, once per epoch: the epoch's metrics at step = epoch. A store that fails here costs this epoch's points
    in MLflow, not the training run: one line says so and training goes on."""
    if not tracking:
        return
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    run, now = TrackedRun(**tracking), int(time.time() * 1000)
    batch = [Metric(k, float(metrics[k]), now, int(metrics["epoch"])) for k in EPOCH_METRICS if isinstance(metrics.get(k), (int, float))]
    try:
        run.client().log_batch(run.run_id, metrics=batch)
    except MlflowException as err:
        print(f"[ynat-ray] MLflow: epoch {metrics['epoch']} not logged to run {run.run_id} ({err.message})", flush=True)


# ---------------------------------------------------------------------------------------------
# Driver, end of a training run


def log_training_outcome(
    run: TrackedRun | None, spec: dict[str, Any], artifacts_dir: str, checkpoint_dir: str, final: dict[str, Any]
) -> None:
    """Everything a training run leaves in MLflow once its best checkpoint is scored: the run spec, the artifacts
    folder (metrics history, learning curve, confusion matrix, final metrics), the test (or validation) scores and
    the best checkpoint as a model."""
    if run is None:
        return
    from mlflow.entities import Metric, RunTag

    client, split, now = run.client(), final["split"], int(time.time() * 1000)
    client.log_dict(run.run_id, spec, "run_spec.json")
    client.log_artifacts(run.run_id, artifacts_dir)
    scores = {f"{split}_accuracy": final["accuracy"], f"{split}_macro_f1": final["macro_f1"]}
    scores.update({f"{split}_f1/{label}": value for label, value in final["per_class_f1"].items()})
    tags = {"ynat.checkpoint": str(final["checkpoint"]), "ynat.best_epoch": str(final["best_epoch"])}
    client.log_batch(
        run.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in scores.items()], tags=[RunTag(k, v) for k, v in tags.items()]
    )
    log_model(run, checkpoint_dir, final)


def log_model(run: TrackedRun, checkpoint_dir: str, final: dict[str, Any]) -> str:
    """The checkpoint as an MLflow `transformers` model: `mlflow.transformers.load_model` gives back a
    text-classification pipeline with the Korean topic labels, pyfunc `predict` a label/score table. The ONNX
    exports and their parity record go into the same model's artifacts (`onnx/`). Returns the model URI."""
    import mlflow
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    from ynat_ray.checkpoint import ONNX_DIR, export_cache_dir

    hf_logging.disable_progress_bar()  # "Writing model shards" is noise in a training log
    classifier = pipeline("text-classification", model=checkpoint_dir, tokenizer=checkpoint_dir)
    with _fluent_run(run):
        info = mlflow.transformers.log_model(
            classifier, name=MODEL_NAME, task="text-classification", input_example=[EXAMPLE_TITLE],
            pip_requirements=_requirements(), model_card=_model_card(final),
        )  # fmt: skip
    onnx = export_cache_dir(checkpoint_dir)
    if os.path.isdir(onnx):
        run.client().log_model_artifacts(info.model_id, onnx, ONNX_DIR)
    return info.model_uri


@contextmanager
def _fluent_run(run: TrackedRun) -> Iterator[None]:
    """`mlflow.<flavor>.log_model` logs to the active run of the global tracking URI only. Make `run` active for the
    block, then put back what was there: `set_tracking_uri` also writes MLFLOW_TRACKING_URI into the environment,
    which would otherwise leak into this process's next run (and its subprocesses)."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(run.uri), mlflow.start_run(run_id=run.run_id):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def _requirements() -> list[str]:
    """What loads the model back: stated, because MLflow's inference of them loads the model again in a subprocess.
    torch without its local tag (+cpu), which no index serves under that name."""
    import tokenizers
    import torch
    import transformers

    versions = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
    return [f"{name}=={version}" for name, version in versions.items()]


def _model_card(final: dict[str, Any]) -> Any:
    """A short card (language, task, scores) stored with the model; without one MLflow asks the hub for the card of a
    local path, and warns twice."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(language="ko", pipeline_tag="text-classification", tags=["ynat", "klue", "ynat-ray"])
    body = (
        "# YNAT topic classifier\n\nKorean news titles -> 7 topics (KLUE YNAT), trained by ynat-ray. "
        f"Best epoch {final['best_epoch']}; {final['split']} accuracy {final['accuracy']:.4f}, macro-F1 {final['macro_f1']:.4f}.\n"
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


# ---------------------------------------------------------------------------------------------
# Tune: the parent run of a search


def attach_text(run: TrackedRun | None, text: str, name: str) -> None:
    """A small text file (a search space) as an artifact of `run`."""
    if run is not None:
        run.client().log_text(run.run_id, text, name)


def close_search(parent: TrackedRun | None, table: list[dict[str, Any]], files: list[str], metric: str) -> None:
    """The end of a search: each trial's child run gets the status the results table gives it (a trial ASHA stopped
    was killed mid-run and never closed its run: KILLED, with `ynat.status` saying why), and the parent gets the
    best score and the result files (best.yaml, results.csv, trials.png)."""
    if parent is None:
        return
    from mlflow.entities import Metric, RunTag

    client = parent.client()
    children = client.search_runs([parent.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.run_id}'")
    by_trial = {child.data.tags.get(TRIAL_TAG): child for child in children}
    for row in table:
        child = by_trial.get(row["trial"])
        if child is None:
            continue
        client.set_tag(child.info.run_id, STATUS_TAG, row["status"])
        status = RUN_STATUS.get(row["status"], "FINISHED")
        if child.info.status != status:
            client.set_terminated(child.info.run_id, status)
    for file in files:
        client.log_artifact(parent.run_id, file)
    scored = [r for r in table if r.get(metric) is not None]
    if scored:
        best = scored[0]
        now = int(time.time() * 1000)
        best_child = by_trial.get(best["trial"])
        tags = [RunTag("ynat.best_trial", best["trial"])] + ([RunTag("ynat.best_run_id", best_child.info.run_id)] if best_child else [])
        client.log_batch(parent.run_id, metrics=[Metric(f"best_{metric}", float(best[metric]), now, 0)], tags=tags)
