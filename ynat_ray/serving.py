"""The Ray Serve application: a FastAPI ingress in front of an autoscaling, batched model deployment.

Why two deployments (Ray's model-composition pattern, `YnatIngress.bind(YnatClassifier.bind(cfg), cfg)`):

- `YnatIngress` is cheap and async. It parses the JSON, answers every bad request with a 4xx JSON
  message, cuts over-long texts, and turns Serve's failures (backpressure, a dead replica, a timeout)
  into JSON 503/504 answers with `Retry-After`. Nothing invalid ever reaches the model, so one bad input
  cannot fail the other callers whose texts share its batch.
- `YnatClassifier` holds the weights (loaded in `__init__`, inside the replica), autoscales on ongoing
  requests and batches *texts* with `@serve.batch`: a request of 8 texts and 8 requests of 1 text fill
  the same forward passes. Its `check_health` runs a real forward pass.

The HTTP protocol is the Hugging Face Inference API / Text Embeddings Inference text-classification one,
so `huggingface_hub.InferenceClient(model="http://host:port/predict")` and plain `requests` both work:
`{"inputs": str | [str], "parameters": {"top_k": int, "function_to_apply": ...}, "raw_scores": bool,
"truncate": bool}` -> one list of `{"label", "score"}` (best first) per input. docs/serving.md has the
full schema and error table.

No `from __future__ import annotations` here: Serve's class-based FastAPI views read the endpoint
annotations at runtime, and string annotations turn the JSON body into a query parameter.
"""

import asyncio
import hashlib
import math
import os
import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from ynat_ray import __version__
from ynat_ray.config import YnatConfig, build_parser, parse_config
from ynat_ray.inference import TextClassifier, format_predictions, softmax

APP_NAME = "ynat"
INGRESS_CPUS = 0.1  # the ingress only parses JSON and awaits the model; it must not take a model replica's CPU
PROXY_TIMEOUT_MARGIN_S = 5.0  # the proxy's own timeout sits behind the ingress's, which answers in JSON
READY_TIMEOUT_S = 2.0
INGRESS_MIN_ONGOING = 1000
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
            if not value.strip():
                raise ValueError("is an empty string")
            return value
        if not isinstance(value, list):
            raise ValueError(f"must be a string or a list of strings, got {_json_type(value)}")
        if not value:
            raise ValueError("is an empty list; send at least one text")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {i} must be a string, got {_json_type(item)}")
            if not item.strip():
                raise ValueError(f"item {i} is an empty string")
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


def checkpoint_sha(path: str) -> str | None:
    """A short SHA-256 over a local checkpoint's config and weights, so /info tells two checkpoints apart."""
    if not os.path.isdir(path):
        return None  # a hub id: transformers resolved it; its revision is the hub's business
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name == "config.json" or name.endswith((".safetensors", ".bin")):
            with open(os.path.join(path, name), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


# ---- deployments (everything they use is defined above: Serve pickles the ingress class by value
# while this module is still being imported, so names defined below it would be missing in the replica)
@serve.deployment(name="YnatClassifier")
class YnatClassifier:
    """One replica: the model, loaded once, answering validated texts in dynamically padded batches."""

    def __init__(self, cfg: YnatConfig) -> None:
        self.clf = TextClassifier(cfg.checkpoint, use_gpu=cfg.replica_gpus > 0, precision=cfg.precision, max_length=cfg.max_length)
        self.description = {
            "model_id": cfg.checkpoint,
            "model_sha": checkpoint_sha(self.clf.path),
            "model_type": self.clf.model.config.model_type,
            "model_dtype": {"bf16": "bfloat16"}.get(self.clf.precision, "float32"),
            "device": self.clf.device.type,
            "labels": self.clf.labels,
            "max_input_length": self.clf.max_length,
            "version": __version__,
        }

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch settings come as user_config, so `serve deploy` can change them without restarting replicas."""
        self.forward.set_max_batch_size(int(user_config["max_batch_size"]))
        self.forward.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    async def describe(self) -> dict[str, Any]:
        return self.description

    async def predict(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Logits for one request's (already validated) texts, and the largest batch they rode in.

        Each text joins the shared `@serve.batch` queue on its own, so texts from different requests
        share forward passes.
        """
        rows = await asyncio.gather(*(self.forward(text) for text in texts))
        return np.stack([logits for logits, _ in rows]), max(size for _, size in rows)

    async def token_lengths(self, texts: list[str]) -> list[int]:
        """Untruncated token counts, for requests that ask for truncate=false (checked before batching)."""
        return [len(ids) for ids in self.clf.tokenizer(texts, truncation=False)["input_ids"]]

    # Defaults only: reconfigure() sets both from the config. Compute runs on the replica's event loop
    # (not a thread) on purpose: the fast tokenizer is not safe to call from two threads at once.
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def forward(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        logits = self.clf.logits(texts, batch_size=len(texts))  # one padded forward pass under inference_mode
        return [(row, len(texts)) for row in logits]

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; a real forward pass catches a broken model, not just a live process."""
        logits = self.clf.logits([HEALTH_TEXT])
        if not np.isfinite(logits).all():
            raise RuntimeError("health check: the model produced non-finite logits")


@serve.deployment(name="YnatIngress")
@serve.ingress(api)
class YnatIngress:
    """HTTP front: validation, limits, response shaping and error mapping; the model sits behind a handle."""

    def __init__(self, model: DeploymentHandle, cfg: YnatConfig) -> None:
        self.model = model
        self.cfg = cfg
        self._description: dict[str, Any] | None = None
        self._describing = asyncio.Lock()  # a burst of first requests asks the model once, not once each
        self._retry_after = {"Retry-After": str(max(1, math.ceil(cfg.retry_after_s)))}

    async def _call(self, response: Any, timeout_s: float) -> Any:
        """Await a model call, mapping Serve's failures to JSON answers a client knows how to retry."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        async def wait() -> Any:
            return await response

        try:
            return await asyncio.wait_for(wait(), timeout_s)
        except BackPressureError as err:
            raise ApiError(err.status_code, "server busy: too many requests queued; retry later", self._retry_after) from err
        except (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError) as err:
            raise ApiError(503, f"model replica unavailable ({type(err).__name__}); retry", self._retry_after) from err
        except asyncio.TimeoutError as err:
            raise ApiError(504, f"no answer from the model within {timeout_s:g}s") from err

    async def _model_description(self) -> dict[str, Any]:
        async with self._describing:
            if self._description is None:
                self._description = await self._call(self.model.describe.remote(), self.cfg.request_timeout_s)
        return self._description

    @api.post(
        "/predict",
        responses={
            200: {"model": list[list[Prediction]], "description": "One list per input, best label first."},
            400: {"description": "The body is not JSON."},
            413: {"description": "Too many texts, or a text too long with truncate=false."},
            422: {"description": "JSON of the wrong shape: missing/unknown field, empty or non-string input, top_k out of range."},
            503: {"description": "Backpressure or no live replica; has Retry-After."},
            504: {"description": "The model did not answer within request_timeout_s."},
        },
    )
    async def predict(self, body: PredictRequest) -> JSONResponse:
        """Classify one title or a list of titles; answers `[[{"label": "생활문화", "score": 0.93}, ...], ...]`."""
        started = time.perf_counter()
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        texts = self._apply_limits(texts, body.truncate)
        params = body.parameters or Parameters()
        info = await self._model_description()
        labels = info["labels"]
        if params.top_k is not None and params.top_k > len(labels):
            raise ApiError(422, f"parameters.top_k must be between 1 and {len(labels)} (the number of labels), got {params.top_k}")
        function = params.function_to_apply or ("none" if body.raw_scores else "softmax")
        if body.raw_scores and function != "none":
            raise ApiError(422, f"raw_scores=true conflicts with parameters.function_to_apply={function!r}")
        if not body.truncate:
            await self._check_token_lengths(texts, info["max_input_length"])
        logits, batch_size = await self._call(self.model.predict.remote(texts), self.cfg.request_timeout_s)
        scores = {"softmax": softmax, "sigmoid": _sigmoid, "none": lambda x: x}[function](logits)
        predictions = format_predictions(scores, dict(enumerate(labels)), params.top_k)
        elapsed_ms = (time.perf_counter() - started) * 1000
        return JSONResponse(predictions, headers={"X-Batch-Size": str(batch_size), "X-Inference-Time-Ms": f"{elapsed_ms:.1f}"})

    def _apply_limits(self, texts: list[str], truncate: bool) -> list[str]:
        """Enforce max_texts_per_request (413) and max_chars_per_text (cut, or 413 with truncate=false)."""
        limit, max_chars = self.cfg.max_texts_per_request, self.cfg.max_chars_per_text
        if len(texts) > limit:
            raise ApiError(413, f"too many texts: {len(texts)} > max_texts_per_request {limit}; split the request")
        for i, text in enumerate(texts):
            if len(text) > max_chars and not truncate:
                raise ApiError(413, f"inputs[{i}] has {len(text)} characters, over max_chars_per_text {max_chars}; send truncate=true")
        return [text[:max_chars] for text in texts]

    async def _check_token_lengths(self, texts: list[str], limit: int) -> None:
        lengths = await self._call(self.model.token_lengths.remote(texts), self.cfg.request_timeout_s)
        for i, n in enumerate(lengths):
            if n > limit:
                raise ApiError(413, f"inputs[{i}] has {n} tokens, over max_input_length {limit}; send truncate=true")

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the HTTP side is up (says nothing about the model; see /readyz)."""
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {"description": "No model replica has answered yet."}})
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 only when a model replica answers (so its weights are loaded)."""
        try:
            self._description = await self._call(self.model.describe.remote(), READY_TIMEOUT_S)
        except ApiError as err:
            return _error(503, f"model not ready: {err.message}", self._retry_after, ready=False)
        return JSONResponse({"ready": True, "model_id": self._description["model_id"]})

    @api.get("/")
    @api.get("/info")
    async def info(self) -> dict[str, Any]:
        """Model id, checksum, labels, max input length, version, and this server's limits."""
        return {
            **await self._model_description(),
            "max_texts_per_request": self.cfg.max_texts_per_request,
            "max_chars_per_text": self.cfg.max_chars_per_text,
            "max_batch_size": self.cfg.max_batch_size,
        }


# ---- building and running -------------------------------------------------------------------------
def check_serving_config(cfg: YnatConfig) -> None:
    """Fail before deploying on settings Serve would accept but that cannot work as intended."""
    if not cfg.checkpoint:
        raise ValueError("no checkpoint: pass --checkpoint DIR (or args.checkpoint / YNAT_CHECKPOINT for `serve run`)")
    if cfg.max_ongoing_requests < cfg.max_batch_size:
        raise ValueError(
            f"max_ongoing_requests ({cfg.max_ongoing_requests}) < max_batch_size ({cfg.max_batch_size}): a replica could "
            "never fill a batch with 1-text requests"
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
    """The Serve application for `cfg`: `YnatIngress.bind(YnatClassifier.bind(cfg), cfg)` with options from the config."""
    check_serving_config(cfg)
    backpressure = BackpressureConfig(status_code=503, retry_after_s=cfg.retry_after_s)
    model = YnatClassifier.options(
        autoscaling_config=autoscaling_config(cfg),
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
        health_check_period_s=cfg.health_check_period_s,
        user_config={"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s},
    ).bind(cfg)
    # The ingress takes far more requests than the model can hold: it never queues them, it forwards them or
    # rejects them at once with a JSON 503, so the model's max_queued_requests is the limit that trips.
    # (Past the ingress's own limit, Serve's proxy answers a plain-text 503 with the same Retry-After.)
    model_capacity = cfg.max_ongoing_requests * cfg.max_replicas + cfg.max_queued_requests
    return YnatIngress.options(
        num_replicas=1,
        max_ongoing_requests=max(INGRESS_MIN_ONGOING, 2 * model_capacity),
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": INGRESS_CPUS},
    ).bind(model, cfg)


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


def run_server(cfg: YnatConfig) -> None:
    """`ynat-ray serve`: join (or start) Ray, start Serve on cfg.host:cfg.port, deploy, block until Ctrl-C."""
    import ray

    app = build_app(cfg)
    if not ray.is_initialized():
        ray.init()
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s + PROXY_TIMEOUT_MARGIN_S})
    serve.run(app, name=APP_NAME, route_prefix="/")
    base = f"http://{cfg.host}:{cfg.port}"
    print(f"[ynat-ray] serving {cfg.checkpoint} at {base}/predict  (info {base}/info, docs {base}/docs, ready {base}/readyz)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[ynat-ray] shutting down Serve", flush=True)
        serve.shutdown()
