"""The HTTP contract: request and response models, and every error answered as JSON.

The protocol is the Hugging Face Inference API / Text Embeddings Inference text-classification one, so
`huggingface_hub.InferenceClient(model="http://host:port/predict")` and plain `requests` both work:
`{"inputs": str | [str], "parameters": {"top_k": int, "function_to_apply": ...}, "raw_scores": bool,
"truncate": bool}` -> one list of `{"label", "score"}` (best first) per input. docs/serving.md has the
full schema and error table.

Errors follow TEI's typed errors: every one is `{"error": message, "error_type": kind, ...}`, and the kind
says whose fault it is. A request the server refuses (bad JSON, wrong shape, over a limit, a text the
tokenizer cannot take) is a 4xx; a model that fails while running a batch is `engine` and a 500, logged
on the replica with its traceback. Nothing here imports Ray: the schema is checked on its own
(tests/test_properties.py).

No `from __future__ import annotations`: pydantic and FastAPI read these annotations at runtime.
"""

from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from ynat_ray.data.validation import text_problem

# The `error_type` of each error, as TEI names them where it has a name for it.
VALIDATION = "validation"  # the request is malformed or over a limit (400, 413, 422)
TOKENIZER = "tokenizer"  # one text the model's tokenizer cannot take (422 naming the item)
OVERLOADED = "overloaded"  # the replica is full (503 + Retry-After)
TIMEOUT = "timeout"  # no answer from the model within request_timeout_s (504)
ENGINE = "engine"  # the model failed while running a batch (500, logged with its traceback)
ROUTE = "route"  # no such route, or the wrong method (404, 405)


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
            raise ValueError(f"must be a string or a list of strings, got {json_type(value)}")
        if not value:
            raise ValueError("is an empty list; send at least one text")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {i} must be a string, got {json_type(item)}")
            problem = text_problem(item)
            if problem:
                raise ValueError(f"item {i} is an empty string" if problem == "empty" else f"item {i} is {problem}")
        return value


class Prediction(BaseModel):
    label: str = Field(description="A YNAT topic, e.g. 생활문화")
    score: float


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages a client can act on."""
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return names.get(type(value), type(value).__name__)


# ---- errors ---------------------------------------------------------------------------------------
class ApiError(Exception):
    """An HTTP error answered as JSON `{"error": message, "error_type": error_type, ...extra}`."""

    def __init__(
        self, status_code: int, message: str, headers: dict[str, str] | None = None, *, error_type: str = VALIDATION, **extra: Any
    ):
        super().__init__(status_code, message)
        self.status_code, self.message, self.headers, self.error_type, self.extra = status_code, message, headers, error_type, extra


def error_response(status_code: int, message: str, error_type: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type, **extra}, status_code=status_code, headers=headers)


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status_code, exc.message, exc.error_type, exc.headers, **exc.extra)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """400 for a body that is not JSON, 422 (with every problem named) for JSON of the wrong shape."""
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        e = errors[0]
        return error_response(400, f"invalid JSON at character {e['loc'][-1]}: {e.get('ctx', {}).get('error', e['msg'])}", VALIDATION)
    details = [{"loc": list(e["loc"][1:]), "msg": e["msg"]} for e in errors]
    return error_response(422, "; ".join(_describe(e) for e in errors), VALIDATION, details=details)


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"][1:]) or "request body"
    if err["type"] == "missing":
        return f"{where}: field required" if where != "request body" else 'request body is missing; send {"inputs": "..."}'
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    if err["type"] == "value_error":
        return f"{where} {err['ctx']['error']}"
    if where == "request body":
        return f'request body must be a JSON object like {{"inputs": "..."}}, got {json_type(err.get("input"))}'
    return f"{where}: {err['msg']}"


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404/405 and friends as JSON, keeping headers such as `Allow`."""
    message = {404: f"no route {request.url.path}; see /docs", 405: f"method {request.method} not allowed on {request.url.path}"}
    return error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)), ROUTE, getattr(exc, "headers", None))


def install_error_handlers(app: FastAPI) -> None:
    """Answer the app's own errors, FastAPI's validation errors and Starlette's 404/405 as JSON."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
