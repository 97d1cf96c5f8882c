"""The Ray Serve application end to end: real Serve on the session cluster, real HTTP (httpx), the trained checkpoint.

One app (`ynat`, route /) serves the whole module; the backpressure and timeout tests deploy a small
second app next to it and delete it. Every load loop is bounded by a request count and a deadline.
Serve is shut down at the end so the other modules get the cluster's 2 CPUs back.

Set YNAT_TEST_CHECKPOINT=DIR to reuse an existing checkpoint instead of training one (only to iterate
on this module alone; CI uses the `checkpoint_dir` fixture).
"""

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import TRAINED_MAX_LENGTH, free_port

from ynat_ray import __version__
from ynat_ray.config import ServeConfig
from ynat_ray.data.sources import embedded_split
from ynat_ray.labels import LABELS

# Nothing here imports ray at module level (ynat_ray.serving.app does): Ray reads RAY_AUTH_MODE when it is
# first imported, and conftest sets it to 'token' only when the session cluster starts.
APP_NAME = "ynat"
REPLICA_CLASS = f"ServeReplica:{APP_NAME}:YnatClassifier"
SCORE_TOL = 1e-4


@dataclass
class Server:
    url: str
    cfg: ServeConfig
    checkpoint: str
    ingress: str  # 'haproxy' or 'proxy' (the fallback)


@pytest.fixture(scope="module")
def served_checkpoint(request: pytest.FixtureRequest) -> str:
    return os.environ.get("YNAT_TEST_CHECKPOINT") or request.getfixturevalue("checkpoint_dir")


def _cfg(checkpoint: str, **overrides: Any) -> ServeConfig:
    """Small replicas (2 fit in the 2-CPU test cluster next to the ingress) and fast autoscaling/health checks."""
    values: dict[str, Any] = dict(
        checkpoint=checkpoint,
        backend="onnx",  # fp32 ONNX equals transformers.pipeline to 1e-4; int8 (auto's pick) is tested on its own below
        replica_cpus=0.5,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=2,
        upscale_delay_s=1.0,
        downscale_delay_s=2.0,
        look_back_period_s=11.0,
        health_check_period_s=1.0,
        max_batch_size=16,
        max_ongoing_requests=32,
        batch_wait_timeout_s=0.05,
        max_texts_per_request=8,
        max_chars_per_text=300,
        max_queued_requests=64,
        request_timeout_s=20.0,
    )
    values.update(overrides)
    return ServeConfig.of(**values)


@pytest.fixture(scope="module")
def server(ray_session, served_checkpoint: str):
    from ynat_ray.serving import app
    from ynat_ray.serving.ingress import stop_serve

    assert app.APP_NAME == APP_NAME
    cfg = _cfg(served_checkpoint, port=free_port())
    ingress = app.deploy(cfg)  # the product's path: HAProxy direct ingress, or the proxy with a warning
    try:
        yield Server(f"http://127.0.0.1:{cfg.serve.port}", cfg, served_checkpoint, ingress)
    finally:
        stop_serve()


@pytest.fixture(scope="module")
def titles() -> list[str]:
    return embedded_split("test")["title"].tolist()[:40]


@pytest.fixture(scope="module")
def pipe(served_checkpoint: str):
    """The reference: transformers' own pipeline on the same checkpoint, all labels, truncating like the server."""
    from transformers import pipeline

    return pipeline("text-classification", model=served_checkpoint, top_k=None, device=-1, truncation=True)


def post(url: str, body: Any = None, *, content: str | None = None, **kw: Any) -> httpx.Response:
    if content is None:
        content = json.dumps(body, ensure_ascii=False)
    return httpx.post(f"{url}/predict", content=content.encode(), headers={"content-type": "application/json"}, timeout=30, **kw)


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    np.testing.assert_allclose([p["score"] for p in got], [p["score"] for p in want], atol=SCORE_TOL)


def replicas(state: str = "RUNNING") -> int:
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments["YnatClassifier"]
    return int(deployment.replica_states.get(state, 0))


# ---- info, health, readiness --------------------------------------------------------------------
def test_info_health_and_readiness(server: Server) -> None:
    from ynat_ray.serving.ingress import haproxy_problem

    assert server.ingress == ("haproxy" if haproxy_problem() is None else "proxy")  # HAProxy wherever it can run
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    for path in ("/", "/info"):
        info = httpx.get(f"{server.url}{path}").json()
        assert info["labels"] == list(LABELS)
        assert info["model_id"] == server.checkpoint and len(info["model_sha"]) == 16
        assert server.cfg.engine.max_length is None and info["max_input_length"] == TRAINED_MAX_LENGTH  # read from the checkpoint
        assert info["backend"] == "onnx" and info["threads"] == 1 and "asked for" in info["backend_reason"]
        assert info["version"] == __version__
        assert info["max_texts_per_request"] == 8 and info["max_chars_per_text"] == 300
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"PredictRequest", "Parameters", "Prediction"} <= set(schema["components"]["schemas"])
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_a_second_deploy_on_another_port_is_one_line_and_leaves_serve_alone(server: Server) -> None:
    """Serve has one HTTP port per cluster: `serve.start` would silently keep the running one, and the new app
    would answer where nobody looks. The deploy stops with the port in use instead, touching nothing."""
    from ynat_ray.errors import UsageError
    from ynat_ray.serving.app import deploy

    with pytest.raises(UsageError, match=rf"Serve already runs on this cluster on port {server.cfg.serve.port}; deploy there with --port"):
        deploy(_cfg(server.checkpoint, port=free_port()), name="elsewhere", route_prefix="/elsewhere")
    assert httpx.get(f"{server.url}/readyz").status_code == 200


# ---- the happy path, against transformers.pipeline ----------------------------------------------
def test_single_and_batch_match_pipeline(server: Server, titles: list[str], pipe) -> None:
    single = post(server.url, {"inputs": titles[0]})
    assert single.status_code == 200, single.text
    assert single.headers["content-type"] == "application/json"
    (got,) = single.json()  # one list per input, like pipeline(str, top_k=None)
    assert len(got) == len(LABELS)
    assert_same(got, pipe(titles[0])[0])

    batch = post(server.url, {"inputs": titles[:8]})
    assert batch.status_code == 200, batch.text
    for got, want in zip(batch.json(), pipe(titles[:8]), strict=True):
        assert_same(got, want)

    top2 = post(server.url, {"inputs": titles[1:3], "parameters": {"top_k": 2}}).json()
    for got, want in zip(top2, pipe(titles[1:3]), strict=True):
        assert_same(got, want[:2])

    raw = post(server.url, {"inputs": titles[3], "raw_scores": True}).json()[0]  # TEI's raw_scores: logits
    assert_same(raw, pipe(titles[3], function_to_apply="none")[0])
    sig = post(server.url, {"inputs": titles[3], "parameters": {"function_to_apply": "sigmoid"}}).json()[0]
    assert_same(sig, pipe(titles[3], function_to_apply="sigmoid")[0])


def test_curl_style_form_content_type_is_read_as_json(server: Server, titles: list[str], pipe) -> None:
    """`curl -d '{...}'` sends application/x-www-form-urlencoded; the README's example must still work."""
    body = json.dumps({"inputs": titles[4]}, ensure_ascii=False).encode()
    resp = httpx.post(f"{server.url}/predict", content=body, headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200, resp.text
    assert_same(resp.json()[0], pipe(titles[4])[0])


def test_over_long_text_is_truncated_by_default(server: Server, titles: list[str], pipe) -> None:
    long_text = (titles[5] + " ") * 40  # > max_chars_per_text (300) and > max_length tokens
    resp = post(server.url, {"inputs": long_text})
    assert resp.status_code == 200, resp.text
    assert_same(resp.json()[0], pipe(long_text[: server.cfg.limits.max_chars_per_text])[0])


def test_huggingface_inference_client(server: Server, titles: list[str], pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real client nobody here wrote: huggingface_hub's InferenceClient pointed at the URL."""
    from huggingface_hub import InferenceClient, constants

    # conftest's HF_HUB_OFFLINE=1 makes huggingface_hub refuse every URL, loopback included; this test only talks to 127.0.0.1.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    client = InferenceClient(model=f"{server.url}/predict", timeout=30)
    out = client.text_classification(titles[6])
    assert_same([{"label": o.label, "score": o.score} for o in out], pipe(titles[6])[0])
    top1 = client.text_classification(titles[6], top_k=1)
    assert len(top1) == 1 and top1[0].label == out[0].label


# ---- the demo page (/demo) -------------------------------------------------------------------------
# An attribute that loads something from another host: src=/href=/action= with http(s):// or a protocol-relative //.
OFF_HOST = re.compile(r"""\b(?:src|href|action|srcset)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.IGNORECASE)


def test_demo_page_is_self_contained_html(server: Server) -> None:
    """GET /demo: one HTML page that loads nothing from anywhere (no CDN, font or script URL), in Korean."""
    resp = httpx.get(f"{server.url}/demo", timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/html")
    page = resp.text
    assert not OFF_HOST.findall(page), OFF_HOST.findall(page)
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert '<meta charset="utf-8">' in page and '<html lang="ko">' in page and '"Noto Sans CJK KR"' in page
    assert all(label in page for label in LABELS)  # the model's topics, filled in by the server
    for element_id in ("text", "submit", "examples", "results", "error"):
        assert f'id="{element_id}"' in page
    assert '"predict"' in page and '"/predict"' not in page  # relative: works under any route prefix
    assert "default-src 'none'" in resp.headers["content-security-policy"]  # the browser enforces "nothing external"


def _chrome(tmp_path: Any) -> Any:
    """Debian's chromium through Debian's chromedriver, headless; Selenium Manager is never asked to download anything.

    Missing browser or driver is a failure, not a skip (CI installs them: .ci/run), unless YNAT_SKIP_BROWSER=1.
    """
    if os.environ.get("YNAT_SKIP_BROWSER") == "1":
        pytest.skip("YNAT_SKIP_BROWSER=1")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(
            "the /demo browser test needs chromium and chromedriver: "
            "apt-get install chromium chromium-driver fonts-noto-cjk (or set YNAT_SKIP_BROWSER=1)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=ko-KR", "--window-size=1000,800",
        "--no-proxy-server", f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_demo_page_in_a_headless_browser(server: Server, titles: list[str], tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Type a real headline, click, see 7 bars best first with the API's top label; then the server's 422 on an empty box.

    A screenshot of the answered page goes to pytest's tmp dir, and also to $YNAT_DEMO_SCREENSHOT if set
    (that is how docs/demo.png is made).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # belt and braces: Selenium Manager must not reach the network
    text = titles[1]
    api = post(server.url, {"inputs": text, "parameters": {"top_k": 7}})
    assert api.status_code == 200, api.text
    want = {p["label"]: p["score"] for p in api.json()[0]}
    api_top = api.json()[0][0]["label"]

    browser = _chrome(tmp_path)
    try:
        browser.get(f"{server.url}/demo")
        examples = browser.find_elements(By.CSS_SELECTOR, "#examples button")
        assert len(examples) == 3 and all(e.text.strip() for e in examples)
        box = browser.find_element(By.ID, "text")
        examples[2].click()  # an example fills the box
        assert box.get_attribute("value") == examples[2].text.strip()

        box.clear()
        box.send_keys(text)
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 30).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .bar")) == len(LABELS))
        bars = browser.find_elements(By.CSS_SELECTOR, "#results .bar")
        labels = [bar.find_element(By.CSS_SELECTOR, ".label").text for bar in bars]
        scores = [float(bar.get_attribute("data-score")) for bar in bars]
        shown = [float(bar.find_element(By.CSS_SELECTOR, ".score").text.rstrip("%")) for bar in bars]
        assert labels[0] == api_top
        assert set(labels) == set(LABELS) and len(labels) == len(LABELS)
        assert scores == sorted(scores, reverse=True) and shown == sorted(shown, reverse=True)
        np.testing.assert_allclose(shown, [100 * want[label] for label in labels], atol=0.051)  # the API's scores, 1 decimal
        assert not browser.find_element(By.ID, "error").is_displayed()
        problems = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not problems, problems  # e.g. something the page tried to load and the CSP blocked

        shot = tmp_path / "demo.png"
        assert browser.save_screenshot(str(shot))
        if os.environ.get("YNAT_DEMO_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["YNAT_DEMO_SCREENSHOT"])

        box.clear()  # no client-side check: the server's own 422 message must reach the page
        browser.find_element(By.ID, "submit").click()
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, 30).until(lambda _: error.is_displayed() and error.text.strip())
        api_error = post(server.url, {"inputs": "", "parameters": {"top_k": 7}}).json()["error"]
        assert api_error and api_error in error.text, (api_error, error.text)
        assert not browser.find_elements(By.CSS_SELECTOR, "#results .bar")
    finally:
        browser.save_screenshot(str(tmp_path / "demo-last.png"))  # the last state, for a failure's post-mortem
        browser.quit()


# ---- bad input ------------------------------------------------------------------------------------
TOO_LONG = "가나다 " * 100  # 400 characters, ~100+ tokens
BAD_BODIES = [
    ("empty-string", {"inputs": ""}, 422, "inputs is an empty string"),
    ("blank-string", {"inputs": "   "}, 422, "empty string"),
    ("empty-list", {"inputs": []}, 422, "empty list"),
    ("empty-item", {"inputs": ["경제 뉴스", ""]}, 422, "item 1 is an empty string"),
    ("non-string-item", {"inputs": ["경제 뉴스", 3]}, 422, "item 1 must be a string, got number"),
    ("nested-list", {"inputs": [["경제 뉴스"]]}, 422, "item 0 must be a string, got array"),
    ("null-inputs", {"inputs": None}, 422, "got null"),
    ("number-inputs", {"inputs": 5}, 422, "must be a string or a list of strings, got number"),
    ("object-inputs", {"inputs": {"text": "a"}}, 422, "got object"),
    ("body-array", ["경제 뉴스"], 422, "must be a JSON object"),
    ("body-string", "경제 뉴스", 422, "must be a JSON object"),
    ("body-null", None, 422, "must be a JSON object"),
    ("missing-inputs", {"text": "경제 뉴스"}, 422, "inputs: field required"),
    ("unknown-field", {"inputs": "경제 뉴스", "foo": 1}, 422, "foo: unknown field"),
    ("unknown-parameter", {"inputs": "경제 뉴스", "parameters": {"topk": 2}}, 422, "parameters.topk: unknown field"),
    ("parameters-not-object", {"inputs": "경제 뉴스", "parameters": [2]}, 422, "parameters:"),
    ("top_k-zero", {"inputs": "경제 뉴스", "parameters": {"top_k": 0}}, 422, "greater than or equal to 1"),
    ("top_k-negative", {"inputs": "경제 뉴스", "parameters": {"top_k": -3}}, 422, "greater than or equal to 1"),
    ("top_k-too-big", {"inputs": "경제 뉴스", "parameters": {"top_k": 8}}, 422, "between 1 and 7"),
    ("top_k-string", {"inputs": "경제 뉴스", "parameters": {"top_k": "2"}}, 422, "valid integer"),
    ("top_k-float", {"inputs": "경제 뉴스", "parameters": {"top_k": 2.5}}, 422, "valid integer"),
    ("top_k-bool", {"inputs": "경제 뉴스", "parameters": {"top_k": True}}, 422, "valid integer"),
    ("bad-function", {"inputs": "경제 뉴스", "parameters": {"function_to_apply": "relu"}}, 422, "function_to_apply"),
    ("raw_scores-string", {"inputs": "경제 뉴스", "raw_scores": "yes"}, 422, "raw_scores"),
    ("raw-vs-softmax", {"inputs": "경제 뉴스", "raw_scores": True, "parameters": {"function_to_apply": "softmax"}}, 422, "conflicts"),
    ("too-many-texts", {"inputs": ["경제 뉴스"] * 9}, 413, "too many texts: 9 > max_texts_per_request 8"),
    ("too-many-chars", {"inputs": ["경제 뉴스", TOO_LONG], "truncate": False}, 413, "inputs[1] has 400 characters"),
    ("too-many-tokens", {"inputs": ["경제 뉴스", TOO_LONG[:290]], "truncate": False}, 413, f"over max_input_length {TRAINED_MAX_LENGTH}"),
]


@pytest.mark.parametrize(("body", "status", "needle"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
def test_bad_json_bodies(server: Server, body: Any, status: int, needle: str) -> None:
    resp = post(server.url, body)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert needle in resp.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "needle"),
    [
        ("POST", "/predict", '{"inputs": "경제 뉴스"', 400, "invalid JSON"),
        ("POST", "/predict", "inputs=경제", 400, "invalid JSON"),
        ("POST", "/predict", "", 422, "request body is missing"),
        ("GET", "/predict", None, 405, "method GET not allowed"),
        ("PUT", "/predict", "{}", 405, "method PUT not allowed"),
        ("DELETE", "/info", None, 405, "method DELETE not allowed"),
        ("POST", "/predict", '{"inputs": ["fine", "abc\\ud800"]}', 422, "item 1 is not valid Unicode: lone surrogate U+D800"),
        ("GET", "/nope", None, 404, "no route /nope"),
        ("POST", "/v1/predict", '{"inputs": "a"}', 404, "no route"),
    ],
    ids=[
        "invalid-json",
        "form-body",
        "empty-body",
        "lone-surrogate",
        "get-predict",
        "put-predict",
        "delete-info",
        "unknown-get",
        "unknown-post",
    ],  # fmt: skip
)
def test_bad_requests(server: Server, method: str, path: str, content: str | None, status: int, needle: str) -> None:
    resp = httpx.request(method, f"{server.url}{path}", content=content.encode() if content is not None else None)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]
    if status == 405:
        assert resp.headers["allow"]


def test_bad_requests_in_a_burst_leave_the_others_alone(server: Server, titles: list[str], pipe) -> None:
    """Good, bad and over-long requests at once: only the bad ones fail, and the replica keeps serving."""
    bodies: list[tuple[dict[str, Any], int]] = [({"inputs": t}, 200) for t in titles[10:18]]
    bodies += [({"inputs": titles[18:22]}, 200), ({"inputs": "x" * 20_000}, 200)]  # over-long: truncated, not an error
    bodies += [({"inputs": ["fine", None]}, 422), ({"inputs": ["fine", TOO_LONG], "truncate": False}, 413), ({"inputs": ["a"] * 50}, 413)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", json=body) for body, _ in bodies))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [status for _, status in bodies]
    for (body, status), resp in zip(bodies, responses, strict=True):
        if status == 200 and body["inputs"] != "x" * 20_000:
            texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
            for got, want in zip(resp.json(), pipe(texts), strict=True):
                assert_same(got, want)
    assert post(server.url, {"inputs": titles[0]}).status_code == 200


def test_poison_texts_among_many_good_requests_fail_alone(server: Server, titles: list[str], pipe) -> None:
    """24 good requests and 6 poison ones (lone surrogates, blank, non-string) at once: every good one gets its
    answer, every poison one a 4xx naming the item, none a 5xx."""
    poison = ['{"inputs": ["fine", "abc\\udc80"]}', '{"inputs": "\\ud800"}', '{"inputs": ["ok", "  "]}', '{"inputs": [1]}',
              '{"inputs": ["zero\\u200bwidth", "\\udfff x"]}', '{"inputs": "bad json"']  # fmt: skip
    good = [json.dumps({"inputs": [t]}, ensure_ascii=False) for t in titles[:24]]
    bodies = good[:12] + poison + good[12:]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/predict", content=b.encode()) for b in bodies))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert codes[:12] + codes[18:] == [200] * 24, codes
    assert all(400 <= c < 500 for c in codes[12:18]), codes
    assert "item 1 is not valid Unicode" in responses[12].json()["error"]
    for resp, text in zip(responses[:12] + responses[18:], titles[:24], strict=True):
        assert_same(resp.json()[0], pipe(text)[0])
    zero_width = post(server.url, {"inputs": ["zero\u200bwidth", "control\x07char"]})  # odd but valid text: answered
    assert zero_width.status_code == 200 and len(zero_width.json()) == 2


def test_one_batch_tells_a_refused_text_from_a_failing_model(served_checkpoint: str, titles: list[str]) -> None:
    """The replica's batch step (`batch_logits`) with the real engine: which step raised decides whose fault it is.

    A text the tokenizer refuses is rejected alone and its batch-mates still share one forward pass; a model run
    that raises (here a session that raises, as a broken ONNX Runtime session would) fails the batch's texts with
    `EngineFailed` and is logged with its traceback, while the refused text stays refused. No input reaches a
    tokenizer failure through the HTTP validation, which is why this runs the step directly (the HTTP path is
    `test_engine_failure_is_a_logged_json_500_and_a_refused_text_still_a_422`).
    """
    from ynat_ray.inference import TextClassifier
    from ynat_ray.serving.replica import EngineFailed, TextRejected, batch_logits

    clf = TextClassifier(served_checkpoint, backend="onnx", threads=1)
    poison = "this title breaks the tokenizer"

    def encode(texts: list[str]) -> dict[str, np.ndarray]:
        if poison in texts:
            raise ValueError("tokenizer rejected the input")
        return clf.encode(texts)

    batch = [*titles[:5], poison, *titles[5:9]]
    rows = batch_logits(encode, clf.runner, batch)
    assert isinstance(rows[5], TextRejected) and "tokenizer rejected" in str(rows[5])
    good = [r for i, r in enumerate(rows) if i != 5]
    assert {size for _, size in good} == {9}  # the other nine still rode in one forward pass
    np.testing.assert_allclose(np.stack([row for row, _ in good]), clf.logits(titles[:9]), atol=1e-5)

    def broken_session(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnxruntime session failed (injected)")

    with errors_logged() as logged:
        rows = batch_logits(encode, broken_session, batch)
    assert isinstance(rows[5], TextRejected)
    assert all(isinstance(r, EngineFailed) and "RuntimeError: onnxruntime session failed" in str(r) for r in rows[:5] + rows[6:])
    assert len(logged) == 1 and logged[0].exc_info and logged[0].exc_info[0] is RuntimeError  # once per batch, with traceback


@contextlib.contextmanager
def errors_logged(name: str = "ray.serve") -> Iterator[list[logging.LogRecord]]:
    """The ERROR records logged to `name` (Serve's replica logger) inside the block."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger(name).addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger(name).removeHandler(handler)


# ---- batching --------------------------------------------------------------------------------------
def test_texts_from_different_requests_share_batches(server: Server, titles: list[str]) -> None:
    """8 one-text requests and one 8-text request at once: some one-text request rides in a batch > 1."""

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            singles = [client.post("/predict", json={"inputs": t}) for t in titles[20:28]]
            return await asyncio.gather(*singles, client.post("/predict", json={"inputs": titles[28:36]}))

    for _ in range(3):  # bounded: the first burst almost always does it
        responses = asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses)
        sizes = [int(r.headers["x-batch-size"]) for r in responses]
        assert max(sizes) <= server.cfg.limits.max_batch_size
        if max(sizes[:8]) > 1 and sizes[8] >= 8:
            return
    pytest.fail(f"no shared batch in 3 bursts; batch sizes {sizes}")


class _Engine:
    """The batch function a `Batcher` gets: records each batch and the thread it ran on, takes `seconds` per pass,
    and holds a batch while its gate is closed (a forward pass in progress, as long as the test needs)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: list[str] = []
        self.seconds = 0.0
        self.gate, self.running = threading.Event(), threading.Event()
        self.gate.set()

    def __call__(self, texts: list[str]) -> list[str]:
        self.batches.append(list(texts))
        self.threads.append(threading.current_thread().name)
        time.sleep(self.seconds)
        self.running.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return [f"row:{t}" for t in texts]

    async def hold_first_pass(self) -> None:
        """Close the gate for the next batch and return once it computes."""
        self.gate.clear()
        self.running.clear()
        assert await asyncio.to_thread(self.running.wait, 10)


def _batching(scenario: Any, **options: Any) -> tuple[Any, _Engine]:
    """Run `scenario(batcher, engine)` on a fresh event loop with a `Batcher` over a one-thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from ynat_ray.serving.batching import Batcher

    engine, sizes = _Engine(), []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute") as pool:
        batcher = Batcher(engine, pool, **{"max_batch_size": 8, "wait_s": 60.0, **options})
        batcher.on_batch = lambda size, seconds: sizes.append(size)
        result = asyncio.run(scenario(batcher, engine))
    assert sizes == [len(b) for b in engine.batches]  # on_batch heard of every batch computed
    return result, engine


def test_batcher_runs_a_lone_request_at_once_whatever_the_wait() -> None:
    """Nothing else queued or on its way: the batch runs now, not after wait_s (60 s here)."""

    async def scenario(batcher, engine):
        return await asyncio.wait_for(batcher.submit(["a", "b"]), 10)

    rows, engine = _batching(scenario)
    assert rows == ["row:a", "row:b"] and engine.batches == [["a", "b"]]


def test_batcher_texts_arriving_during_a_pass_share_the_next_one() -> None:
    """Continuous batching: requests queued while a pass computes form the next batch, up to max_batch_size
    (changed live), texts of one request split across passes when they must, and each gets its rows in order."""

    async def scenario(batcher, engine):
        first = asyncio.create_task(batcher.submit(["a"]))
        await engine.hold_first_pass()
        later = [asyncio.create_task(batcher.submit(texts)) for texts in (["b"], ["c", "d", "e", "f"], ["g"])]
        await asyncio.sleep(0)  # they are queued
        batcher.configure(max_batch_size=4, wait_s=60.0)
        engine.gate.set()
        return await asyncio.wait_for(asyncio.gather(first, *later), 10)

    rows, engine = _batching(scenario, max_batch_size=2)
    assert engine.batches == [["a"], ["b", "c", "d", "e"], ["f", "g"]]
    assert rows == [["row:a"], ["row:b"], ["row:c", "row:d", "row:e", "row:f"], ["row:g"]]


def test_batcher_waits_for_an_accepted_request_and_only_for_it() -> None:
    """A request in the replica that has not queued its texts yet (`visit`) holds a partial batch until it does; one
    that will not (`left()` without texts) releases it; a wait never outlasts wait_s."""

    async def scenario(batcher, engine):
        coming, lost = batcher.visit(), batcher.visit()
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.2)
        waited = list(engine.batches)  # nothing ran: two requests are on their way (wait_s is 60 s)
        second = asyncio.create_task(batcher.submit(["b"], coming))
        await asyncio.sleep(0.2)
        still = list(engine.batches)  # one is still on its way
        lost.left()  # e.g. its body failed validation
        rows = await asyncio.wait_for(asyncio.gather(first, second), 10)
        batcher.configure(max_batch_size=8, wait_s=0.1)
        batcher.visit()  # never queues: the wait ends after wait_s
        rows.append(await asyncio.wait_for(batcher.submit(["c"]), 10))
        return waited, still, rows, batcher.expected

    (waited, still, rows, expected), engine = _batching(scenario)
    assert waited == [] and still == []
    assert engine.batches == [["a", "b"], ["c"]] and rows == [["row:a"], ["row:b"], ["row:c"]]
    assert expected == 1


def test_batcher_runs_a_lone_request_on_the_loop_only_when_that_is_safe() -> None:
    """The one request in the replica, on a model whose last pass was short, runs on the event loop's thread (no hop
    to the compute thread); with a second request in the replica, the compute thread busy, or a slow model, it runs
    on the compute thread. Its rows are the same either way."""
    from ynat_ray.serving.batching import INLINE_MAX_S

    async def lone(batcher, texts: list[str]) -> list[str]:
        visit = batcher.visit()
        try:
            return await asyncio.wait_for(batcher.submit(texts, visit), 10)
        finally:
            visit.left()

    async def scenario(batcher, engine):
        rows = [await lone(batcher, ["first"])]  # no pass measured yet: compute thread
        rows.append(await lone(batcher, ["alone"]))
        other = batcher.visit()  # a second request, still being read
        other.queued()
        rows.append(await lone(batcher, ["with-another"]))
        other.left()
        health = asyncio.create_task(batcher.on_compute(time.sleep, 0.2))
        await asyncio.sleep(0.05)
        rows.append(await lone(batcher, ["thread-busy"]))
        await health
        engine.seconds = 2 * INLINE_MAX_S
        rows.append(await lone(batcher, ["slow-1"]))  # measured slow on the loop (its last pass was fast) ...
        rows.append(await lone(batcher, ["slow-2"]))  # ... so the next runs on the compute thread
        return rows

    rows, engine = _batching(scenario)
    assert rows == [["row:first"], ["row:alone"], ["row:with-another"], ["row:thread-busy"], ["row:slow-1"], ["row:slow-2"]]
    loop_thread = threading.main_thread().name
    assert engine.threads == ["compute_0", loop_thread, "compute_0", "compute_0", loop_thread, "compute_0"], engine.threads


def test_batcher_skips_abandoned_texts_and_survives_a_failing_batch() -> None:
    """Texts of a request that gave up (its timeout) are not computed; a batch function that raises fails its
    batch's requests with that error, and the next batch runs."""

    async def scenario(batcher, engine):
        first = asyncio.create_task(batcher.submit(["a"]))
        await engine.hold_first_pass()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.submit(["gone"]), 0.05)
        kept = asyncio.create_task(batcher.submit(["b"]))
        await asyncio.sleep(0)
        engine.gate.set()
        rows = await asyncio.wait_for(asyncio.gather(first, kept), 10)
        batcher.run = lambda texts: 1 / 0
        with pytest.raises(ZeroDivisionError), errors_logged() as logged:
            await asyncio.wait_for(batcher.submit(["c", "d"]), 10)
        batcher.run = engine
        rows.append(await asyncio.wait_for(batcher.submit(["e"]), 10))
        return rows, len(logged)

    (rows, logged), engine = _batching(scenario)
    assert engine.batches == [["a"], ["b"], ["e"]] and rows == [["row:a"], ["row:b"], ["row:e"]]
    assert logged == 1  # the failing batch is logged once, with its traceback


# ---- precision ------------------------------------------------------------------------------------
def test_bf16_gives_the_fp32_labels(served_checkpoint: str, titles: list[str]) -> None:
    """bf16 autocast (forced; 'auto' picks it only on CPUs with AMX/AVX512-BF16) keeps the fp32 labels."""
    from ynat_ray.inference import TextClassifier

    fp32 = TextClassifier(served_checkpoint, use_gpu=False, precision="fp32").probabilities(titles[:16])
    bf16 = TextClassifier(served_checkpoint, use_gpu=False, precision="bf16").probabilities(titles[:16])
    top2 = np.sort(fp32, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.01  # bf16 moves scores by ~1e-3; a closer call may legitimately flip
    assert clear.sum() >= 8
    assert (fp32.argmax(1)[clear] == bf16.argmax(1)[clear]).all()
    assert np.abs(fp32 - bf16).max() < 0.02


# ---- backpressure and timeouts (small side apps) --------------------------------------------------
@pytest.fixture()
def side_app(server: Server):
    """Deploy a second app at /side with the given overrides (and deployment class); delete it afterwards."""
    from ray import serve

    from ynat_ray.serving.app import build_app
    from ynat_ray.serving.replica import YnatServer

    def deploy(deployment: Any = YnatServer, **overrides: Any) -> str:
        cfg = _cfg(server.checkpoint, replica_cpus=0.25, min_replicas=1, max_replicas=1, **overrides)
        serve.run(build_app(cfg, deployment), name="side", route_prefix="/side")
        url = f"{server.url}/side"
        assert _wait(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60)
        return url

    yield deploy
    serve.delete("side")


def _slow_replica(side_app, seconds: float, **overrides: Any) -> str:
    """A side app whose one replica's engine takes `seconds` per batch (the product's code, its model run slowed
    by `_engine_faults`), with no health check during the test (each would also take `seconds`)."""
    from ray import serve

    url = side_app(_engine_faults(), health_check_period_s=600.0, **overrides)
    serve.get_app_handle("side").slow_engine.remote(seconds).result()
    return url


async def _hold_and_knock(url: str, hold: list[str], knock: list[str]) -> tuple[list[httpx.Response], list[httpx.Response], float]:
    """Fill a replica with one request per `hold` text, then send one `knock` request after another: the held
    responses, the knocks' responses, and how long the knocks took."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        held = [asyncio.create_task(client.post("/predict", json={"inputs": t})) for t in hold]
        await _until_busy(client)
        started = time.monotonic()
        turned_away = [await client.post("/predict", json={"inputs": t}) for t in knock]
        took = time.monotonic() - started
        return list(await asyncio.gather(*held)), turned_away, took


def test_backpressure_answers_json_503_with_retry_after(side_app, titles: list[str]) -> None:
    """A replica holding max_ongoing_requests turns the next request away at once with a JSON 503.

    Deterministic: the replica's engine takes 3 s per batch, so two 1-text requests (the first computing, the
    second queued for the next pass) keep it full for 3 s or more whatever the machine's speed; every request
    sent meanwhile must get the JSON 503. (The batcher runs a lone request at once, so a batch waiting to fill
    can no longer hold a replica full.)
    """
    url = _slow_replica(side_app, 3.0, max_ongoing_requests=2, max_batch_size=16)
    held, turned_away, took = asyncio.run(_hold_and_knock(url, titles[:2], titles[3:13]))
    assert [r.status_code for r in held] == [200, 200]
    assert [r.status_code for r in turned_away] == [503] * 10
    for r in turned_away:  # JSON with Retry-After, answered at once (not queued behind the batch)
        assert int(r.headers["retry-after"]) >= 1
        assert r.headers["content-type"] == "application/json" and "server busy" in r.json()["error"]
    assert took < 2.5, f"503s took {took:.1f}s: they were queued, not turned away"
    assert post(url, {"inputs": titles[0]}).status_code == 200  # and it recovers


async def _until_busy(client: httpx.AsyncClient, timeout_s: float = 10.0) -> None:
    """Wait (bounded) until the replica reports itself full: the held requests have arrived."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = (await client.get("/info")).json()
        if info["ongoing_requests"] >= info["max_ongoing_requests"]:
            return
        await asyncio.sleep(0.05)
    pytest.fail("the replica never filled up")


def test_request_timeout_answers_504(side_app, titles: list[str]) -> None:
    """An engine slower than request_timeout_s: the client gets a JSON 504, not a hang."""
    url = _slow_replica(side_app, 2.0, max_batch_size=4, max_ongoing_requests=4, request_timeout_s=0.5)
    started = time.monotonic()
    resp = post(url, {"inputs": titles[0]})
    assert resp.status_code == 504, resp.text
    assert "within 0.5s" in resp.json()["error"]
    assert time.monotonic() - started < 1.9


# ---- typed errors: a refused text vs a failing engine, through HTTP ------------------------------------
def _engine_faults() -> Any:
    """`YnatServer` with a few methods a test calls on the live replica through a Serve handle: make its tokenizer
    refuse one text, make its model run raise from now on (as a broken ONNX Runtime session or an out-of-memory
    error would) or take longer, and read back the errors the replica logged. Everything else is the product's own code.

    Defined in a function so that Serve ships the class to the replica by value, not by an import of this module;
    its methods use nothing from this module but `logging` (and `time`, imported where used).
    """
    from ynat_ray.serving.replica import YnatServer

    class EngineFaults(YnatServer.func_or_class):
        def refuse_text(self, poison: str) -> None:
            encode = self.clf.encode

            def picky_encode(texts):
                if poison in texts:
                    raise ValueError(f"tokenizer refuses {poison!r} (injected)")
                return encode(texts)

            self.clf.encode = picky_encode

        def break_engine(self, message: str) -> None:
            def failing_run(input_ids, attention_mask):
                raise RuntimeError(message)

            self.clf.runner = failing_run

        def slow_engine(self, seconds: float) -> None:
            """From now on each model run takes `seconds` more than the real one (0: the real speed again)."""
            import time

            run = self.real_run = getattr(self, "real_run", self.clf.runner)

            def slow_run(input_ids, attention_mask):
                time.sleep(seconds)
                return run(input_ids, attention_mask)

            self.clf.runner = slow_run

        def capture_errors(self) -> None:
            self.errors = []
            handler = logging.Handler(logging.ERROR)
            handler.emit = self.errors.append
            logging.getLogger("ray.serve").addHandler(handler)

        def captured_errors(self) -> list:
            """(message, exception type name) of each ERROR record; LogRecords with tracebacks do not pickle."""
            return [(r.getMessage(), r.exc_info[0].__name__ if r.exc_info else "") for r in self.errors]

    return YnatServer.options(func_or_class=EngineFaults)


def test_engine_failure_is_a_logged_json_500_and_a_refused_text_still_a_422(side_app, titles: list[str]) -> None:
    """TEI's typed errors over real HTTP, on one live replica whose tokenizer refuses one text and then whose model breaks.

    - A text the tokenizer refuses: its request gets a 422 naming the item (`error_type: tokenizer`); requests
      sharing its batch get their answers, and nothing is logged as a server error.
    - The model run raising: every request that reached it gets a JSON 500 (`error_type: engine`) and the replica
      logs the failure with its traceback; a request whose only text the tokenizer refuses is still a 422.
    """
    from ray import serve

    # One replica, batches that wait to fill so the burst's requests share them, and no health check during the
    # test: with a broken model it would (rightly) fail and Serve would replace the replica under the test.
    url = side_app(_engine_faults(), max_batch_size=16, batch_wait_timeout_s=0.2, health_check_period_s=600.0)
    replica = serve.get_app_handle("side")
    poison = "토크나이저가 거부하는 제목"
    replica.refuse_text.remote(poison).result()
    replica.capture_errors.remote().result()

    async def burst(bodies: list[dict[str, Any]]) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return list(await asyncio.gather(*(client.post("/predict", json=body) for body in bodies)))

    responses = asyncio.run(burst([{"inputs": t} for t in titles[:4]] + [{"inputs": [titles[4], poison]}]))
    assert [r.status_code for r in responses] == [200] * 4 + [422], [r.text for r in responses]
    refused = responses[4].json()
    assert refused["error_type"] == "tokenizer" and refused["error"].startswith("inputs[1] cannot be processed by the model's tokenizer")
    assert "tokenizer refuses" in refused["error"]
    assert not [m for m, _ in replica.captured_errors.remote().result() if "model failed" in m]

    replica.break_engine.remote("CUDA out of memory (injected by the test)").result()
    responses = asyncio.run(burst([{"inputs": t} for t in titles[:3]] + [{"inputs": [poison]}]))
    assert [r.status_code for r in responses] == [500] * 3 + [422], [r.text for r in responses]
    for resp in responses[:3]:
        assert resp.headers["content-type"] == "application/json"
        body = resp.json()
        assert body["error_type"] == "engine" and "RuntimeError: CUDA out of memory (injected by the test)" in body["error"]
    assert responses[3].json()["error_type"] == "tokenizer"  # the refused text is still the text's fault
    logged = [(m, exc) for m, exc in replica.captured_errors.remote().result() if "model failed" in m]
    assert logged and all(exc == "RuntimeError" for _, exc in logged), logged  # logged with the exception's traceback


# ---- Prometheus metrics (the replica's own, on Ray's metrics export port) ------------------------------
def _scrape(port: int) -> tuple[str, list[tuple[str, Any]]]:
    """Ray's metrics endpoint as text, and every sample with its family's type, read by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return text, [(family.type, sample) for family in text_string_to_metric_families(text) for sample in family.samples]


def _replica_metrics(samples: list[tuple[str, Any]], replica: str) -> dict[str, Any]:
    """What one replica exported, summed the way a dashboard would (sum by the label asked for)."""
    from ynat_ray.serving.telemetry import EXPOSED, TOPIC_SLUGS

    mine = [s for _, s in samples if s.labels.get("replica") == replica]

    def total(name: str, **labels: str) -> float:
        return sum(s.value for s in mine if s.name == name and labels.items() <= s.labels.items())

    classes = ("2xx", "4xx", "5xx")
    return {
        "requests": {c: total(EXPOSED["requests"], status_class=c) for c in classes},
        "latency_count": {c: total(f"{EXPOSED['latency']}_count", status_class=c) for c in classes},
        "refused": total(EXPOSED["refused"]),
        "texts": total(EXPOSED["texts"]),
        "predictions": {label: n for label in LABELS if (n := total(EXPOSED["predictions"], label=TOPIC_SLUGS[label]))},
    }


def test_prometheus_metrics_count_what_was_sent(side_app, titles: list[str]) -> None:
    """Known traffic to a fresh replica, then a scrape of Ray's metrics export port (Prometheus text format): the
    replica's counters and histograms say what the client saw, by status class and by predicted label.

    Traffic: with the engine slowed to 2 s per batch, 2 requests held and 3 turned away by admission control
    (503); then, at full speed, 6 answered requests (8 texts, 1 and 3 per request) and 5 refused as the client's
    fault (422 from the schema and from the handler, 413, 400). Ray pushes metrics every few seconds, so the
    test polls (bounded).
    """
    import ray
    from ray import serve

    from ynat_ray.serving.telemetry import EXPOSED

    url = _slow_replica(side_app, 2.0, max_ongoing_requests=2, max_batch_size=16)
    held, turned_away, _ = asyncio.run(_hold_and_knock(url, titles[8:10], titles[10:13]))
    assert [r.status_code for r in held + turned_away] == [200, 200, 503, 503, 503]
    serve.get_app_handle("side").slow_engine.remote(0.0).result()
    ok = [post(url, {"inputs": t}) for t in titles[:4]]
    ok += [post(url, {"inputs": titles[4:7]}), post(url, {"inputs": titles[7], "parameters": {"top_k": 1}})]
    bad = [post(url, body) for body in ({"inputs": ""}, {"inputs": "x", "foo": 1}, {"inputs": titles[0], "parameters": {"top_k": 8}})]
    bad += [post(url, {"inputs": titles[:9]}), post(url, content='{"inputs": ')]
    assert [r.status_code for r in ok + bad] == [200] * 6 + [422, 422, 422, 413, 400]

    answered = [r for r in ok + bad + held + turned_away if r.status_code == 200]
    top_labels = [per_text[0]["label"] for r in answered for per_text in r.json()]
    want = {
        "requests": {"2xx": 8, "4xx": 5, "5xx": 3},
        "latency_count": {"2xx": 8, "4xx": 5, "5xx": 3},
        "refused": 3,
        "texts": 10,
        "predictions": dict(Counter(top_labels)),
    }
    replica = answered[0].headers["x-replica-id"]
    node = httpx.get(f"{url}/info").json()["node_id"]
    port = next(n["MetricsExportPort"] for n in ray.nodes() if n["NodeID"] == node)
    seen: dict[str, Any] = {}

    def counted() -> bool:
        nonlocal seen, text, samples
        text, samples = _scrape(port)
        seen = _replica_metrics(samples, replica)
        return seen == want

    text, samples = "", []
    assert _wait(counted, 90, every_s=2.0), f"scraped {seen}, sent {want}"
    types = {s.name: kind for kind, s in samples if s.labels.get("replica") == replica}
    for key in ("requests", "refused", "texts", "predictions"):
        assert types[EXPOSED[key]] == "counter", (key, types)
        assert f"# TYPE {EXPOSED[key]} counter" in text  # the exposed name ends in _total exactly once
    for key in ("latency", "batch_size", "engine"):
        assert types[f"{EXPOSED[key]}_count"] == "histogram", (key, types)
    assert "_total_total" not in text
    mine = [s for _, s in samples if s.labels.get("replica") == replica]
    # One observation per batch in both histograms, and at most one batch per text computed (10). (Their
    # `_sum`s are not checked: Ray rebuilds histograms from bucket midpoints, so a sum is approximate, ray#64852.)
    count = {s.name: s.value for s in mine if s.name.endswith("_count")}
    assert count[f"{EXPOSED['engine']}_count"] == count[f"{EXPOSED['batch_size']}_count"], count
    assert 1 <= count[f"{EXPOSED['batch_size']}_count"] <= 10, count
    assert all(s.labels.get("application") == "side" and s.labels.get("deployment") == "YnatClassifier" for s in mine)
    print("\n".join(line for line in text.splitlines() if "ray_ynat_" in line and replica in line and "_bucket" not in line))


# ---- autoscaling and failure recovery -------------------------------------------------------------
async def _load(url: str, texts: list[str], *, until: Any, deadline_s: float, concurrency: int = 8) -> int:
    """Keep `concurrency` requests in flight until `until()` is true or the deadline passes; return requests sent."""
    sent = 0
    stop_at = time.monotonic() + deadline_s

    async def worker(client: httpx.AsyncClient, k: int) -> None:
        nonlocal sent
        while time.monotonic() < stop_at and not until():
            await client.post("/predict", json={"inputs": texts[(sent + k) % len(texts)]})
            sent += 1

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
    return sent


def test_autoscaling_goes_to_two_replicas_under_load_and_back(server: Server, titles: list[str]) -> None:
    assert _wait(lambda: replicas() == 1, 60), "expected 1 replica before the load"
    checks = {"last": 0.0, "up": False}

    def scaled_up() -> bool:  # serve.status() is a controller call: ask at most twice a second
        if time.monotonic() - checks["last"] > 0.5:
            checks["last"] = time.monotonic()
            checks["up"] = replicas() == 2
        return checks["up"]

    sent = asyncio.run(_load(server.url, titles, until=scaled_up, deadline_s=90))
    assert checks["up"], f"still {replicas()} replica(s) after {sent} requests"
    assert _wait(lambda: replicas() == 1, 90), "did not scale back to 1 replica when idle"


def test_killing_a_replica_mid_load_loses_no_request(server: Server, titles: list[str], pipe) -> None:
    """Kill the model replica's process while a retrying client runs; every request ends in a correct 200."""
    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address  # explicit: another Ray instance on the machine must not confuse it
    alive_replicas = [("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")]
    expected = {t: pipe(t)[0][0]["label"] for t in titles[:31]}
    results: dict[int, httpx.Response] = {}
    failed_attempts: list[str] = []  # what the client saw before retrying: 503s from the ingress, dropped connections
    state = {"inflight": 0, "inflight_at_kill": -1, "killed": ""}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state["inflight"] += 1
            try:
                resp = await client.post("/predict", json={"inputs": titles[i % 30 : i % 30 + 2]})
            except httpx.TransportError as err:
                resp, failure = None, type(err).__name__
            else:
                failure = str(resp.status_code)
            finally:
                state["inflight"] -= 1
            if resp is not None and resp.status_code < 500:
                results[i] = resp
                return
            failed_attempts.append(failure)
            await asyncio.sleep(min(1.0, float(resp.headers.get("retry-after", 0.2)) if resp is not None else 0.2))

    async def killer() -> None:
        deadline = time.monotonic() + 30
        while (len(results) < 10 or state["inflight"] < 4) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        victim = list_actors(address=gcs, filters=alive_replicas)[0]
        state["inflight_at_kill"] = state["inflight"]
        ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
        state["killed"] = victim.actor_id

    async def run() -> None:
        sem = asyncio.Semaphore(6)

        async def bounded(client: httpx.AsyncClient, i: int) -> None:
            async with sem:
                await one(client, i)

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await asyncio.gather(killer(), *(bounded(client, i) for i in range(80)))

    asyncio.run(run())
    assert state["killed"] and state["inflight_at_kill"] >= 1, state
    assert sorted(results) == list(range(80)), f"lost requests: {sorted(set(range(80)) - set(results))}"
    for i, resp in results.items():
        assert resp.status_code == 200, resp.text
        assert [p[0]["label"] for p in resp.json()] == [expected[t] for t in titles[i % 30 : i % 30 + 2]]
    # What a client may see while the only replica is replaced: the connection dropped mid-request, or a plain
    # 500 (HAProxy rewrites its own 502/503/504 to 500) / 503 (Serve's proxy) until the new replica is up.
    assert set(failed_attempts) <= {"500", "503", "ReadError", "RemoteProtocolError", "ConnectError"}, failed_attempts
    # the app recovers: a new replica (not the killed one) is running and the app is ready
    assert _wait(lambda: replicas() >= 1 and httpx.get(f"{server.url}/readyz").status_code == 200, 60)
    alive = {a.actor_id for a in list_actors(address=gcs, filters=alive_replicas)}
    assert alive and state["killed"] not in alive
    seen = failed_attempts or "no failure"
    print(f"\nkilled a replica with {state['inflight_at_kill']} request(s) in flight; client saw {seen}; 80/80 correct")


def _wait(predicate: Any, timeout_s: float, every_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return False
