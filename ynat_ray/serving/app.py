"""Start-up: a `ServeConfig` checked and turned into the Serve application, deployed, and run until stopped.

Three ways in, one builder (`build_app`):
- `ynat-ray serve` -> `run_server` (joins or starts Ray, picks the ingress, blocks until Ctrl-C or SIGTERM);
- `deploy` for Python callers (the tests, bench/) on a Ray that is already up;
- Serve's own CLI and config files (`serve run`, `serve deploy`, KubeRay) -> `app_builder`, whose typed
  argument model `ServeAppArgs` Serve fills from `args:` / `key=value`, as in Ray's `app_builder.py` docs.

No `from __future__ import annotations` here: Serve inspects `app_builder`'s annotation at runtime to find
its pydantic model, and a string annotation would hand the builder a plain dict.
"""

import os
import time
from dataclasses import asdict
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application, Deployment
from ray.serve.config import BackpressureConfig

from ynat_ray.config import ServeConfig, check_options, load_config_file, parse_command
from ynat_ray.errors import UsageError
from ynat_ray.serving.ingress import check_port_free, local_address, serve_host, serve_logging, serve_running, start_and_run, stop_serve
from ynat_ray.serving.replica import YnatServer

APP_NAME = "ynat"
# Serve lets this many requests more than max_ongoing_requests into a replica, so that the replica itself,
# not Serve's proxy, answers the overflow (with its JSON 503) while those requests are being turned away.
REJECT_HEADROOM = 64
# The replica runs its request handlers on Serve's own event loop instead of a second loop in another thread
# (Serve's default), which saves two thread hops per request. Safe here: no handler blocks its loop, since the
# model runs on the replica's compute thread (Ray's RAY_SERVE_THROUGHPUT_OPTIMIZED mode sets the same).
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def check_serving_config(cfg: ServeConfig) -> None:
    """Fail before deploying on settings Serve would accept but that cannot work as intended."""
    limits, serve_args = cfg.limits, cfg.serve
    if not cfg.engine.checkpoint:
        raise UsageError("no checkpoint: pass --checkpoint DIR (or args.checkpoint / YNAT_CHECKPOINT for `serve run`)")
    if serve_args.max_ongoing_requests * limits.max_texts_per_request < limits.max_batch_size:
        raise UsageError(
            f"max_ongoing_requests ({serve_args.max_ongoing_requests}) x max_texts_per_request ({limits.max_texts_per_request}) < "
            f"max_batch_size ({limits.max_batch_size}): a replica could never fill a batch"
        )
    if not 1 <= serve_args.min_replicas <= serve_args.max_replicas:
        raise UsageError(f"need 1 <= min_replicas ({serve_args.min_replicas}) <= max_replicas ({serve_args.max_replicas})")
    if limits.max_texts_per_request < 1 or limits.max_chars_per_text < 1:
        raise UsageError("max_texts_per_request and max_chars_per_text must be >= 1")


def autoscaling_config(cfg: ServeConfig) -> dict[str, Any]:
    s = cfg.serve
    return {
        "min_replicas": s.min_replicas,
        "max_replicas": s.max_replicas,
        "target_ongoing_requests": s.target_ongoing_requests,
        "upscale_delay_s": s.upscale_delay_s,
        "downscale_delay_s": s.downscale_delay_s,
        "look_back_period_s": s.look_back_period_s,
    }


def build_app(cfg: ServeConfig, deployment: Deployment = YnatServer) -> Application:
    """The Serve application for `cfg`: one autoscaling `YnatServer` deployment with options from the config.

    The replica gets only its own part: the engine options, its CPUs/GPUs, its admission limit and timeout,
    and the `LimitArgs` as `user_config` (live-updatable). `deployment` is `YnatServer` or a variant of it
    (`YnatServer.options(func_or_class=Subclass)`, as the tests do to make a live replica's engine fail).
    """
    check_serving_config(cfg)
    s = cfg.serve
    return deployment.options(
        autoscaling_config=autoscaling_config(cfg),
        max_ongoing_requests=s.max_ongoing_requests + REJECT_HEADROOM,
        max_queued_requests=s.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=cfg.limits.retry_after_s),
        ray_actor_options={"num_cpus": s.replica_cpus, "num_gpus": s.replica_gpus, "runtime_env": {"env_vars": dict(REPLICA_ENV)}},
        max_replicas_per_node=s.max_replicas_per_node,
        health_check_period_s=s.health_check_period_s,
        user_config=asdict(cfg.limits),
        logging_config=serve_logging(s),
    ).bind(
        cfg.engine, cpus=s.replica_cpus, gpus=s.replica_gpus, max_ongoing_requests=s.max_ongoing_requests,
        request_timeout_s=s.request_timeout_s,
    )  # fmt: skip


class ServeAppArgs(BaseModel):
    """`app_builder`'s arguments, as Serve passes them (serve/config.yaml `args:`, `serve run ... key=value`).

    Two fields of its own, and every `ynat-ray serve` option by name:
    - `checkpoint`: else the `config` file's, else the YNAT_CHECKPOINT environment variable;
    - `config`: a YAML/JSON options file read like `ynat-ray serve --config` (other commands' keys in it are
      skipped, so a training config works); the other args override it;
    - any other key must be an option of `ynat-ray serve` (`ServeConfig.options()`), checked here, so a typo
      or another command's option (`epochs`) fails validation with one line naming the command that takes it.

    Values are converted by the CLI's own parser (`config.parse_command`), so `max_replicas=4` from
    `serve run` (a string) and `max_replicas: 4` from YAML mean what `--max_replicas 4` means.
    """

    model_config = ConfigDict(extra="allow")

    checkpoint: str | None = Field(default=None, description="A trained checkpoint: local dir, URI or hub id.")
    config: str | None = Field(default=None, description="A YAML/JSON file of options (local or URI), as `ynat-ray serve --config`.")

    @model_validator(mode="after")
    def _only_serve_options(self) -> "ServeAppArgs":
        try:
            check_options(ServeConfig, self.model_extra or {}, where="Serve app args")
        except UsageError as err:
            raise ValueError(str(err)) from None  # pydantic reports a validator's ValueError with the model's name
        return self

    def serve_config(self) -> ServeConfig:
        """The `ServeConfig` these arguments name: args, then the config file, then each option's default."""
        values = {k: v for k, v in load_config_file(self.config).items() if k in ServeConfig.options()} if self.config else {}
        values.update(self.model_extra or {})
        values["checkpoint"] = self.checkpoint or values.get("checkpoint") or os.environ.get("YNAT_CHECKPOINT") or None
        cfg, _ = parse_command(ServeConfig, [], defaults=values)
        return cfg


def app_builder(args: ServeAppArgs) -> Application:
    """Serve's application-builder hook: Serve validates its `args` into `ServeAppArgs` (the annotation says so)."""
    return build_app(args.serve_config())


def deploy(cfg: ServeConfig, *, name: str = APP_NAME, route_prefix: str = "/", log: Any = print) -> str:
    """Deploy the app for `cfg` on the running Ray with the configured ingress, and return the ingress in use
    ('haproxy', or 'proxy' when HAProxy could not start: `log` gets one warning line saying why)."""
    return start_and_run(build_app(cfg), cfg.serve, name=name, route_prefix=route_prefix, log=log)


class SigtermLatch:
    """SIGTERM's handler (docker stop, systemd, Kubernetes): it only remembers the signal; `run_server` acts on it.

    Why not raise from the handler, as Ctrl-C's KeyboardInterrupt does: the exception lands wherever the main thread
    is. During the deploy that is inside Ray's C++ calls, where it surfaced as a SystemError that the HAProxy
    start-up check took for a failed HAProxy, and the command went on serving on the Python proxy. A latch is read
    at safe points only: when the deploy returns, and twice a second while serving."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.received = True


def run_server(cfg: ServeConfig) -> None:
    """`ynat-ray serve`: join (or start) Ray, start Serve, deploy, block until Ctrl-C or SIGTERM.

    Both stop the same way: Serve drains (replicas finish the requests they hold), then Ray is left; SIGTERM exits 0.
    SIGTERM's handler is installed after Ray starts, since Ray's core worker installs its own (a C++ stack dump, no
    drain). A SIGTERM during the deploy lets the deploy finish, then stops.
    """
    import signal

    from ynat_ray.cluster import init_ray

    check_serving_config(cfg)
    host = serve_host(cfg.serve)
    if not os.environ.get("RAY_ADDRESS"):  # a Ray this command starts has no Serve yet: say so before starting it
        check_port_free(host, cfg.serve.port)
    init_ray(verbose=cfg.serve.verbose)
    sigterm = SigtermLatch()
    signal.signal(signal.SIGTERM, sigterm)
    started_serve, deployed = not serve_running(), False
    try:
        ingress = deploy(cfg)
        deployed = True
        if not sigterm.received:
            base = f"http://{local_address(host)}:{cfg.serve.port}"
            where = f" (bound to {host})" if host != "127.0.0.1" else ""
            links = f"(info {base}/info, docs {base}/docs)"
            print(f"[ynat-ray] serving {cfg.engine.checkpoint} at {base}/predict via {ingress}{where}  {links}", flush=True)
        while not sigterm.received:
            time.sleep(0.5)
        print("[ynat-ray] SIGTERM: draining and shutting down Serve", flush=True)
    except KeyboardInterrupt:
        print("[ynat-ray] interrupted: draining and shutting down Serve", flush=True)
        raise
    finally:
        _leave_serve(started_serve, deployed)
        ray.shutdown()


def _leave_serve(started_serve: bool, deployed: bool) -> None:
    """Stop what this command started, nothing else: Serve itself if it started it, else only its app (a Serve
    that was already running keeps its other apps, and is left alone if the app never deployed)."""
    if started_serve:
        stop_serve()
    elif deployed:
        from ray import serve

        serve.delete(APP_NAME)
