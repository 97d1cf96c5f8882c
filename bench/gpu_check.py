"""One-shot GPU check: train, serve and batch-score on one lent GPU, in one run, with one table at the end.

Why this exists: GPU machines are lent to this project rarely and briefly (one run, minutes). So this
script does everything a GPU run must prove in a single invocation, through the project's real code paths,
and never lets one failing step hide the others:

  1. train    `ynat_ray.train.run_training`: a 1-worker TorchTrainer (use_gpu, NCCL, bf16 autocast) of a
              roberta-base-shaped encoder (12 x 768, 12 heads, 3072 FFN; random init; a 32k WordPiece
              vocabulary built by `ynat_ray.modeling`) on the embedded YNAT rows for a fixed number of steps.
              Reports samples/s (the loop's own `train_samples_per_s`) and MFU against the GPU's bf16 peak.
  2. serve    `ynat_ray.serving.build_app` on Ray Serve with one GPU replica, step 1's checkpoint: checks
              that /predict answers 200 with one list of {label, score} per title, then p50 latency over
              sequential requests and texts/s under a bounded concurrent burst; /info's backend.
  3. batch    `ynat_ray.batch.run_batch_prediction` with one GPU actor over ~20k rows: rows/s and seconds.

Each step's error is caught and written into its table row; steps 2 and 3 fall back to the untrained model
directory when step 1 failed after building it (the row says so). Results are written after every step
(JSON + markdown in --out), so even a run killed by its time limit leaves what it measured.

`--cpu-dry-run` runs the same three steps on CPU with the `ynat-tiny` shape and small counts, sized for a
2-CPU cluster, so this script is exercised by the test suite (tests/test_gpu_check.py) and cannot rot.

Ray is joined or started only when this process is not connected yet (RAY_ADDRESS is honoured), and left as
found: a cluster started here is shut down, Serve is shut down unless it was already running.

    python bench/gpu_check.py                      # on the GPU machine (~4-6 min)
    python bench/gpu_check.py --cpu-dry-run        # anywhere, ~1 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is not a package; run from a checkout like the other bench scripts

# This check never reaches the Hugging Face hub (GPU machines are offline); fail fast instead of hanging on it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

STEPS = ("train", "serve", "batch")
SERVE_APP = "gpu-check"
ERROR_CHARS = 300  # error text kept in a table row (the JSON keeps the whole traceback)

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in TFLOPS, from NVIDIA's datasheets, which quote the sparse
# figure ("with sparsity"); dense is half of it. H100 SXM5 1979 -> 989.4, H100 PCIe 1513 -> 756, H100 NVL and
# H200 NVL 1671 -> 835.5 (H100 datasheet; H200 datasheet), H200 SXM 1979 -> 989.4 (H200 datasheet), A100
# 624 -> 312 (A100 datasheet, SXM and PCIe alike), L4 242 -> 121 (L4 datasheet). Boost clocks, so these are
# upper bounds a real run can approach but not reach. First match wins, hence the specific names first.
PEAK_BF16_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"H200\s*NVL", "H200 NVL", 835.5),
    (r"H200", "H200 SXM", 989.4),
    (r"H100\s*PCIe", "H100 PCIe", 756.0),
    (r"H100\s*NVL", "H100 NVL", 835.5),
    (r"H100", "H100 SXM", 989.4),
    (r"A100", "A100", 312.0),
    (r"\bL4\b", "L4", 121.0),
)


# ---------------------------------------------------------------------------------------------
# What to run


@dataclass(frozen=True)
class Plan:
    """Every number the run uses, resolved from the flags and the mode, and recorded in the JSON."""

    mode: str  # "gpu" or "cpu-dry-run"
    shape_name: str  # a name for the model shape (a preset name, or the one we propose adding)
    shape: tuple[int, int, int, int]  # hidden_size, num_hidden_layers, num_attention_heads, intermediate_size
    vocab_size: int
    max_length: int
    steps: int
    batch_size: int
    eval_rows: int
    learning_rate: float
    use_gpu: bool
    precision: str
    replica_cpus: float
    replica_gpus: float
    actor_cpus: float
    actor_gpus: float
    batch_rows: int
    texts_per_request: int
    latency_requests: int
    burst_requests: int
    concurrency: int


# Mode defaults; any flag given on the command line overrides them. The dry-run numbers fit a 2-CPU cluster:
# training takes 1.5 CPU (plan_workers leaves 0.5 for Ray Data); the replica 0.5 CPU; the batch actor 0.5 CPU
# plus 0.25 + 0.25 for Ray Data's read and write tasks (batch.check_cpu_budget).
DEFAULTS: dict[str, dict[str, Any]] = {
    "gpu": dict(
        shape_name="ynat-base", shape=(768, 12, 12, 3072), steps=75, batch_size=128, eval_rows=256, learning_rate=1e-4,
        use_gpu=True, precision="bf16", replica_cpus=1.0, replica_gpus=1.0, actor_cpus=1.0, actor_gpus=1.0,
        batch_rows=20_000, latency_requests=50, burst_requests=200, concurrency=16,
    ),
    "cpu-dry-run": dict(
        shape_name="ynat-tiny", shape=(128, 2, 4, 512), steps=6, batch_size=16, eval_rows=32, learning_rate=1e-3,
        use_gpu=False, precision="auto", replica_cpus=0.5, replica_gpus=0.0, actor_cpus=0.5, actor_gpus=0.0,
        batch_rows=300, latency_requests=20, burst_requests=48, concurrency=4,
    ),
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="One-shot GPU check of ynat-ray: TorchTrainer fit (samples/s, MFU), a GPU Serve replica (p50, texts/s) "
        "and predict-batch on a GPU actor (rows/s), printed as one markdown table and saved as JSON + markdown.",
    )
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="Run the same three steps on CPU with the ynat-tiny shape and small counts (fits a 2-CPU cluster); MFU is n/a.",
    )
    parser.add_argument(
        "--out",
        default=str(REPO / "bench" / "results"),
        help="Directory for gpu_check_<mode>_<time>.json and .md. Default: bench/results/.",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="Where the model, checkpoints and batch files go. Default: a temporary directory, deleted at the end (a given one is kept).",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Training steps (max_train_samples = steps x batch size, 1 epoch; capped by the 10k embedded training rows). Default: 75 on GPU, 6 dry-run.",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="Training batch size of the single worker. Default: 128 on GPU, 16 dry-run."
    )
    parser.add_argument(
        "--eval-rows",
        type=int,
        default=None,
        help="Validation/test rows (max_eval_samples) for the end-of-training evaluation and ONNX parity. Default: 256 on GPU, 32 dry-run.",
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=32_000,
        help="WordPiece vocabulary size asked of the tokenizer trainer (the embedded titles may yield fewer; the actual size is reported). Default: 32000.",
    )
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="Rows for predict-batch (the embedded validation rows repeated). Default: 20000 on GPU, 300 dry-run.",
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=None,
        help="Sequential /predict requests for the latency percentiles. Default: 50 on GPU, 20 dry-run.",
    )
    parser.add_argument(
        "--burst-requests", type=int, default=None, help="Requests in the concurrent burst (texts/s). Default: 200 on GPU, 48 dry-run."
    )
    parser.add_argument("--concurrency", type=int, default=None, help="Requests in flight during the burst. Default: 16 on GPU, 4 dry-run.")
    parser.add_argument("--texts-per-request", type=int, default=8, help="Titles per /predict request. Default: 8.")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    values = dict(DEFAULTS[mode])
    for name in ("steps", "batch_size", "eval_rows", "batch_rows", "latency_requests", "burst_requests", "concurrency"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    from ynat_ray.checkpoint import DEFAULT_MAX_LENGTH

    plan = Plan(mode=mode, vocab_size=args.vocab_size, max_length=DEFAULT_MAX_LENGTH, texts_per_request=args.texts_per_request, **values)
    for name in (
        "steps",
        "batch_size",
        "eval_rows",
        "batch_rows",
        "latency_requests",
        "burst_requests",
        "concurrency",
        "texts_per_request",
    ):
        if getattr(plan, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    return plan


# ---------------------------------------------------------------------------------------------
# Bookkeeping: one row per step, written to disk after every step


@dataclass
class StepResult:
    step: str
    what: str = ""
    figures: str = ""
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class State:
    """What the steps hand to each other, and what must be undone at the end."""

    work: str
    model_dir: str | None = None  # untrained HF directory (tokenizer + random-init weights)
    checkpoint: str | None = None  # step 1's best checkpoint
    serve_was_running: bool = False
    serve_started: bool = False


T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[gpu_check +{time.perf_counter() - T0:6.1f}s] {message}", flush=True)


def _cell(text: str) -> str:
    """Table cells: one line, no pipes."""
    return " ".join(str(text).replace("|", "/").split())


def markdown_table(results: list[StepResult]) -> str:
    lines = ["| step | what | figure(s) | seconds |", "|---|---|---|---|"]
    for r in results:
        figures = r.figures if r.ok else f"ERROR {r.error}"
        lines.append(f"| {r.step} | {_cell(r.what)} | {_cell(figures)} | {r.seconds:.1f} |")
    return "\n".join(lines)


NOTES = (
    "MFU = achieved model FLOP/s / the GPU's dense bf16 peak. Model FLOPs per training sample = "
    "6·N·s + 12·L·d·s² (forward + backward: 2·N per token forward, twice that backward, plus the attention "
    "score and value matmuls, 4·L·d·s per token forward), N = non-embedding parameters (encoder + classifier head; "
    "embedding lookups are not matmuls), L layers, d hidden size, s the batch's padded length. Batches are padded per "
    "batch to their longest title, so s is taken from the real tokenized training rows: they are shuffled into "
    "batches of the training batch size many times and each batch's padded length is measured; 'padded' MFU counts "
    "the tokens the GPU actually computed, 'real' counts only non-pad tokens (useful work). samples/s is the loop's "
    "own train_samples_per_s (the epoch after its first step, excluding evaluation and checkpointing)."
)


def write_results(results: dict[str, Any], steps: list[StepResult], out_dir: str, stem: str) -> dict[str, str]:
    """JSON (everything) and markdown (the table and how to read it); rewritten after each step."""
    os.makedirs(out_dir, exist_ok=True)
    table = markdown_table(steps)
    results["table"] = table
    results["steps"] = {s.step: {"ok": s.ok, **{k: v for k, v in asdict(s).items() if k != "details"}, **s.details} for s in steps}
    paths = {"json": os.path.join(out_dir, f"{stem}.json"), "markdown": os.path.join(out_dir, f"{stem}.md")}
    results["files"] = paths
    with open(paths["json"], "w", encoding="utf-8") as fh:
        json.dump(results, fh, ensure_ascii=False, indent=2, default=str)
    header = f"# ynat-ray GPU check ({results['mode']})\n\n{results['started_at']} on {results['host']}, device: {results['device']}\n\n"
    with open(paths["markdown"], "w", encoding="utf-8") as fh:
        fh.write(header + table + "\n\n" + NOTES + "\n")
    return paths


def run_step(name: str, fn: Callable[[StepResult], None]) -> StepResult:
    """Run one step; any exception becomes the row's error instead of ending the run."""
    result = StepResult(step=name)
    log(f"step {name}: start")
    started = time.perf_counter()
    try:
        fn(result)
    except Exception as err:  # noqa: BLE001 - a failing step must not stop the others
        result.error = (f"{type(err).__name__}: {err}".splitlines() or [type(err).__name__])[0][:ERROR_CHARS]
        result.traceback = traceback.format_exc()
        print(result.traceback, file=sys.stderr, flush=True)
    result.seconds = time.perf_counter() - started
    log(f"step {name}: {'ok' if result.ok else 'FAILED: ' + str(result.error)} ({result.seconds:.1f}s)")
    return result


# ---------------------------------------------------------------------------------------------
# Hardware


def detect_device(plan: Plan) -> tuple[str, float | None, str]:
    """(device name, dense bf16 peak TFLOPS or None, the peak's label) for this machine's first GPU."""
    if not plan.use_gpu:
        return f"CPU ({os.cpu_count()} cores on this host)", None, "n/a (CPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device visible to the driver", None, "unknown peak"
    name = torch.cuda.get_device_name(0)
    for pattern, label, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, name, re.IGNORECASE):
            return name, tflops, f"{label} {tflops:g} TFLOPS bf16 dense"
    return name, None, "unknown peak"


def wait_for_gpus(gpus: float, timeout_s: float = 90.0) -> None:
    """Fail fast, not hang: Ray would wait forever for a GPU the cluster lacks or that the last step still holds."""
    import ray

    if not gpus:
        return
    total = ray.cluster_resources().get("GPU", 0.0)
    if total < gpus:
        raise RuntimeError(f"the Ray cluster has {total:g} GPU(s); this step needs {gpus:g}")
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("GPU", 0.0) < gpus:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU after {timeout_s:g}s (available: {ray.available_resources().get('GPU', 0.0):g})")
        time.sleep(1.0)


# ---------------------------------------------------------------------------------------------
# Step 1: training


def build_model_dir(plan: Plan, work: str) -> dict[str, Any]:
    """A Hugging Face directory holding the project's WordPiece tokenizer and a randomly initialised model.

    Why a directory and not a preset name: Ray Train workers are separate processes that build the model
    from `cfg.model` themselves (`build_model` inside `train_loop_per_worker`), and a preset name must exist in
    *their* `PRESETS`. A name registered at runtime here would exist only in this driver. A local model
    directory is a documented `--model` input that every worker loads with `from_pretrained`, so the roberta-base
    shape reaches the workers without touching ynat_ray. The model is still built by `build_model` (same
    RobertaConfig, pad ids, position table and labels as a preset), under a registration scoped to this call.
    """
    from unittest import mock

    from ynat_ray.data import embedded_split
    from ynat_ray.modeling import PRESETS, Preset, build_model
    from ynat_ray.vocab import train_wordpiece_tokenizer

    titles = embedded_split("train")["title"].tolist()  # all 10k embedded titles, like a preset would see with no cap
    tokenizer = train_wordpiece_tokenizer(titles, plan.vocab_size, plan.max_length)
    shape = Preset(*plan.shape)
    with mock.patch.dict(PRESETS, {plan.shape_name: shape}):
        model = build_model(plan.shape_name, tokenizer, plan.max_length)
    path = os.path.join(work, "model", plan.shape_name)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    embedding = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." in n)
    total = sum(p.numel() for p in model.parameters())
    return {"path": path, "vocab_size": len(tokenizer), "params": total, "non_embedding_params": total - embedding}


def padded_lengths(lengths: list[int], batch_size: int, seed: int = 0, shuffles: int = 50) -> tuple[list[int], list[int], list[int]]:
    """Per simulated batch: (padded length, rows, real tokens), over `shuffles` random orders of the rows.

    The training loop pads each batch to its longest title and draws batches through a shuffle buffer, so the
    exact batches of the run are not reproducible here; random batches of the same rows and size are the
    honest stand-in (the spread over 50 shuffles is small next to the mean).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    arr = np.asarray(lengths)
    pads, rows, real = [], [], []
    for _ in range(shuffles):
        order = rng.permutation(len(arr))
        for start in range(0, len(arr), batch_size):
            chunk = arr[order[start : start + batch_size]]
            pads.append(int(chunk.max()))
            rows.append(len(chunk))
            real.append(int(chunk.sum()))
    return pads, rows, real


def training_flops_per_sample(lengths: list[int], batch_size: int, n_params: int, layers: int, hidden: int) -> dict[str, float]:
    """Model FLOPs per training sample, on padded and on real tokens (formula in NOTES)."""
    pads, rows, real = padded_lengths(lengths, batch_size)
    samples = sum(rows)
    padded = sum(b * s * (6 * n_params + 12 * layers * hidden * s) for s, b in zip(pads, rows)) / samples
    useful = sum(t * (6 * n_params + 12 * layers * hidden * t) for t in lengths) / len(lengths)
    return {
        "mean_padded_length": sum(b * s for s, b in zip(pads, rows)) / samples,
        "mean_real_length": sum(real) / samples,
        "flops_per_sample_padded": padded,
        "flops_per_sample_real": useful,
    }


def step_train(plan: Plan, state: State, peak_tflops: float | None, peak_label: str, result: StepResult) -> None:
    from transformers import AutoTokenizer

    from ynat_ray.config import YnatConfig
    from ynat_ray.data import load_splits
    from ynat_ray.precision import resolve_precision
    from ynat_ray.train import run_training

    hidden, layers, heads, ffn = plan.shape
    precision = resolve_precision(plan.precision, "cuda" if plan.use_gpu else "cpu")
    if precision != plan.precision:
        precision = f"{plan.precision} = {precision}"
    result.what = (
        f"TorchTrainer 1 worker, {'GPU, NCCL, ' if plan.use_gpu else 'CPU, gloo, '}{precision}; {plan.shape_name} "
        f"{layers}x{hidden} ({heads} heads, FFN {ffn}), random init; {plan.steps} steps x {plan.batch_size}"
    )
    model = build_model_dir(plan, state.work)
    state.model_dir = model["path"]
    result.details["model"] = model
    log(
        f"model dir {model['path']}: vocab {model['vocab_size']} (asked {plan.vocab_size}), {model['non_embedding_params'] / 1e6:.1f}M non-embedding params"
    )
    wait_for_gpus(1.0 if plan.use_gpu else 0.0)
    cfg = YnatConfig(
        model=model["path"],  # a local HF directory: see build_model_dir
        max_length=plan.max_length,
        vocab_size=plan.vocab_size,
        num_workers=1,
        use_gpu=plan.use_gpu,
        precision=plan.precision,
        epochs=1,
        batch_size=plan.batch_size,
        max_train_samples=plan.steps * plan.batch_size,
        max_eval_samples=plan.eval_rows,
        learning_rate=plan.learning_rate,
        storage_path=os.path.join(state.work, "runs"),
        log_every=25,
        materialize="yes",
        max_failures=0,  # a benchmark reports a failure; it does not retry it into the time limit
        num_to_keep=1,
    )
    outcome = run_training(cfg)
    state.checkpoint = outcome.best_checkpoint
    last = outcome.history[-1]
    samples_per_s = float(last["train_samples_per_s"])

    # Padded lengths of the very rows the run trained on (load_splits is seeded), with the run's tokenizer.
    rows = load_splits(cfg).train
    tokenizer = AutoTokenizer.from_pretrained(model["path"])
    lengths = [len(ids) for ids in tokenizer(rows["title"].tolist(), truncation=True, max_length=plan.max_length)["input_ids"]]
    flops = training_flops_per_sample(lengths, plan.batch_size, model["non_embedding_params"], layers, hidden)
    steps_run = -(-len(rows) // plan.batch_size)
    if len(rows) < plan.steps * plan.batch_size:
        log(f"only {len(rows)} training rows: {steps_run} steps run instead of {plan.steps}")
    result.details.update(
        samples_per_s=samples_per_s,
        train_rows=len(rows),
        steps_run=steps_run,
        epoch_time_s=last.get("epoch_time_s"),
        checkpoint=outcome.best_checkpoint,
        final_metrics={k: outcome.final_metrics.get(k) for k in ("split", "accuracy", "macro_f1", "num_rows")},
        peak=peak_label,
        **flops,
    )
    achieved = samples_per_s * flops["flops_per_sample_padded"] / 1e12
    if plan.use_gpu and peak_tflops:
        mfu = achieved / peak_tflops
        mfu_real = samples_per_s * flops["flops_per_sample_real"] / 1e12 / peak_tflops
        mfu_text = f"MFU {mfu:.1%} of {peak_label} ({achieved:.1f} TFLOP/s on padded tokens; {mfu_real:.1%} counting real tokens only)"
        result.details.update(mfu=mfu, mfu_real_tokens=mfu_real, achieved_tflops=achieved)
    else:
        mfu_text = "MFU n/a (CPU)" if not plan.use_gpu else f"MFU n/a: {peak_label} for this GPU ({achieved:.1f} TFLOP/s achieved)"
        result.details.update(mfu="n/a (CPU)" if not plan.use_gpu else "unknown peak", achieved_tflops=achieved)
    final = outcome.final_metrics
    result.figures = (
        f"{samples_per_s:,.1f} samples/s; {mfu_text}; padded length {flops['mean_padded_length']:.1f} tokens/sample "
        f"(real {flops['mean_real_length']:.1f}); {steps_run} steps; vocab {model['vocab_size']:,}; "
        f"{model['non_embedding_params'] / 1e6:.1f}M non-emb params; {final.get('split')} acc {final.get('accuracy', 0):.3f}"
    )


# ---------------------------------------------------------------------------------------------
# Step 2: Serve


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checkpoint_for_inference(state: State, result: StepResult) -> str:
    """Step 1's checkpoint, else the untrained model directory (noted in the row), else an error."""
    if state.checkpoint:
        return state.checkpoint
    if state.model_dir:
        result.details["checkpoint_note"] = "step 1 failed: untrained model directory used"
        result.what += " [step 1 failed: untrained model used]"
        return state.model_dir
    raise RuntimeError("no model: step 1 failed before building one")


def predictions_problem(body: Any, n: int) -> str | None:
    """Why a /predict body is not n lists of {label, score}, or None."""
    if not isinstance(body, list) or len(body) != n:
        return f"expected a list of {n} predictions, got {type(body).__name__} of {len(body) if isinstance(body, list) else '?'}"
    for i, item in enumerate(body):
        if not isinstance(item, list) or not item:
            return f"prediction {i} is not a non-empty list"
        for entry in item:
            if not isinstance(entry, dict) or not isinstance(entry.get("label"), str) or not isinstance(entry.get("score"), (int, float)):
                return f"prediction {i} has an entry that is not {{label: str, score: number}}: {entry!r}"
    return None


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def wait_ready(url: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(url, timeout=5)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as err:
            last = f"{type(err).__name__}"
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:g}s ({last})")


async def burst(url: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[Counter, list[float], float]:
    """Send every body with at most `concurrency` in flight: (status counts, latencies s, wall seconds)."""
    import httpx

    statuses: Counter = Counter()
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                t0 = time.perf_counter()
                try:
                    resp = await client.post("/predict", json=body)
                    ok = resp.status_code == 200 and predictions_problem(resp.json(), len(body["inputs"])) is None
                    statuses[resp.status_code if ok or resp.status_code != 200 else "200-malformed"] += 1
                except httpx.HTTPError as err:
                    statuses[type(err).__name__] += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return statuses, latencies, time.perf_counter() - started


def run_serve_app(app: Any, timeout_s: float) -> None:
    """serve.run, bounded: it blocks until the replica is up, which never happens if its resources never free up."""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-run")
    try:
        pool.submit(serve.run, app, name=SERVE_APP, route_prefix="/").result(timeout=timeout_s)
    finally:
        pool.shutdown(wait=False)


def step_serve(plan: Plan, state: State, result: StepResult) -> None:
    import httpx
    from ray import serve

    from ynat_ray.config import YnatConfig
    from ynat_ray.data import embedded_split
    from ynat_ray.labels import LABELS
    from ynat_ray.serving import build_app

    n = plan.texts_per_request
    result.what = (
        f"Serve, 1 replica x {plan.replica_gpus:g} GPU / {plan.replica_cpus:g} CPU; /predict {n} titles per request; "
        f"{plan.latency_requests} sequential + {plan.burst_requests} at concurrency {plan.concurrency}"
    )
    checkpoint = checkpoint_for_inference(state, result)
    wait_for_gpus(plan.replica_gpus)
    status = serve.status()
    state.serve_was_running = bool(status.proxies or status.applications)
    port = free_port()
    if state.serve_was_running:
        # Serve keeps the HTTP options it was started with; ask the running controller for its port.
        from ray.serve.context import _get_global_client  # private, but the only way to learn the port

        port = _get_global_client().http_config.port
        result.details["serve_note"] = f"Serve was already running; using its HTTP port {port}"
    else:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        state.serve_started = True
    cfg = YnatConfig(
        checkpoint=checkpoint,
        min_replicas=1,
        max_replicas=1,  # pinned: this measures one replica, not autoscaling
        replica_cpus=plan.replica_cpus,
        replica_gpus=plan.replica_gpus,
        host="127.0.0.1",
        port=port,
    )
    url = f"http://127.0.0.1:{port}"
    titles = embedded_split("test")["title"].tolist()

    def body(i: int) -> dict[str, Any]:
        start = (i * n) % (len(titles) - n)
        return {"inputs": titles[start : start + n]}

    started = time.perf_counter()
    try:
        run_serve_app(build_app(cfg), timeout_s=240)
        wait_ready(url + "/readyz", timeout_s=60)
        deploy_s = time.perf_counter() - started
        info = httpx.get(url + "/info", timeout=30).json()
        log(f"serve: up in {deploy_s:.1f}s, backend {info.get('backend')} ({info.get('backend_reason')}) on {info.get('device')}")

        statuses: Counter = Counter()
        labels: set[str] = set()
        latencies: list[float] = []
        with httpx.Client(base_url=url, timeout=60) as client:
            first = client.post("/predict", json=body(0))
            if first.status_code != 200:
                raise RuntimeError(f"/predict answered {first.status_code}: {first.text[:200]}")
            problem = predictions_problem(first.json(), n)
            if problem:
                raise RuntimeError(f"/predict answered 200 but {problem}")
            for i in range(1, 4):  # warm-up (CUDA kernels, batch paths); not timed
                client.post("/predict", json=body(i))
            for i in range(plan.latency_requests):
                t0 = time.perf_counter()
                resp = client.post("/predict", json=body(i))
                latencies.append(time.perf_counter() - t0)
                if resp.status_code == 200 and predictions_problem(resp.json(), n) is None:
                    labels |= {entry["label"] for item in resp.json() for entry in item}
                    statuses[200] += 1
                else:
                    statuses[resp.status_code if resp.status_code != 200 else "200-malformed"] += 1
        burst_statuses, burst_latencies, burst_s = asyncio.run(burst(url, [body(i) for i in range(plan.burst_requests)], plan.concurrency))
    finally:
        serve.delete(SERVE_APP)  # frees the replica's GPU for step 3
    statuses.update(burst_statuses)
    ok_burst = burst_statuses.get(200, 0)
    texts_per_s = ok_burst * n / burst_s if burst_s > 0 else 0.0
    result.details.update(
        checkpoint=checkpoint,
        backend=info.get("backend"),
        backend_reason=info.get("backend_reason"),
        device=info.get("device"),
        precision=info.get("precision"),
        deploy_s=deploy_s,
        p50_ms=percentile(latencies, 50) * 1000,
        p90_ms=percentile(latencies, 90) * 1000,
        burst_p50_ms=percentile(burst_latencies, 50) * 1000,
        burst_seconds=burst_s,
        texts_per_s=texts_per_s,
        status_codes=dict(statuses),
        labels=sorted(labels),
        expected_labels=list(LABELS),
    )
    bad = {k: v for k, v in statuses.items() if k != 200}
    if bad:
        raise RuntimeError(f"non-200 answers: {bad} (p50 {result.details['p50_ms']:.1f} ms, {texts_per_s:.0f} texts/s)")
    result.figures = (
        f"p50 {result.details['p50_ms']:.1f} ms (p90 {result.details['p90_ms']:.1f}) per {n}-title request; "
        f"burst {texts_per_s:,.0f} texts/s (p50 {result.details['burst_p50_ms']:.0f} ms); "
        f"all {sum(statuses.values())} answers HTTP 200; backend {info.get('backend')} on {info.get('device')}; "
        f"{len(labels)} labels seen; deploy {deploy_s:.0f}s"
    )


# ---------------------------------------------------------------------------------------------
# Step 3: predict-batch


def write_batch_input(path: str, rows: int) -> None:
    """The embedded validation rows, repeated to `rows`, with Korean label names (read_file accepts names or ids)."""
    from ynat_ray.data import embedded_split
    from ynat_ray.labels import ID2LABEL

    source = embedded_split("validation")
    titles, labels = source["title"].tolist(), source["label"].tolist()
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            j = i % len(titles)
            fh.write(json.dumps({"title": titles[j], "label": ID2LABEL[int(labels[j])]}, ensure_ascii=False) + "\n")


def step_batch(plan: Plan, state: State, result: StepResult) -> None:
    from ynat_ray.batch import run_batch_prediction
    from ynat_ray.config import YnatConfig

    result.what = (
        f"predict-batch, 1 actor x {plan.actor_gpus:g} GPU / {plan.actor_cpus:g} CPU; {plan.batch_rows:,} rows (jsonl in, parquet out)"
    )
    checkpoint = checkpoint_for_inference(state, result)
    wait_for_gpus(plan.actor_gpus)
    path = os.path.join(state.work, "batch_input.jsonl")
    write_batch_input(path, plan.batch_rows)
    cfg = YnatConfig(
        checkpoint=checkpoint,
        input=path,
        output=os.path.join(state.work, "batch_output"),
        num_actors=1,
        actor_cpus=plan.actor_cpus,
        actor_gpus=plan.actor_gpus,
        overwrite=True,
    )
    summary = run_batch_prediction(cfg)
    metrics = summary.get("metrics") or {}
    result.details.update(
        checkpoint=checkpoint,
        input_rows=plan.batch_rows,
        rows=summary["rows"],
        rows_read=summary["input_rows"],
        quarantined=summary["quarantined"],
        rows_per_s=summary["rows_per_s"],
        seconds_end_to_end=summary["seconds"],
        output_files=len(summary["output_files"]),
        accuracy=metrics.get("accuracy"),
    )
    if summary["rows"] != plan.batch_rows:
        raise RuntimeError(f"wrote {summary['rows']} of {plan.batch_rows} rows ({summary['quarantined']} quarantined)")
    result.figures = (
        f"{summary['rows_per_s']:,.0f} rows/s; {summary['rows']:,} of {plan.batch_rows:,} rows written in {summary['seconds']:.1f}s "
        f"end to end (model loading included); accuracy {metrics.get('accuracy', float('nan')):.3f}"
    )


# ---------------------------------------------------------------------------------------------
# The run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the three steps, print the table, write JSON + markdown into --out; return the results dict."""
    import ray

    args = parse_args(argv)
    plan = make_plan(args)
    stem = f"gpu_check_{plan.mode}_{datetime.now():%Y%m%d-%H%M%S}"
    work = args.work_dir or tempfile.mkdtemp(prefix="ynat-gpu-check-")
    os.makedirs(work, exist_ok=True)
    state = State(work=os.path.abspath(work))
    results: dict[str, Any] = {
        "mode": plan.mode,
        "started_at": datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "plan": asdict(plan),
        "notes": NOTES,
    }
    steps: list[StepResult] = []
    started_ray = False
    try:
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
            started_ray = True
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            device, peak, peak_label = detect_device(plan)
        except Exception as err:  # noqa: BLE001 - no MFU is better than no run
            device, peak, peak_label = f"unknown ({type(err).__name__}: {err})", None, "unknown peak"
        results.update(
            device=device,
            peak_bf16_tflops=peak,
            peak=peak_label,
            cluster=ray.cluster_resources(),
            versions=_versions(),
        )
        log(f"mode {plan.mode}; device {device}; peak {peak_label}; cluster {results['cluster']}; work dir {state.work}")
        runs: dict[str, Callable[[StepResult], None]] = {
            "train": lambda r: step_train(plan, state, peak, peak_label, r),
            "serve": lambda r: step_serve(plan, state, r),
            "batch": lambda r: step_batch(plan, state, r),
        }
        interrupted = False
        for name in STEPS:
            if interrupted:
                steps.append(StepResult(step=name, error="skipped: the run was interrupted"))
                continue
            try:
                steps.append(run_step(name, runs[name]))
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from a time limit (see __main__): report what we have
                steps.append(StepResult(step=name, error="interrupted"))
                interrupted = True
            write_results(results, steps, args.out, stem)
    except Exception as err:  # noqa: BLE001 - set-up failed (Ray would not start): still print and save a table
        results["error"] = f"{type(err).__name__}: {err}"
        traceback.print_exc()
        for name in STEPS[len(steps) :]:
            steps.append(StepResult(step=name, error=f"not run: set-up failed: {results['error']}"[:ERROR_CHARS]))
    finally:
        results.setdefault("device", "unknown")
        _restore(state, started_ray)
        if not args.work_dir:
            shutil.rmtree(state.work, ignore_errors=True)
        results["work_dir"] = state.work if args.work_dir else f"{state.work} (temporary, deleted; pass --work-dir to keep it)"
        paths = write_results(results, steps, args.out, stem)
        print("\n" + results["table"] + "\n", flush=True)
        print(f"device: {results['device']}; peak: {results.get('peak')}", flush=True)
        print(f"{NOTES}\n\nwritten: {paths['json']} and {paths['markdown']}", flush=True)
    return results


def _versions() -> dict[str, str]:
    import ray
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "ray": ray.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def _restore(state: State, started_ray: bool) -> None:
    """Leave Ray as we found it: our Serve app gone, Serve down unless it was up before, Ray down if we started it."""
    import ray

    if not ray.is_initialized():
        return
    try:
        from ray import serve

        if state.serve_started:
            serve.shutdown()
        elif state.serve_was_running and SERVE_APP in serve.status().applications:
            serve.delete(SERVE_APP)
    except Exception as err:  # noqa: BLE001 - clean-up must not hide the table
        log(f"could not shut Serve down: {type(err).__name__}: {err}")
    if started_ray:
        ray.shutdown()


def _interrupt_on_sigterm() -> None:
    """A time limit's SIGTERM becomes KeyboardInterrupt, so the table is still printed and Ray cleaned up."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    _interrupt_on_sigterm()
    outcome = main()
    sys.exit(0 if all(s["ok"] for s in outcome["steps"].values()) and "error" not in outcome else 1)
