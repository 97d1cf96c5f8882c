"""One prepared check for a lent GPU machine: the real `ynat-ray` commands on a GPU, each timed, in one table.

GPU machines are lent rarely and briefly, so this runs in one go what a GPU run must show, through the
commands a user types (each a subprocess starting its own Ray, as on a fresh machine; RAY_ADDRESS is honoured),
and a failing step never hides the others:

  train          `ynat-ray train --use_gpu`: 1 Train worker (NCCL; bf16 where the GPU has it) on the embedded rows;
                 samples/s from the run's metrics history, the device and precision the worker reported
  serve          `ynat-ray serve --replica_gpus 1` with step 1's checkpoint; /predict must answer 200 with one list
                 of scored labels per title; p50 latency of sequential requests, texts/s of a concurrent burst
  predict-batch  `ynat-ray predict-batch --actor_gpus 1` over the embedded validation rows repeated; rows/s
  evaluate       `ynat-ray evaluate --use_gpu --json` on the embedded test rows; macro-F1 and seconds

Every step's seconds are the whole command's (Python and Ray start included). The table (markdown) and the
JSON (each command line, its figures, the tail of its output) are rewritten after every step, so a run stopped
by its time limit keeps what it measured.

    python bench/gpu_check.py --out /tmp/gpu_check      # on the GPU machine: about 5 minutes
    python bench/gpu_check.py --dry_run                 # the same steps on CPU with tiny settings (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import common


@dataclass(frozen=True)
class Plan:
    """Every size the run uses (recorded in the JSON)."""

    model: str
    epochs: int
    batch_size: int
    train_rows: int | None  # --max_train_samples (None: all 10k embedded training rows)
    eval_rows: int  # --max_eval_samples of training's validation
    gpus: int  # 1: --use_gpu, --replica_gpus 1, --actor_gpus 1; 0: the CPU dry run
    cpus: float  # --replica_cpus and --actor_cpus
    batch_rows: int
    texts_per_request: int
    latency_requests: int
    burst_requests: int
    concurrency: int
    timeout_s: int  # per command


PLANS = {
    "gpu": Plan("ynat-small", epochs=2, batch_size=128, train_rows=None, eval_rows=1000, gpus=1, cpus=1.0, batch_rows=20_000,
                texts_per_request=8, latency_requests=50, burst_requests=200, concurrency=16, timeout_s=300),
    # Sized for a 2-CPU Ray cluster: the replica and the batch actor take half a CPU each.
    "dry_run": Plan("ynat-tiny", epochs=1, batch_size=16, train_rows=256, eval_rows=64, gpus=0, cpus=0.5, batch_rows=300,
                    texts_per_request=8, latency_requests=10, burst_requests=24, concurrency=4, timeout_s=300),
}  # fmt: skip


@dataclass
class Step:
    name: str
    command: str = ""
    seconds: float = 0.0
    summary: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    output_tail: str = ""


class Run:
    """The steps' shared state: the plan, the scratch directory, step 1's checkpoint, the results so far."""

    def __init__(self, plan: Plan, work: str, out: str, mode: str) -> None:
        self.plan, self.work, self.out, self.mode = plan, work, out, mode
        self.checkpoint: str | None = None
        self.steps: list[Step] = []
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, step: Step, argv: list[str]) -> subprocess.Popen:
        """Start `ynat-ray ARGV` (this checkout's, as `python -m ynat_ray.cli`), its output into a log beside the results."""
        step.command = "ynat-ray " + shlex.join(argv)
        with open(os.path.join(self.work, f"{step.name}.log"), "w", encoding="utf-8") as log:  # the child keeps its own handle
            return subprocess.Popen([sys.executable, "-m", "ynat_ray.cli", *argv], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=common.REPO, start_new_session=True)  # fmt: skip

    def run(self, step: Step, argv: list[str]) -> str:
        """Run `ynat-ray ARGV` to the end; its output, or an error carrying the output's tail."""
        proc = self.start(step, argv)
        try:
            proc.wait(timeout=self.plan.timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"did not finish in {self.plan.timeout_s} s") from None
        finally:
            stop(proc)  # a timeout, Ctrl-C or SIGTERM here must not leave the command running
        if proc.returncode != 0:
            raise RuntimeError(f"exit status {proc.returncode}")
        return self.output(step)

    def output(self, step: Step) -> str:
        return Path(self.work, f"{step.name}.log").read_text(encoding="utf-8", errors="replace")


def commands(plan: Plan, work: str, checkpoint: str = "", port: int = 0) -> dict[str, list[str]]:
    """Each step's command line after `ynat-ray` (tests/test_gpu_check.py parses every one with its command's options)."""
    use_gpu = ["--use_gpu"] if plan.gpus else []
    train_rows = ["--max_train_samples", str(plan.train_rows)] if plan.train_rows else []
    return {
        "train": ["train", "--model", plan.model, "--epochs", str(plan.epochs), "--batch_size", str(plan.batch_size),
                  "--num_workers", "1", "--max_eval_samples", str(plan.eval_rows), "--storage_path", os.path.join(work, "runs"),
                  "--run_name", "gpu-check", "--max_failures", "0", "--num_to_keep", "1", *train_rows, *use_gpu],
        "serve": ["serve", "--checkpoint", checkpoint, "--host", "127.0.0.1", "--port", str(port), "--min_replicas", "1",
                  "--max_replicas", "1", "--replica_cpus", f"{plan.cpus:g}", "--replica_gpus", str(plan.gpus)],
        "predict-batch": ["predict-batch", "--checkpoint", checkpoint, "--input", os.path.join(work, "batch_input.jsonl"),
                          "--output", os.path.join(work, "batch_output"), "--num_actors", "1", "--actor_cpus", f"{plan.cpus:g}",
                          "--actor_gpus", str(plan.gpus), "--overwrite"],
        "evaluate": ["evaluate", "--checkpoint", checkpoint, "--json", *use_gpu],
    }  # fmt: skip


# `ynat-ray serve` waits for Serve's controller to be gone (up to 150 s) before it exits; killing it sooner would
# leave Serve running on the cluster, where the next `ynat-ray serve` would find it on the old port.
STOP_WAIT_S = 180


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (serve drains, then shuts its Ray down); SIGKILL to the process group started here if it hangs. The
    commands run in their own session, so stopping them is this script's job (a no-op for one that has exited)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- the steps ---------------------------------------------------------------------------------------------
def step_train(run: Run, step: Step) -> None:
    out = run.run(step, commands(run.plan, run.work)["train"])
    found = re.search(r"^checkpoint\s+(\S+)", out, re.M)
    worker = re.search(r"worker\(s\) on (\w+), precision (\w+)", out)
    if not found or not worker:
        raise RuntimeError("no checkpoint line or worker line in the output")
    run.checkpoint, device, precision = found.group(1), worker.group(1), worker.group(2)
    artifacts = Path(run.work, "runs", "gpu-check", "artifacts")
    last = json.loads((artifacts / "metrics_history.json").read_text(encoding="utf-8"))[-1]
    final = json.loads((artifacts / "final_metrics.json").read_text(encoding="utf-8"))
    step.figures = {"device": device, "precision": precision, "samples_per_s": last["train_samples_per_s"],
                    "epoch_time_s": last["epoch_time_s"], "macro_f1": final["macro_f1"], "checkpoint": run.checkpoint}  # fmt: skip
    step.summary = f"{last['train_samples_per_s']:,.0f} samples/s on {device} ({precision}); final macro-F1 {final['macro_f1']:.3f}"
    expect_device(run, device)


def step_serve(run: Run, step: Step) -> None:
    import httpx

    from ynat_ray.data.sources import embedded_split

    p, port, n = run.plan, common.free_port(), run.plan.texts_per_request
    url, titles = f"http://127.0.0.1:{port}", embedded_split("test")["title"].tolist()
    bodies = [{"inputs": titles[i * n % (len(titles) - n) :][:n]} for i in range(p.latency_requests + p.burst_requests)]
    proc = run.start(step, commands(p, run.work, need_checkpoint(run), port)["serve"])
    try:
        common.wait_ready(f"{url}/readyz", p.timeout_s, proc=proc)
        info = httpx.get(f"{url}/info", timeout=30).json()
        latencies, labels = [], set()
        with httpx.Client(base_url=url, timeout=60) as client:
            for body in bodies[: p.latency_requests]:
                started = time.perf_counter()
                resp = client.post("/predict", json=body)
                latencies.append(time.perf_counter() - started)
                labels |= answer_labels(resp, len(body["inputs"]))
        statuses, burst_s = burst(url, bodies[p.latency_requests :], p.concurrency)
    finally:
        stop(proc)
    if set(statuses) != {200}:
        raise RuntimeError(f"burst answers: {dict(statuses)}")
    p50 = sorted(latencies)[len(latencies) // 2] * 1000
    texts_per_s = p.burst_requests * p.texts_per_request / burst_s
    step.figures = {"p50_ms": p50, "texts_per_s": texts_per_s, "labels": sorted(labels), "status_codes": dict(statuses),
                    "requests": p.latency_requests + p.burst_requests, **{k: info.get(k) for k in ("backend", "device", "precision")}}  # fmt: skip
    step.summary = (f"p50 {p50:.1f} ms per {p.texts_per_request}-title request; burst {texts_per_s:,.0f} texts/s at concurrency "
                    f"{p.concurrency}; engine {info.get('backend')} on {info.get('device')}")  # fmt: skip
    expect_device(run, str(info.get("device")))


def answer_labels(resp: Any, n: int) -> set[str]:
    """The labels of a /predict answer, after checking it is 200 with one non-empty list of {label, score} per title."""
    body = resp.json() if resp.status_code == 200 else None
    lists = isinstance(body, list) and len(body) == n and all(isinstance(item, list) and item for item in body)
    entries = [entry for item in body for entry in item] if lists else []
    if not entries or not all(
        isinstance(e, dict) and isinstance(e.get("label"), str) and isinstance(e.get("score"), float) for e in entries
    ):
        raise RuntimeError(f"/predict answered {resp.status_code}, not {n} lists of {{label, score}}: {resp.text[:200]}")
    return {e["label"] for e in entries}


def burst(url: str, bodies: list[dict[str, Any]], concurrency: int) -> tuple[Counter, float]:
    """Send every body with `concurrency` requests in flight: (status counts, wall seconds)."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client, ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        statuses = Counter(pool.map(lambda body: client.post("/predict", json=body).status_code, bodies))
        return statuses, time.perf_counter() - started


def step_predict_batch(run: Run, step: Step) -> None:
    import pandas as pd

    from ynat_ray.data.sources import embedded_split

    p, argv = run.plan, commands(run.plan, run.work, need_checkpoint(run))["predict-batch"]
    rows = embedded_split("validation")[["title", "label"]]
    repeated = pd.concat([rows] * -(-p.batch_rows // len(rows))).head(p.batch_rows)
    repeated.to_json(argv[argv.index("--input") + 1], orient="records", lines=True, force_ascii=False)
    out = run.run(step, argv)
    written = re.search(r"^rows\s+(\d+) written of (\d+) read \((\d+) quarantined\)", out, re.M)
    speed = re.search(r"^throughput\s+([\d.]+) rows/s \(([\d.]+) s end to end", out, re.M)
    if not written or not speed:
        raise RuntimeError("no rows/throughput lines in the output")
    rows_out, rows_in, quarantined = (int(x) for x in written.groups())
    step.figures = {"rows": rows_out, "rows_read": rows_in, "quarantined": quarantined, "rows_per_s": float(speed.group(1)),
                    "job_seconds": float(speed.group(2)), "input_rows": p.batch_rows}  # fmt: skip
    step.summary = (
        f"{float(speed.group(1)):,.0f} rows/s; {rows_out:,} of {p.batch_rows:,} rows written in {speed.group(2)} s (model loading included)"
    )
    if rows_out != p.batch_rows:
        raise RuntimeError(f"wrote {rows_out} of {p.batch_rows} rows ({quarantined} quarantined)")


def step_evaluate(run: Run, step: Step) -> None:
    out = run.run(step, commands(run.plan, run.work, need_checkpoint(run))["evaluate"])
    found = re.search(r"^\{$.*^\}$", out, re.M | re.S)  # the JSON block; log lines around it are not JSON
    if not found:
        raise RuntimeError("no JSON metrics in the output")
    metrics = json.loads(found.group(0))
    step.figures = {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"]}
    step.summary = f"macro-F1 {metrics['macro_f1']:.3f}, accuracy {metrics['accuracy']:.3f} on the embedded test rows"


STEPS: dict[str, Callable[[Run, Step], None]] = {
    "train": step_train, "serve": step_serve, "predict-batch": step_predict_batch, "evaluate": step_evaluate,
}  # fmt: skip


def need_checkpoint(run: Run) -> str:
    if not run.checkpoint:
        raise RuntimeError("no checkpoint: the train step failed")
    return run.checkpoint


def expect_device(run: Run, device: str) -> None:
    """On the GPU run, a step that ran on the CPU has failed its purpose."""
    if run.plan.gpus and device != "cuda":
        raise RuntimeError(f"ran on {device}, not cuda")


# ---- the run -----------------------------------------------------------------------------------------------
def device_name(plan: Plan) -> str:
    import torch

    if plan.gpus and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU: {common.machine()['model']}" + ("" if not plan.gpus else " (no CUDA device visible)")


def write(run: Run, results: dict[str, Any]) -> dict[str, str]:
    """The markdown table and the JSON, rewritten after every step."""
    lines = ["| step | command | figures | seconds |", "|---|---|---|---:|"]
    for s in run.steps:
        lines.append(f"| {s.name} | `{s.command}` | {s.summary if s.error is None else 'ERROR ' + s.error} | {s.seconds:.1f} |")
    results.update(table="\n".join(lines), steps={s.name: {"ok": s.error is None, **asdict(s)} for s in run.steps})
    os.makedirs(run.out, exist_ok=True)
    stem = os.path.join(run.out, f"gpu_check_{run.mode}_{int(results['started'])}")
    results["files"] = {"markdown": f"{stem}.md", "json": f"{stem}.json"}
    Path(f"{stem}.md").write_text(f"# ynat-ray GPU check ({run.mode}) on {results['device']}\n\n{results['table']}\n", encoding="utf-8")
    Path(f"{stem}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    return results["files"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the steps, print the table, write markdown + JSON into --out; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry_run", action="store_true", help="The same steps on CPU with tiny settings (ynat-tiny, 256 rows, 1 epoch).")
    parser.add_argument("--model", default=None, help="Preset or model directory to train (default: ynat-small; dry run ynat-tiny).")
    parser.add_argument("--out", default=str(common.RESULTS), help="Directory for gpu_check_<mode>_<time>.md and .json.")
    args = parser.parse_args(argv)
    mode = "dry_run" if args.dry_run else "gpu"
    plan = replace(PLANS[mode], model=args.model or PLANS[mode].model)
    results: dict[str, Any] = {"mode": mode, "started": time.time(), "plan": asdict(plan), "device": device_name(plan),
                               "cpu": common.machine(), "versions": common.versions("ray", "torch", "transformers")}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ynat-gpu-check-") as work:
        run = Run(plan, work, args.out, mode)
        for name, fn in STEPS.items():
            step = Step(name)
            run.steps.append(step)
            print(f"[gpu_check] {name} ...", flush=True)
            started = time.perf_counter()
            try:
                fn(run, step)
            except Exception as err:  # noqa: BLE001 - a failing step must not stop the others
                step.error = f"{type(err).__name__}: {err}".splitlines()[0][:300]
                step.output_tail = run.output(step)[-3000:] if step.command else ""
            step.seconds = time.perf_counter() - started
            print(
                f"[gpu_check] {name}: {step.summary if step.error is None else 'FAILED ' + step.error} ({step.seconds:.0f} s)", flush=True
            )
            files = write(run, results)
    print(f"\n{results['table']}\n\nwritten: {files['markdown']} and {files['json']}", flush=True)
    return results


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # a time limit's SIGTERM: stop the running command, keep the files written


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(0 if all(s["ok"] for s in main()["steps"].values()) else 1)
