"""Shared fixtures: ONE real local Ray cluster for the whole session, and one trained checkpoint.

Why `ray start --head` instead of `ray.init()`: the same cluster then serves the in-process tests
(ray.init(address=...)), Serve's HTTP tests, and `ray job submit` tests, with token auth ON as Ray
2.60 sets it up for new clusters. Starting one cluster instead of several keeps a 2-core CI machine
from starving itself.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests never reach the Hugging Face hub; set before any HF library is imported so failures are immediate.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Ray fixes its auth mode when it is first imported, and collecting a test module may import it (through
# ynat_ray): set token auth, which the session cluster uses, before any test module is imported.
os.environ["RAY_AUTH_MODE"] = "token"
# One token for every cluster of the session (the multi-node one and the `ray start` one), as a real cluster's nodes
# share theirs: Ray reads the token once per process, so a second token would lock this process out of the second cluster.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

TRAINED_MAX_LENGTH = 48
CLUSTER_CPUS = 2  # what this project's CI and a small laptop have; do not inflate it to hide deadlocks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Multi-node tests first: their cluster (head + 2 workers) is torn down before the session's one-node cluster
    starts, so the two never share the 2 CPUs."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("multinode") else 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    address: str  # GCS address for ray.init
    dashboard_url: str  # for `ray job submit --address`
    temp_dir: str
    env: dict[str, str]  # environment for subprocesses that talk to this cluster (RAY_AUTH_MODE=token)


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    temp_dir = tmp_path_factory.mktemp("ray")
    # Ray's session folder lives in a unix-socket path; keep it short.
    short = Path("/tmp") / f"ynat-ray-{os.getpid()}"
    short.mkdir(exist_ok=True)
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [
        _ray_bin(), "start", "--head", f"--port={port}", f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1",
        f"--num-cpus={CLUSTER_CPUS}", "--num-gpus=0", f"--temp-dir={short}", "--include-dashboard=true", "--disable-usage-stats",
        # Free ports, not Ray's fixed defaults: with another Ray instance on the machine (a developer's, a
        # benchmark's) the job agent could not bind 52365, and `ray job submit` failed with "No available agent".
        f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=180)
    cluster = Cluster(address=f"127.0.0.1:{port}", dashboard_url=f"http://127.0.0.1:{dash}", temp_dir=str(temp_dir), env=env)
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        yield cluster
    finally:
        subprocess.run([_ray_bin(), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session(ray_cluster: Cluster):
    """This process connected to the session cluster as a driver."""
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    try:
        yield ray_cluster
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def trained(ray_session: Cluster, storage: str):
    """One real 2-worker TorchTrainer fit on a small slice of the embedded data, shared by later tests."""
    from ynat_ray.config import TrainConfig
    from ynat_ray.train import run_training

    cfg = TrainConfig.of(
        max_length=TRAINED_MAX_LENGTH,  # not the default: every inference path must read it back from the checkpoint
        max_train_samples=2000,
        max_eval_samples=300,
        epochs=3,
        num_workers=2,
        batch_size=8,
        # 2,000 rows is a fifth of the data the tuned preset recipe (docs/tuning.md) was chosen on; its strong
        # dropout would make this short run learn slowly, so the slice keeps the gentler pre-tuning values.
        learning_rate=1e-3,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        storage_path=storage,
        log_every=0,
        materialize="no",
    )
    started = time.time()
    outcome = run_training(cfg)
    outcome.wall_s = time.time() - started  # type: ignore[attr-defined]
    return outcome


@pytest.fixture(scope="session")
def checkpoint_dir(trained) -> str:
    """A Hugging Face directory written by a real training run."""
    return trained.best_checkpoint
