"""The cluster path, run for real: a head and two worker nodes (each its own raylet, `ray.cluster_utils.Cluster`,
as Ray's own Train/Data/Serve tests do) and an S3 API on loopback (moto's threaded server).

How a user would run it, and nothing patched inside the product:
- The S3 endpoint reaches every process the way a user gives a MinIO or other on-prem endpoint: AWS_ENDPOINT_URL and
  credentials in the nodes' environment (botocore, s3fs and pyarrow all read them). The product only sees `s3://` URIs.
- Work goes in through the public entry points: `ray job submit ... jobs/*.py` to the cluster's dashboard, and the
  `ynat-ray` commands with RAY_ADDRESS. Token auth stays on (RAY_AUTH_TOKEN, as a cluster's nodes would share it).
- Every node has 1 CPU (the cluster that hung for 13 minutes before the CPU plan learnt per-node capacity), and a
  custom resource naming it (`head`, `worker`), so a test can tell where work ran.
- Ports: these nodes share one machine, so Serve runs its ingress on the head only (`--proxy_location HeadOnly`);
  a real cluster keeps the default (one HAProxy per node, `--host 0.0.0.0`, a load balancer in front): docs/cluster.md.

These tests run first (conftest orders them) and tear their cluster down before the session's one-node cluster starts,
so the two never compete for the 2 CPUs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

REPO = Path(__file__).resolve().parents[1]
BUCKET = "ynat"
NODE_CPUS = 1
TRAIN_ARGS = ["--max_train_samples", "1500", "--max_eval_samples", "200", "--batch_size", "32", "--log_every", "0"]


@dataclass
class MultiNode:
    cluster: Any  # ray.cluster_utils.Cluster
    dashboard_url: str
    env: dict[str, str]  # for subprocesses: token, S3 endpoint, RAY_ADDRESS, the venv first on PATH
    temp_dir: str
    workers: list[Any] = field(default_factory=list)
    added: int = 0

    def add_worker(self) -> Any:
        # Each raylet its own runtime-env folder: nodes of one machine share the session folder, and one node's agent
        # would otherwise replace the job's working dir under another node's running driver.
        self.added += 1
        node = self.cluster.add_node(num_cpus=NODE_CPUS, resources={"worker": 1}, runtime_env_dir_name=f"runtime_resources_w{self.added}")
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def remove_worker_on(self, node_id: str) -> None:
        """Kill every process of the worker node `node_id` (a lost machine), then wait until Ray has noticed."""
        node = next(n for n in self.workers if n.node_id == node_id)
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def node_names(self) -> dict[str, str]:
        """node id -> 'head' | 'worker' (by the custom resource each node was given)."""
        out = {self.cluster.head_node.node_id: "head"}
        out.update({n.node_id: "worker" for n in self.workers})
        return out


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    """A real S3 API on loopback; its endpoint and credentials go into this process's environment, which the
    cluster's raylets (and so every worker) inherit, as nodes of a real cluster get theirs."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per S3 request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION")
    names += ("AWS_EC2_METADATA_DISABLED",)
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
    )  # fmt: skip
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def multinode(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    from ray.cluster_utils import Cluster

    assert os.environ.get("RAY_AUTH_TOKEN"), "conftest sets the session's token (Ray reads it once per process)"
    os.makedirs("/tmp/ray", exist_ok=True)  # Cluster writes the head's address there (for RAY_ADDRESS=auto)
    temp_dir = f"/tmp/ynat-mn-{os.getpid()}"  # Ray's session folder holds unix sockets: keep the path short
    dashboard = free_port()
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": NODE_CPUS, "resources": {"head": 1}, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard, "temp_dir": temp_dir, "runtime_env_dir_name": "runtime_resources_head",
        },
    )  # fmt: skip
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_ADDRESS": cluster.address,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    mn = MultiNode(cluster, f"http://127.0.0.1:{dashboard}", env, temp_dir)
    mn.add_worker()
    mn.add_worker()
    try:
        yield mn
    finally:
        cluster.shutdown()
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)  # the head's address, written by Cluster; gone with it
        subprocess.run(["rm", "-rf", temp_dir], check=False)


# ---- helpers ----------------------------------------------------------------------------------------------


def submit(mn: MultiNode, *args: str, wait: bool = True, timeout: int = 600) -> subprocess.CompletedProcess | subprocess.Popen:
    """`ray job submit --working-dir <repo> -- python <args>`, the driver pinned to the head by its custom resource."""
    cmd = [
        str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", mn.dashboard_url, "--working-dir", str(REPO),
        "--entrypoint-resources", json.dumps({"head": 0.01}), "--", "python", *args,
    ]  # fmt: skip
    env = {k: v for k, v in mn.env.items() if k != "RAY_ADDRESS"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def cli(mn: MultiNode, *args: str, timeout: int = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ynat_ray.cli", *args], capture_output=True, text=True, timeout=timeout, env=mn.env, cwd=cwd
    )


def actor_nodes(mn: MultiNode, class_name: str) -> list[tuple[str, str]]:
    """(node id, state) of every actor of `class_name` the cluster has had (the state API keeps dead ones)."""
    from ray.util.state import list_actors

    actors = list_actors(address=mn.dashboard_url, filters=[("class_name", "=", class_name)], limit=10_000, raise_on_missing_output=False)
    return [(a.node_id, a.state) for a in actors]


def train_workers(mn: MultiNode) -> dict[str, str]:
    """actor id -> node id of every Ray Train worker the cluster has had."""
    from ray.util.state import list_actors

    only = [("class_name", "=", "RayTrainWorker")]
    found = list_actors(address=mn.dashboard_url, filters=only, limit=10_000, raise_on_missing_output=False)
    return {a.actor_id: a.node_id for a in found}


def s3_keys(s3: Any, prefix: str) -> list[str]:
    keys, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def printed_checkpoint(output: str) -> str:
    match = re.search(r"^checkpoint\s+(\S+)", output, re.M)
    assert match, output[-3000:]
    return match.group(1)


# ---- 1. training across nodes into S3 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_run(multinode: MultiNode, s3: Any) -> dict[str, Any]:
    """`jobs/train.py` through `ray job submit`: 2 workers forced onto 2 nodes, storage in S3."""
    started = time.monotonic()
    done = submit(
        multinode, "jobs/train.py", "--storage_path", f"s3://{BUCKET}/runs", "--run_name", "mn-train", "--num_workers", "2",
        "--placement_strategy", "STRICT_SPREAD", "--epochs", "2", *TRAIN_ARGS,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return {"stdout": done.stdout, "seconds": time.monotonic() - started, "workers": actor_nodes(multinode, "RayTrainWorker")}


def test_train_job_across_two_nodes_into_s3(multinode: MultiNode, s3: Any, s3_run: dict[str, Any], tmp_path: Path) -> None:
    names = multinode.node_names()
    nodes = {node for node, _ in s3_run["workers"]}
    assert len(s3_run["workers"]) == 2 and len(nodes) == 2, f"2 Train workers on 2 different nodes, got {s3_run['workers']}"
    print(f"\n[multinode] train job: {s3_run['seconds']:.0f} s; workers on {sorted(names.get(n, n[:8]) for n in nodes)}")

    best = printed_checkpoint(s3_run["stdout"])
    assert best.startswith(f"s3://{BUCKET}/runs/mn-train/checkpoint_"), best
    keys = s3_keys(s3, "runs/mn-train/")
    assert any(k.endswith("/model.safetensors") for k in keys) and any(k.endswith("/onnx/model.int8.onnx") for k in keys)
    for name in ("final_metrics.json", "metrics_history.json", "learning_curve.png", "confusion_matrix.png"):
        assert f"runs/mn-train/artifacts/{name}" in keys, (name, keys)
    # Nothing under a local results directory: not in ~/ynat_ray_results, not beside the job (its working dir in the
    # nodes' runtime-env folders), not in ./ynat_ray_artifacts. (Ray Train's own scratch, <session>/artifacts, is Ray's.)
    session = Path(multinode.temp_dir)
    local = [p for p in (Path.home() / "ynat_ray_results").glob("mn-train*")]
    ours = [p for p in session.rglob("*") if "mn-train" in p.name or p.name == "ynat_ray_artifacts"]
    local += [p for p in ours if "artifacts" not in p.relative_to(session).parts[1:2]]
    assert not local, local

    # The printed URI is what users pass on: evaluate reads it from S3 ...
    out = cli(multinode, "evaluate", "--checkpoint", best, "--max_eval_samples", "100", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout)["num_rows"] == 100
    assert not list(tmp_path.iterdir()), "evaluate wrote into the working directory"
    # ... and, downloaded, it is a plain Hugging Face directory for pipeline().
    import fsspec
    from transformers import pipeline

    fs, path = fsspec.core.url_to_fs(best)
    fs.get(path, str(tmp_path / "ckpt"), recursive=True)
    pipe = pipeline("text-classification", model=str(tmp_path / "ckpt"))
    pred = pipe("삼성전자 2분기 영업이익 8조 돌파")
    assert isinstance(pred[0]["label"], str) and 0 < pred[0]["score"] <= 1


# ---- 2. losing a node during training -------------------------------------------------------------------------


def test_train_job_survives_losing_a_workers_node(multinode: MultiNode, s3: Any) -> None:
    run = "mn-node-loss"
    started = time.monotonic()
    job = submit(
        multinode, "jobs/train.py", "--storage_path", f"s3://{BUCKET}/runs", "--run_name", run, "--num_workers", "2",
        "--placement_strategy", "STRICT_SPREAD", "--epochs", "4", "--max_failures", "3", *TRAIN_ARGS, "--batch_size", "8", wait=False,
    )  # fmt: skip
    assert isinstance(job, subprocess.Popen)
    try:
        # Ray Train writes this snapshot once it has registered a checkpoint (an uploaded folder alone may not be yet).
        snapshot = f"runs/{run}/checkpoint_manager_snapshot.json"
        wait_for(lambda: snapshot in s3_keys(s3, f"runs/{run}/"), 300, "the first registered checkpoint in S3")
        head = multinode.cluster.head_node.node_id
        alive = [n for n, state in actor_nodes(multinode, "RayTrainWorker") if state == "ALIVE" and n != head]
        assert alive, "a Train worker on a worker node"
        lost_at = time.monotonic()
        multinode.remove_worker_on(alive[0])
        multinode.add_worker()  # the replacement (an autoscaler would add it); the run may also finish on what is left
        out, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-5000:]
    history = json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{run}/artifacts/metrics_history.json")["Body"].read())
    epochs = [h["epoch"] for h in history]
    assert epochs == [1, 2, 3, 4], f"no gap, no duplicate: {epochs}"
    resumed = [h["resumed_from_epoch"] for h in history]
    assert resumed[0] == 0 and max(resumed) >= 1, f"a restarted worker group resumed from S3: {resumed}"
    assert "resumed from the checkpoint of epoch" in out
    print(f"\n[multinode] node loss: node removed {lost_at - started:.0f} s into the job, run finished {time.monotonic() - lost_at:.0f} s "
          f"later; epochs {epochs}, resumed_from_epoch {resumed}")  # fmt: skip


# ---- 3. Serve across nodes from S3 ------------------------------------------------------------------------------


def test_serve_across_nodes_from_s3_survives_losing_a_replicas_node(multinode: MultiNode, s3_run: dict[str, Any]) -> None:
    import httpx

    best = printed_checkpoint(s3_run["stdout"])
    port = free_port()
    args = [
        "serve", "--checkpoint", best, "--port", str(port), "--proxy_location", "HeadOnly", "--max_replicas_per_node", "1",
        "--min_replicas", "2", "--max_replicas", "2", "--replica_cpus", "0.5", "--health_check_period_s", "2",
    ]  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "ynat_ray.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=multinode.env, cwd=REPO, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(server.stdout.readline, "")), daemon=True).start()  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: any("[ynat-ray] serving" in line for line in lines) or server.poll() is not None, 300, "the server")
        assert server.poll() is None, "".join(lines)[-4000:]
        assert any("via haproxy" in line and "bound to 0.0.0.0" in line for line in lines), "".join(lines)[-3000:]
        assert not [line for line in lines if "won't accept connections from HAProxy" in line]

        def replicas() -> dict[str, str]:
            seen: dict[str, str] = {}
            for _ in range(40):
                info = httpx.get(f"{base}/info", timeout=10).json()
                seen[info["replica_id"]] = info["node_id"]
            return seen

        seen = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(replicas()), 120, "answers from both replicas")
        assert len(set(seen.values())) == 2, f"2 replicas on 2 nodes: {seen}"

        # Steady load (one request at a time, as a client with a retry budget of zero sees it), then lose a replica's node.
        results: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        resp = client.post(f"{base}/predict", json={"inputs": "코스피 외국인 매수에 상승 마감"})
                        results.append((time.monotonic(), resp.status_code, resp.headers.get("x-replica-id", "")))
                    except httpx.HTTPError as err:
                        results.append((time.monotonic(), 0, type(err).__name__))

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(3)
        victim = next(r for r, node in seen.items() if node != multinode.cluster.head_node.node_id)
        lost_at = time.monotonic()
        multinode.remove_worker_on(seen[victim])
        multinode.add_worker()
        # Recovered: a replica that was not there before answers (Serve replaced the lost one on a live node).
        wait_for(lambda: any(code == 200 and rid not in seen for t, code, rid in results if t > lost_at), 180, "a replacement replica")
        time.sleep(3)
        stop.set()
        loader.join(timeout=60)
        after = [r for r in results if r[0] > lost_at]
        failed = [r for r in after if r[1] != 200]
        recovered = min(t for t, code, rid in after if code == 200 and rid not in seen) - lost_at
        window = (max(t for t, *_ in failed) - lost_at) if failed else 0.0
        print(f"\n[multinode] serve failover: {len(results)} requests, {len(failed)} failed after the node loss "
              f"(last {window:.1f} s after it), replacement replica answering {recovered:.1f} s after it")  # fmt: skip
        assert len(failed) <= 5, failed
        assert all(code in (200, 503) for _, code, _ in after if code), after  # never a 5xx other than a JSON 503 retry hint

        # SIGTERM, as docker stop / systemd / Kubernetes send it: drain, stop Serve, exit 0, no Ray stack dump.
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(timeout=120) == 0, "".join(lines)[-3000:]
        console = "".join(lines)
        assert "SIGTERM: draining and shutting down Serve" in console and "*** SIGTERM received" not in console, console[-3000:]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


# ---- 4. batch prediction across nodes, S3 in and out ---------------------------------------------------------

INPUT_FILES, ROWS_PER_INPUT = 3, 3000


@pytest.fixture(scope="module")
def s3_inputs(s3: Any) -> str:
    """3 JSON-lines files of real YNAT titles (9,000 rows) under s3://ynat/news/."""
    from ynat_ray.data.sources import embedded_split

    rows = embedded_split("train").head(INPUT_FILES * ROWS_PER_INPUT)
    for i in range(INPUT_FILES):
        part = rows.iloc[i * ROWS_PER_INPUT : (i + 1) * ROWS_PER_INPUT][["guid", "title", "label"]]
        body = part.to_json(orient="records", lines=True, force_ascii=False).encode("utf-8")
        s3.put_object(Bucket=BUCKET, Key=f"news/part-{i}.jsonl", Body=body)
    return f"s3://{BUCKET}/news/"


def read_predictions(uri: str) -> Any:
    import pandas as pd

    return pd.read_parquet(uri)  # s3fs, with the same endpoint from the environment


def batch_args(best: str, inputs: str, output: str, *more: str) -> list[str]:
    return ["--checkpoint", best, "--input", inputs, "--output", output, "--rows_per_file", "300", "--eval_batch_size", "8", *more]


def test_batch_job_across_nodes_from_s3_to_s3_survives_losing_a_node(
    multinode: MultiNode, s3: Any, s3_run: dict[str, Any], s3_inputs: str
) -> None:
    best = printed_checkpoint(s3_run["stdout"])
    output = f"s3://{BUCKET}/preds/"
    started = time.monotonic()
    args = batch_args(best, s3_inputs, output, "--num_actors", "2", "--actor_cpus", "0.75")
    job = submit(multinode, "jobs/predict.py", *args, wait=False)
    assert isinstance(job, subprocess.Popen)
    try:
        wait_for(lambda: any(k.endswith(".parquet") for k in s3_keys(s3, "preds/")), 300, "the first output file")

        def predictors_on_two_nodes() -> list[str]:
            """ALIVE predictor actors' nodes, once there are two nodes: Ray Data starts writing as soon as one actor
            of the pool is ready, so on a slow machine the second may still be loading the checkpoint."""
            alive = [n for n, state in actor_nodes_like(multinode, "MapBatches(Predictor)") if state == "ALIVE"]
            return alive if len(set(alive)) == 2 else []

        predictors = wait_for(predictors_on_two_nodes, 120, "2 predictor actors on 2 nodes")
        victim = next(n for n in predictors if n != multinode.cluster.head_node.node_id)
        assert job.poll() is None, "the job ended before a node could be taken away"
        lost_at = time.monotonic()
        multinode.remove_worker_on(victim)
        multinode.add_worker()
        out, _ = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-5000:]
    frame = read_predictions(output)
    assert len(frame) == INPUT_FILES * ROWS_PER_INPUT and frame["row_id"].is_unique, "every input row written exactly once"
    assert f"{INPUT_FILES * ROWS_PER_INPUT} written of {INPUT_FILES * ROWS_PER_INPUT} read" in out
    print(f"\n[multinode] batch: predictors on 2 nodes, one node removed {lost_at - started:.0f} s in; {len(frame)} rows in, "
          f"{len(frame)} out, each once; job took {time.monotonic() - started:.0f} s")  # fmt: skip


def actor_nodes_like(mn: MultiNode, text: str) -> list[tuple[str, str]]:
    """(node id, state) of every actor whose class name contains `text` (Ray Data names actor-pool workers after the UDF)."""
    from ray.util.state import list_actors

    actors = list_actors(address=mn.dashboard_url, limit=10_000, raise_on_missing_output=False)
    return [(a.node_id, a.state) for a in actors if text in (a.class_name or "")]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_predict_batch_resumes_without_redoing_rows(
    multinode: MultiNode, s3: Any, s3_run: dict[str, Any], s3_inputs: str, tmp_path: Path, where: str
) -> None:
    import fsspec

    best = printed_checkpoint(s3_run["stdout"])
    output = str(tmp_path / "preds") if where == "local" else f"s3://{BUCKET}/resume/"
    fs, root = fsspec.core.url_to_fs(output)
    args = [sys.executable, "-m", "ynat_ray.cli", "predict-batch", *batch_args(best, s3_inputs, output, "--num_actors", "1")]

    def written() -> dict[str, int]:
        fs.invalidate_cache()
        return {p: fs.size(p) for p in fs.find(root) if p.endswith(".parquet")} if fs.exists(root) else {}

    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=multinode.env, cwd=tmp_path,
                             start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: len(written()) >= 2 or first.poll() is not None, 300, "two committed output files")
        assert first.poll() is None, first.communicate()[0][-3000:]
        os.killpg(first.pid, signal.SIGKILL)  # the driver dies at once: no cleanup, no finally
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    time.sleep(2)
    before = written()
    assert 0 < len(before) < INPUT_FILES * ROWS_PER_INPUT / 300, before

    again = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=multinode.env, cwd=tmp_path)
    try:
        rerun, _ = again.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        again.kill()
        ray_bin = str(Path(sys.executable).with_name("ray"))
        status = subprocess.run([ray_bin, "status", "-v"], capture_output=True, text=True, env=multinode.env)
        raise AssertionError(again.communicate()[0][-5000:] + status.stdout[-4000:]) from None
    assert again.returncode == 0, rerun[-5000:]
    assert "resuming" in rerun
    after = written()
    kept = {p: n for p, n in before.items() if after.get(p) == n}
    frame = read_predictions(output) if where == "s3" else __import__("pandas").read_parquet(output)
    assert len(frame) == INPUT_FILES * ROWS_PER_INPUT and frame["row_id"].is_unique, "every row exactly once"
    kept_rows = sum(len(read_predictions(f"s3://{p}") if where == "s3" else __import__("pandas").read_parquet(p)) for p in kept)
    assert kept_rows > 0, f"files committed by the killed run are kept, not redone: before {before}, after {after}"
    assert not fs.exists(root.rstrip("/") + ".in-progress.json"), "a finished run is no longer marked in progress"
    print(f"\n[multinode] resume ({where}): killed after {len(before)} file(s); the rerun kept {len(kept)} file(s) "
          f"({kept_rows} rows) and wrote the other {len(frame) - kept_rows} rows once")  # fmt: skip


# ---- 5. Tune on the cluster ---------------------------------------------------------------------------------------


def test_tune_job_on_the_cluster_into_s3(multinode: MultiNode, s3: Any) -> None:
    space = "model: ynat-bigram\nepochs: 2\nlearning_rate: {loguniform: [1.0e-3, 3.0e-3]}\n"
    s3.put_object(Bucket=BUCKET, Key="spaces/small.yaml", Body=space.encode())
    earlier = set(train_workers(multinode))  # Train workers of the tests before this one
    started = time.monotonic()
    done = submit(
        multinode, "jobs/tune.py", "--space", f"s3://{BUCKET}/spaces/small.yaml", "--storage_path", f"s3://{BUCKET}/tune",
        "--run_name", "mn-tune", "--num_samples", "2", "--grace_period", "1", "--num_workers", "2", "--placement_strategy",
        "STRICT_SPREAD", "--max_train_samples", "800", "--max_eval_samples", "100", "--log_every", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    keys = s3_keys(s3, "tune/mn-tune/")
    for name in ("results.csv", "trials.png", "best.yaml"):
        assert f"tune/mn-tune/{name}" in keys, (name, [k for k in keys if k.count("/") <= 2])
    from ynat_ray.config import load_config_file

    best = load_config_file(f"s3://{BUCKET}/tune/mn-tune/best.yaml")  # what `ynat-ray train --config s3://...` reads
    assert best["epochs"] == 2 and 1e-3 <= best["learning_rate"] <= 3e-3
    names = multinode.node_names()
    trials = {a: n for a, n in train_workers(multinode).items() if a not in earlier}
    assert len(trials) == 4 and len(set(trials.values())) >= 2, f"2 trials x 2 workers, each trial's on 2 nodes: {trials}"
    assert "worker" in {names.get(n) for n in trials.values()}, trials
    print(f"\n[multinode] tune: 2 trials in {time.monotonic() - started:.0f} s; their 4 Train workers on "
          f"{sorted(names.get(n, n[:8]) for n in trials.values())}; results.csv, trials.png, best.yaml in S3")  # fmt: skip


# ---- a CPU plan the nodes cannot hold: one line, not a silent hang ------------------------------------------------


def test_a_plan_no_node_can_hold_stops_with_one_line(multinode: MultiNode, tmp_path: Path) -> None:
    started = time.monotonic()
    out = cli(multinode, "train", "--cpus_per_worker", "1.5", "--num_workers", "1", "--placement_timeout_s", "5",
              "--storage_path", f"s3://{BUCKET}/runs", *TRAIN_ARGS, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("ynat-ray: error:")]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    for part in ("could not be placed within 5 s", "node(s) with 1, 1, 1 CPU", "{'CPU': 1.5}"):
        assert part in errors[0], errors[0]
    assert time.monotonic() - started < 120
