"""The deployment: ONE class whose replicas hold the FastAPI app, the batcher and the engine.

Why one deployment: on a small machine every extra hop (proxy -> ingress replica -> model replica) costs
more than batching saves (docs/serving.md, "How it is built"). Each replica parses and validates the
request, answers bad input with a 4xx JSON message, cuts over-long texts, and batches *texts* from
concurrent requests into shared forward passes of the inference engine (`ynat_ray.inference`), with
continuous batching (`batching.Batcher`): a lone request runs at once, requests arriving during a forward
pass share the next one.

- Admission control lives in the replica: beyond `max_ongoing_requests` requests in one replica it answers
  a JSON 503 with `Retry-After` at once, so the client sees the same JSON shape whatever the ingress.
- `request_timeout_s` is enforced in the replica (JSON 504).
- A batch runs in two steps, and where an exception arises says whose fault it is (`batch_logits`): a text
  the tokenizer cannot take is found and answered 422 for its own request only (its batch-mates get their
  answers); a model that fails while running the batch (a broken ONNX Runtime session, out of memory) is
  logged with its traceback and answered 500 with `error_type: engine`.
- The model runs on one worker thread (ONNX Runtime releases the GIL), so the event loop keeps accepting
  and validating requests while a batch computes, and the next batch is already queued when it ends. A
  request alone in the replica, on a fast model, runs its pass on the loop's thread (`batching`).
- Every POST /predict is seen by `_TrackPredict` (ASGI middleware): it tells the batcher a request is in the
  replica, and records the request's status class and latency (`telemetry.ReplicaMetrics`), also for bodies
  FastAPI refuses before the handler runs.

A replica receives only what it needs: its `EngineArgs`, its CPUs/GPUs, its admission limit and timeout as
constructor arguments, and its `LimitArgs` as Serve's `user_config` (`reconfigure`).

No `from __future__ import annotations` here: Serve's class-based FastAPI views read the endpoint
annotations at runtime, and string annotations turn the JSON body into a query parameter.
"""

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve

from ynat_ray import __version__
from ynat_ray.config import EngineArgs, LimitArgs
from ynat_ray.inference import TextClassifier, format_predictions, load_engine
from ynat_ray.runners import softmax
from ynat_ray.serving.batching import Batcher, Visit
from ynat_ray.serving.demo import DEMO_CSP, demo_page
from ynat_ray.serving.schema import (
    ENGINE,
    OVERLOADED,
    TIMEOUT,
    TOKENIZER,
    ApiError,
    Parameters,
    Prediction,
    PredictRequest,
    install_error_handlers,
)
from ynat_ray.serving.telemetry import ReplicaMetrics

HEALTH_TEXT = "유튜브 내달 2일까지 크리에이터 지원 공간 운영"
# Serve's replica logger: its lines land in the replica's log file with the request id, and on the driver's console.
logger = logging.getLogger("ray.serve")

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


VISIT = "ynat.visit"  # the ASGI scope key under which `_TrackPredict` hands the handler its `batching.Visit`


class _TrackPredict:
    """ASGI middleware around every POST .../predict, whoever answers it (FastAPI's validation, the handler, an
    error handler).

    - It tells the replica's batcher a request is in the replica (`Batcher.visit`) until it is answered, so a
      partial batch may wait for requests that exist and only for them, and a request alone may skip the hop to
      the compute thread; the handler passes the `Visit` on when it queues its texts.
    - It records the status class and the time from arrival to answer (`ReplicaMetrics.request`). A body FastAPI
      refuses (422) never reaches the handler, which is why this is middleware.

    The replica is found through Serve's replica context: `serve.ingress` copies this app before any replica
    exists, so the middleware cannot be handed the replica when it is added.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.replica: YnatServer | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith("/predict"):
            await self.app(scope, receive, send)
            return
        if self.replica is None:
            self.replica = serve.get_replica_context().servable_object
        replica, started, status = self.replica, time.perf_counter(), 500  # 500: an exception that escapes unanswered

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        visit = scope[VISIT] = replica.batcher.visit()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            visit.left()  # also for a request that never queued texts (refused, invalid): no batch waits for it
            replica.metrics.request(status, time.perf_counter() - started)


# Before `serve.ingress(api)` below: it freezes a copy of the app. The last added is the outermost.
api.add_middleware(_BodyIsJson)
api.add_middleware(_TrackPredict)
install_error_handlers(api)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def apply_limits(texts: list[str], truncate: bool, limits: LimitArgs) -> list[str]:
    """Enforce max_texts_per_request (413) and max_chars_per_text (cut, or 413 with truncate=false)."""
    limit, max_chars = limits.max_texts_per_request, limits.max_chars_per_text
    if len(texts) > limit:
        raise ApiError(413, f"too many texts: {len(texts)} > max_texts_per_request {limit}; split the request")
    for i, text in enumerate(texts):
        if len(text) > max_chars and not truncate:
            raise ApiError(413, f"inputs[{i}] has {len(text)} characters, over max_chars_per_text {max_chars}; send truncate=true")
    return [text[:max_chars] for text in texts]


# ---- one batch: tokenize, then run the model ----------------------------------------------------------
class TextRejected(Exception):
    """A text the tokenizer cannot take: its request is answered 422, its batch-mates are not affected."""


class EngineFailed(Exception):
    """The model failed while running a batch: every request in it is answered 500 (the traceback is logged)."""


Encode = Callable[[Sequence[str]], dict[str, np.ndarray]]
Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _reject_bad_texts(encode: Encode, texts: list[str]) -> dict[int, TextRejected]:
    """Tokenize each text alone: the ones that fail, by position. Only called once the batch failed to tokenize."""
    rejected: dict[int, TextRejected] = {}
    for i, text in enumerate(texts):
        try:
            encode([text])
        except Exception as err:  # noqa: BLE001 - whatever the tokenizer raises, it is this text's problem
            rejected[i] = TextRejected(f"{type(err).__name__}: {err}")
    return rejected


def batch_logits(encode: Encode, run: Run, texts: list[str]) -> list[Any]:
    """Per text, `(logits row, forward-pass size)`, a `TextRejected` or an `EngineFailed`; one padded pass.

    Which step raised decides whose fault it is (TEI's typed errors). A failure to tokenize the batch is
    looked for text by text: only the texts that fail alone are rejected (422), the others run. A failure
    of `run` (the ONNX Runtime session or torch model) is the server's: logged here once per batch with its
    traceback, and every text that reached the model gets `EngineFailed` (500). Runs on the replica's one
    compute thread.
    """
    rejected: dict[int, TextRejected] = {}
    try:
        enc = encode(texts)
    except Exception:  # noqa: BLE001 - find the text that broke the batch, answer the others
        rejected, enc = _reject_bad_texts(encode, texts), None
    kept = [t for i, t in enumerate(texts) if i not in rejected]
    if not kept:
        return [rejected[i] for i in range(len(texts))]
    try:
        if enc is None:  # every kept text tokenized alone, so a failure now is not one text's fault
            enc = encode(kept)
        logits = run(enc["input_ids"], enc["attention_mask"])
    except Exception as err:  # noqa: BLE001 - answered as a 500 for this batch; the replica goes on
        logger.exception("the model failed on a batch of %d text(s)", len(kept))
        failed = EngineFailed(f"{type(err).__name__}: {err}"[:300])
        return [rejected.get(i, failed) for i in range(len(texts))]
    rows = iter(logits)
    return [rejected[i] if i in rejected else (next(rows), len(kept)) for i in range(len(texts))]


def engine_description(clf: TextClassifier, checkpoint: str | None) -> dict[str, Any]:
    """What /info and /readyz say about the model and the engine running it."""
    from ynat_ray.checkpoint import content_hash

    engine = clf.describe()
    dtype = clf.precision if engine["backend"] == "torch" else engine["backend"]
    return {
        "model_id": checkpoint,
        "model_sha": content_hash(clf.path),
        "model_type": clf.config.model_type,
        "model_dtype": {"bf16": "bfloat16", "fp32": "float32", "onnx-int8": "int8"}.get(dtype, "float32"),
        "labels": clf.labels,
        "max_input_length": clf.max_length,
        "version": __version__,
        **engine,
    }


# ---- the deployment ------------------------------------------------------------------------------------
@serve.deployment(name="YnatClassifier")
@serve.ingress(api)
class YnatServer:
    """One replica: HTTP validation, limits, batching and the engine, all in one process."""

    def __init__(self, engine: EngineArgs, *, cpus: float, gpus: float, max_ongoing_requests: int, request_timeout_s: float) -> None:
        self.clf = load_engine(engine, cpus=cpus, gpus=gpus)
        self.max_ongoing_requests, self.request_timeout_s = max_ongoing_requests, request_timeout_s
        # One thread runs the tokenizer and model calls (through the batcher, which alone decides when a lone
        # request's pass may run on the loop instead): the fast tokenizer must not be called from two threads at
        # once, and one compute thread per replica is what its CPU budget allows anyway.
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ynat-model")
        self.inflight = 0
        self.metrics = ReplicaMetrics(self.clf.labels)
        limits = LimitArgs()
        self.batcher = Batcher(self._run_batch, self.compute, max_batch_size=limits.max_batch_size, wait_s=limits.batch_wait_timeout_s)
        self.batcher.on_batch = self.metrics.batch
        self.reconfigure(asdict(limits))  # Serve calls it again with the deployment's user_config before any request
        self.description = engine_description(self.clf, engine.checkpoint)
        self.demo_html = demo_page(self.clf.labels)  # read once per replica: a missing asset fails start-up, not a visitor
        # Which replica, on which node, answered: the X-Replica-Id header and /info say it (on a cluster, a client can
        # see its requests spread over nodes, and logs of one replica can be matched to its answers).
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.node_id = ray.get_runtime_context().get_node_id()
        d = self.description
        print(f"[ynat-ray] replica ready: {d['backend']} ({d['backend_reason']}), {d['threads']} thread(s)", flush=True)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """This replica's `LimitArgs`, given as Serve's user_config (Ray Serve's batching guide), so `serve deploy`
        with new limits updates live replicas without restarting them."""
        self.limits = LimitArgs(**user_config)
        self.batcher.configure(self.limits.max_batch_size, self.limits.batch_wait_timeout_s)
        self.retry_after = {"Retry-After": str(max(1, math.ceil(self.limits.retry_after_s)))}

    def _run_batch(self, texts: list[str]) -> list[Any]:
        """One batch of texts from any number of requests, on the compute thread (see `batch_logits`). Reads the
        engine's `encode` and `runner` at each call, so a test can swap them on a live replica."""
        return batch_logits(self.clf.encode, self.clf.runner, texts)

    async def check_health(self) -> None:
        """Serve calls this every health_check_period_s; a real forward pass catches a broken model, not just a live process."""
        logits = await self.batcher.on_compute(self.clf.logits, [HEALTH_TEXT], 1)
        if not np.isfinite(logits).all():
            raise RuntimeError("health check: the model produced non-finite logits")

    async def _logits(self, texts: list[str], visit: Visit | None) -> tuple[np.ndarray, int]:
        """Each text joins the shared batch queue on its own, so texts of different requests share passes."""
        try:
            rows = await asyncio.wait_for(self.batcher.submit(texts, visit), self.request_timeout_s)
        except asyncio.TimeoutError as err:
            raise ApiError(504, f"no answer from the model within {self.request_timeout_s:g}s", error_type=TIMEOUT) from err
        for i, row in enumerate(rows):  # the tokenizer runs first, so its verdict comes first
            if isinstance(row, TextRejected):
                raise ApiError(422, f"inputs[{i}] cannot be processed by the model's tokenizer: {row}", error_type=TOKENIZER)
        failed = next((row for row in rows if isinstance(row, EngineFailed)), None)
        if failed is not None:
            raise ApiError(500, f"the model failed while running this request's batch ({failed}); see the replica's log", error_type=ENGINE)
        return np.stack([logits for logits, _ in rows]), max(size for _, size in rows)

    @api.post(
        "/predict",
        responses={
            200: {"model": list[list[Prediction]], "description": "One list per input, best label first."},
            400: {"description": "The body is not JSON."},
            413: {"description": "Too many texts, or a text too long with truncate=false."},
            422: {"description": "JSON of the wrong shape: missing/unknown field, empty or non-string input, top_k out of range; "
                  "or a text the model's tokenizer cannot take (error_type 'tokenizer')."},
            500: {"description": "The model failed while running the batch (error_type 'engine'); the replica logs the traceback."},
            503: {"description": "The replica holds max_ongoing_requests already; has Retry-After."},
            504: {"description": "The model did not answer within request_timeout_s."},
        },
    )  # fmt: skip
    async def predict(self, body: PredictRequest, request: Request) -> JSONResponse:
        """Classify one title or a list of titles; answers `[[{"label": "생활문화", "score": 0.93}, ...], ...]`."""
        if self.inflight >= self.max_ongoing_requests:
            self.metrics.refusal()
            raise ApiError(503, "server busy: too many requests in flight; retry later", self.retry_after, error_type=OVERLOADED)
        self.inflight += 1
        try:
            return await self._predict(body, request.scope.get(VISIT))
        finally:
            self.inflight -= 1

    async def _predict(self, body: PredictRequest, visit: Visit | None) -> JSONResponse:
        started = time.perf_counter()
        texts = apply_limits([body.inputs] if isinstance(body.inputs, str) else list(body.inputs), body.truncate, self.limits)
        params = body.parameters or Parameters()
        labels = self.clf.labels
        if params.top_k is not None and params.top_k > len(labels):
            raise ApiError(422, f"parameters.top_k must be between 1 and {len(labels)} (the number of labels), got {params.top_k}")
        function = params.function_to_apply or ("none" if body.raw_scores else "softmax")
        if body.raw_scores and function != "none":
            raise ApiError(422, f"raw_scores=true conflicts with parameters.function_to_apply={function!r}")
        if not body.truncate:
            lengths = await self.batcher.on_compute(self.clf.token_lengths, texts)
            for i, n in enumerate(lengths):
                if n > self.clf.max_length:
                    raise ApiError(413, f"inputs[{i}] has {n} tokens, over max_input_length {self.clf.max_length}; send truncate=true")
        logits, batch_size = await self._logits(texts, visit)
        self.metrics.scored(logits.argmax(axis=1))
        scores = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: x}[function](logits)
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
            "max_texts_per_request": self.limits.max_texts_per_request,
            "max_chars_per_text": self.limits.max_chars_per_text,
            "max_batch_size": self.limits.max_batch_size,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ongoing_requests": self.inflight,  # /predict requests in this replica right now
            "replica_id": self.replica_id,
            "node_id": self.node_id,
        }
