"""HTTP load on loopback: the Ray Serve app (ynat_ray.serving) against a naive baseline, same checkpoint, same run.

  (a) ynat-ray on Ray Serve: proxy -> FastAPI ingress (validation) -> model replica with @serve.batch
      over texts (dynamic padding, inference_mode). 1 replica holding `--replica_cpus` CPUs, autoscaling
      pinned (min = max = 1) so the numbers measure batching, not scaling.
  (b) naive: one uvicorn + FastAPI process whose endpoint calls `transformers.pipeline(...)` per request
      (an `async def` endpoint, so requests run one at a time, the way such servers usually start out).

Both get the same real YNAT titles (embedded test split) as requests of 1 and of 8 texts, at several
concurrency levels, from a closed-loop asyncio + httpx client in this process. Each cell runs for
`--duration` seconds or `--max_requests` requests, whichever comes first, after a short warm-up; then it
stops by itself. Reports req/s, texts/s, p50/p99 latency and errors, and the app/baseline texts/s ratio
measured in the same run (absolute numbers on a shared 2-core machine are noisy; ratios less so).
Also measures the model alone in fp32 vs bf16 autocast (texts/s), since `precision=auto` picks fp32 on
CPUs without AMX/AVX512-BF16.

    python bench/serve_load.py                                  # ynat-tiny, then ynat-small (6 x 384)
    python bench/serve_load.py --models ynat-small --duration 5
    python bench/serve_load.py --checkpoint /path/to/checkpoint --models trained

With no --checkpoint, each preset gets an *untrained* checkpoint (a WordPiece tokenizer trained on the
embedded titles + a randomly initialised model, saved with save_pretrained): serving speed does not
depend on the weights' values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ynat_ray.data import embedded_split  # noqa: E402

MAX_LEN = 64
HERE = Path(__file__).resolve().parent


@dataclass
class Cell:
    model: str
    server: str
    texts_per_request: int
    concurrency: int
    requests: int
    errors: int
    seconds: float
    req_per_s: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_checkpoint(preset: str, out_dir: str) -> str:
    """An untrained preset checkpoint in HF format (tokenizer trained on the embedded titles)."""
    from ynat_ray.modeling import build_model, train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(embedded_split("train")["title"].tolist(), vocab_size=8000, max_length=MAX_LEN)
    model = build_model(preset, tokenizer, MAX_LEN)
    path = os.path.join(out_dir, preset)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---- the load generator ------------------------------------------------------------------------------
async def run_cell(url: str, titles: list[str], texts_per_request: int, concurrency: int, duration: float, max_requests: int) -> dict:
    """Closed loop: `concurrency` workers each send a request, wait for it, send the next; stop at the deadline or cap."""
    latencies: list[float] = []
    errors = 0
    sent = 0

    async def worker(client: httpx.AsyncClient, stop_at: float, record: bool) -> None:
        nonlocal errors, sent
        while time.perf_counter() < stop_at and sent < max_requests:
            start_i = (sent * texts_per_request) % (len(titles) - texts_per_request)
            sent += 1
            body = {"inputs": titles[start_i : start_i + texts_per_request]}
            t0 = time.perf_counter()
            try:
                resp = await client.post("/predict", json=body)
                ok = resp.status_code == 200 and len(resp.json()) == texts_per_request
            except httpx.HTTPError:
                ok = False
            if record:
                latencies.append(time.perf_counter() - t0)
                errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        warm_until = time.perf_counter() + min(2.0, duration / 3)
        await asyncio.gather(*(worker(client, warm_until, False) for _ in range(concurrency)))
        sent = 0
        start = time.perf_counter()
        await asyncio.gather(*(worker(client, start + duration, True) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    lat_ms = np.array(latencies) * 1000
    done = len(latencies)
    return dict(
        requests=done,
        errors=errors,
        seconds=round(seconds, 2),
        req_per_s=round(done / seconds, 1),
        texts_per_s=round((done - errors) * texts_per_request / seconds, 1),
        p50_ms=round(float(np.percentile(lat_ms, 50)), 1) if done else float("nan"),
        p99_ms=round(float(np.percentile(lat_ms, 99)), 1) if done else float("nan"),
    )


def measure(server: str, model: str, url: str, titles: list[str], args: argparse.Namespace) -> list[Cell]:
    cells = []
    for n in args.texts:
        for c in args.concurrency:
            result = asyncio.run(run_cell(url, titles, n, c, args.duration, args.max_requests))
            cell = Cell(model=model, server=server, texts_per_request=n, concurrency=c, **result)
            print(f"  {server:<9} {n} text(s)/req  concurrency {c:>3}: {cell.req_per_s:>7} req/s {cell.texts_per_s:>8} texts/s "
                  f"p50 {cell.p50_ms} ms p99 {cell.p99_ms} ms errors {cell.errors}", flush=True)  # fmt: skip
            cells.append(cell)
    return cells


def wait_ready(url: str, path: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}{path} not ready after {timeout_s}s")


# ---- (b) the naive baseline server (this file, run as a subprocess) ---------------------------------
def baseline_server(checkpoint: str, port: int) -> None:
    """One uvicorn process; each request calls pipeline() on its texts (no cross-request batching)."""
    import uvicorn
    from fastapi import FastAPI
    from transformers import pipeline

    pipe = pipeline("text-classification", model=checkpoint, top_k=None, device=-1, truncation=True)
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(body: dict) -> list:
        return pipe(body["inputs"])  # one list of {label, score} per input, like the app

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run_baseline(checkpoint: str, model: str, titles: list[str], args: argparse.Namespace) -> list[Cell]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", checkpoint, "--port", str(port)])
    try:
        wait_ready(f"http://127.0.0.1:{port}", "/healthz")
        return measure("naive", model, f"http://127.0.0.1:{port}", titles, args)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- (a) the Serve app ----------------------------------------------------------------------------
def run_app(checkpoint: str, model: str, titles: list[str], args: argparse.Namespace, port: int) -> list[Cell]:
    from ray import serve

    from ynat_ray.config import YnatConfig
    from ynat_ray.serving import build_app

    cfg = YnatConfig(
        checkpoint=checkpoint,
        max_length=MAX_LEN,
        min_replicas=1,
        max_replicas=1,
        replica_cpus=args.replica_cpus,
        max_batch_size=args.max_batch_size,
        max_ongoing_requests=max(64, args.max_batch_size),
        batch_wait_timeout_s=args.batch_wait_timeout_s,
    )
    serve.run(build_app(cfg), name="bench", route_prefix="/")
    try:
        wait_ready(f"http://127.0.0.1:{port}", "/readyz")
        return measure("ray-serve", model, f"http://127.0.0.1:{port}", titles, args)
    finally:
        serve.delete("bench")


def precision_speed(checkpoint: str, titles: list[str], threads: int) -> dict[str, float]:
    """The model alone, batches of 32 titles: texts/s in fp32 and in bf16 autocast (forced)."""
    import torch

    from ynat_ray.inference import TextClassifier

    torch.set_num_threads(threads)
    out = {}
    for precision in ("fp32", "bf16"):
        clf = TextClassifier(checkpoint, use_gpu=False, precision=precision, max_length=MAX_LEN)
        clf.probabilities(titles[:64], batch_size=32)  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            clf.probabilities(titles, batch_size=32)
        out[precision] = round(3 * len(titles) / (time.perf_counter() - start), 1)
    return out


# ---- report -------------------------------------------------------------------------------------------
def table(cells: list[Cell]) -> str:
    naive = {(c.model, c.texts_per_request, c.concurrency): c for c in cells if c.server == "naive"}
    rows = [
        "| model | server | texts/req | concurrency | requests | req/s | texts/s | p50 ms | p99 ms | errors | texts/s vs naive |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        base = naive.get((c.model, c.texts_per_request, c.concurrency))
        ratio = f"{c.texts_per_s / base.texts_per_s:.2f}x" if base and base.texts_per_s and c.server != "naive" else ""
        rows.append(
            f"| {c.model} | {c.server} | {c.texts_per_request} | {c.concurrency} | {c.requests} | {c.req_per_s} | {c.texts_per_s} "
            f"| {c.p50_ms} | {c.p99_ms} | {c.errors} | {ratio} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ynat-tiny", "ynat-small"], help="Presets to build untrained checkpoints for.")
    parser.add_argument("--checkpoint", default=None, help="Use this checkpoint instead (one model, named by --models).")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--texts", type=int, nargs="+", default=[1, 8], help="Texts per request.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per cell (after warm-up).")
    parser.add_argument("--max_requests", type=int, default=20_000, help="Cap per cell.")
    parser.add_argument("--replica_cpus", type=float, default=2.0, help="CPUs (= torch threads) of the one model replica.")
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_wait_timeout_s", type=float, default=0.005)
    parser.add_argument("--out", default=str(HERE / "results"), help="Directory for the JSON results.")
    parser.add_argument("--baseline-server", dest="baseline_server", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server, args.port)
        return
    if args.checkpoint and len(args.models) != 1:
        parser.error("--checkpoint takes exactly one --models name")

    import ray
    from ray import serve

    titles = embedded_split("test")["title"].tolist()
    cores = os.cpu_count() or 2
    # Logical CPUs: the replica's share plus room for the 0.1-CPU ingress (the proxy and controller take none).
    ray.init(num_cpus=max(cores, int(np.ceil(args.replica_cpus + 0.1))), include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cells: list[Cell] = []
    speeds: dict[str, dict[str, float]] = {}
    started = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for model in args.models:
                checkpoint = args.checkpoint or make_checkpoint(model, tmp)
                print(f"== {model}: {checkpoint}", flush=True)
                cells += run_baseline(checkpoint, model, titles, args)
                cells += run_app(checkpoint, model, titles, args, port)
                speeds[model] = precision_speed(checkpoint, titles[:512], max(1, int(args.replica_cpus)))
                print(f"  model alone, batches of 32: {speeds[model]} texts/s", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"\n{table(cells)}\n")
    for model, s in speeds.items():
        print(f"{model}: model alone fp32 {s['fp32']} texts/s, bf16 autocast {s['bf16']} texts/s (bf16/fp32 = {s['bf16'] / s['fp32']:.2f})")
    os.makedirs(args.out, exist_ok=True)
    out = Path(args.out) / f"serve_load_{int(started)}.json"
    out.write_text(json.dumps({"args": vars(args), "cells": [asdict(c) for c in cells], "precision_speed": speeds}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
