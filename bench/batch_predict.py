"""Batch prediction throughput: the ynat-ray Ray Data job vs `transformers.pipeline` in one process, same trained checkpoint.

Input: the real rows of `--input` repeated `--repeat` times (7,107 validation rows x 5 = 35,535 rows), written
once to a temporary jsonl (guids suffixed per copy). For each `--model`:

  (a) baseline: `pipeline("text-classification", model=CKPT, device="cpu")(texts, batch_size=64)` in this
      process, model loaded and warmed up beforehand, timed on the same 35,535 titles (torch's default
      threads: every core). It runs before and after that model's jobs; the reference is their mean.
  (b) the job: `ynat_ray.batch.run_batch_prediction` (read + validate -> actor pool with the inference engine ->
      write parquet -> re-read and verify the output), each run in a fresh Python process as a user's
      `ynat-ray predict-batch` would, for every actor plan in `--plans` (NUM_ACTORSxCPUS_PER_ACTOR; the plan
      must fit check_cpu_budget: actors x CPUs + 0.5 CPU for read/write tasks <= the cluster's CPUs):
        - "new cluster": the job starts its own local Ray (RAY_ADDRESS=local), as on a laptop with no cluster;
        - "running cluster": `ray start --head --num-cpus N --temp-dir <a new temporary dir>` first, then the
          job with RAY_ADDRESS=auto (Ray is already up; the script checks the job joined this cluster and no
          other). At the end only that cluster's processes are stopped, by pid (`ray stop` would stop EVERY Ray
          cluster on the machine, a test run's or a colleague's included).

Start-up vs steady state (the method): each job configuration also runs on the 7,107 real rows alone (x1).
With the job's own execution seconds T (actors start, model load, read, predict, write; the driver's Ray
start/join is timed separately) at n1 = 7,107 and n5 = 35,535 rows, steady rows/s = (n5 - n1) / (T5 - T1)
and start-up = T1 - n1 / steady (a straight-line fit through two sizes). End-to-end rows/s is rows / wall
seconds of the whole process (Python + Ray start-up + job + output verification). Both ratios vs the pipeline
are reported; the issue's targets (>= 1.5x for ynat-tiny, >= 1.8x for 6x384 = ynat-small) are checked on both.

Labels: the job's labels must equal the inference engine's in-process output on the same texts
(`load_engine` with the job's backend and its actors' thread count). With the int8 backend that can
only hold up to batch composition: ONNX Runtime's dynamic quantization takes one activation scale per tensor,
i.e. per padded batch, so a title's int8 logits depend on its batch-mates. So the script (1) asserts exact
equality for an extra job run with `--backend onnx` (fp32, batch-independent) on the x1 rows, proving the
job loses, duplicates or misaligns no row; (2) reports the int8 job's agreement with the engine in-process,
next to the engine's agreement with itself at two batchings (the batch-composition noise floor), and
asserts it is not below that floor minus `--tolerance`; (3) reports agreement with the pipeline's labels.

    . .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/batch_predict.py --model tiny=/path/to/tiny/checkpoint --model 6x384=/path/to/small/checkpoint \\
        --input /path/to/klue-ynat/validation.jsonl --reuse_cluster

The rows are KLUE YNAT (Park et al., KLUE, 2021), CC BY-SA 4.0. Writes bench/results/batch_predict_<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import common
import numpy as np
import pandas as pd

PIPELINE_BATCH = 64
# model preset (from the checkpoint's run spec) -> rows/s target vs the pipeline
TARGETS = {"ynat-tiny": 1.5, "ynat-small": 1.8}
Jobs = dict[tuple[str, str, str, int], dict[str, Any]]  # (model, plan, cluster "new"/"running", repeat) -> one job's result


@dataclass
class Bench:
    """One run's settings and scratch space, shared by every job it starts."""

    workdir: str  # temporary: inputs, job specs, outputs
    ray_temp_dir: str  # the reused cluster's --temp-dir; its processes' command lines name it, which is how they count as ours
    backend: str
    eval_batch_size: int
    max_foreign_cores: float
    retries: int


# ---- the job, in a fresh process -----------------------------------------------------------------------
def job_child(spec_path: str) -> None:
    """Hidden mode: run one predict-batch job from a JSON spec and write its timings + summary beside it."""
    t_start = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    from ynat_ray.batch import run_batch_prediction
    from ynat_ray.cluster import init_ray
    from ynat_ray.config import BatchConfig

    cfg = BatchConfig.of(**spec["cfg"])
    t_imported = time.perf_counter()
    init_ray()
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    t_ray = time.perf_counter()
    summary = run_batch_prediction(cfg)
    t_done = time.perf_counter()
    summary = {k: v for k, v in summary.items() if k != "output_files"}
    timings = {"import_s": t_imported - t_start, "ray_init_s": t_ray - t_imported, "job_call_s": t_done - t_ray}
    import ray

    gcs = ray.get_runtime_context().gcs_address
    Path(spec["result"]).write_text(json.dumps({"summary": summary, "timings": timings, "gcs_address": gcs}, default=str))


def run_job(bench: Bench, checkpoint: str, source: str, plan: str, cluster: str, backend: str | None = None) -> dict[str, Any]:
    """One job in a fresh process, measured again (up to --retries times) if other people's load disturbed it."""
    run = partial(run_job_once, bench, checkpoint, source, plan, cluster, backend or bench.backend)
    what = f"job {plan} ({cluster} cluster)"
    result, other, waited = common.undisturbed(run, what, bench.max_foreign_cores, bench.retries, also_mine=bench.ray_temp_dir)
    result["other_processes_cores"], result["waited_for_quiet_s"] = other, waited
    return result


def run_job_once(bench: Bench, checkpoint: str, source: str, plan: str, cluster: str, backend: str) -> dict[str, Any]:
    """One job in a fresh process; returns its summary, timings, parent-measured wall seconds and labels."""
    actors, cpus = plan.split("x")
    output, stamp = os.path.join(bench.workdir, "out"), time.time_ns()
    spec = {
        "cfg": {
            "checkpoint": checkpoint, "input": source, "output": output, "num_actors": int(actors), "actor_cpus": float(cpus),
            "eval_batch_size": bench.eval_batch_size, "backend": backend, "overwrite": True,
        },
        "result": os.path.join(bench.workdir, f"result_{stamp}.json"),
    }  # fmt: skip
    spec_path = os.path.join(bench.workdir, f"spec_{stamp}.json")
    Path(spec_path).write_text(json.dumps(spec))
    env = {**os.environ, "RAY_ADDRESS": "local" if cluster == "new" else "auto", "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--job-child", spec_path], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"job ({plan}, {cluster} cluster) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(Path(spec["result"]).read_text())
    ours = cluster_address(bench.ray_temp_dir)
    if cluster == "running" and result["gcs_address"] != ours:
        raise RuntimeError(f"RAY_ADDRESS=auto joined {result['gcs_address']}, not our cluster {ours} (another Ray cluster is running)")
    result["wall_s"] = wall
    result["labels"] = job_labels(output)
    shutil.rmtree(output, ignore_errors=True)  # not left for the next job's --overwrite to delete inside its timing
    return result


def job_labels(output: str) -> list[str]:
    from ynat_ray.batch import output_files, read_output_file

    return pd.concat([read_output_file(p, ["label"]) for p in output_files(output, "parquet")])["label"].tolist()


# ---- the reused cluster ----------------------------------------------------------------------------------
def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_cluster(num_cpus: int, temp_dir: str) -> None:
    os.makedirs(temp_dir, exist_ok=True)
    cmd = [ray_bin(), "start", "--head", f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           "--include-dashboard=false"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=180, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def cluster_address(temp_dir: str) -> str | None:
    """The GCS address `ray start --temp-dir temp_dir` recorded (temp_dir/ray_current_cluster)."""
    path = Path(temp_dir) / "ray_current_cluster"
    return path.read_text().strip() if path.exists() else None


def stop_cluster(temp_dir: str) -> None:
    """Stop ONLY the cluster this script started: its processes (found by `temp_dir` in their command line) and their
    children (the workers), by pid. Never `ray stop`: that stops every Ray cluster on the machine, a test run's or a
    colleague's included; a process that survives SIGKILL is named instead."""
    import psutil

    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                ours.append(proc)
    family = {p.pid: p for p in ours}
    for proc in ours:
        with contextlib.suppress(psutil.Error):
            family.update({c.pid: c for c in proc.children(recursive=True)})
    for proc in family.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(family.values()), timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, alive = psutil.wait_procs(alive, timeout=10)
    print(f"  stopped our Ray cluster ({len(family)} processes by pid)", flush=True)
    if alive:
        print(f"  warning: processes of our Ray cluster survived SIGKILL: {sorted(p.pid for p in alive)}", flush=True)


# ---- the baseline and the in-process engine -------------------------------------------------------------
def pipeline_run(bench: Bench, pipe: Any, texts: list[str]) -> tuple[float, list[str], float]:
    """rows/s of pipeline(texts, batch_size=64), measured again (up to --retries times) if other people's load disturbed it."""

    def run() -> tuple[float, list[str]]:
        started = time.perf_counter()
        out = pipe(texts, batch_size=PIPELINE_BATCH)
        return len(texts) / (time.perf_counter() - started), [o["label"] for o in out]

    (rate, labels), other, _ = common.undisturbed(run, "pipeline", bench.max_foreign_cores, bench.retries, also_mine=bench.ray_temp_dir)
    return rate, labels, other


def engine_labels(checkpoint: str, backend: str, threads: int, texts: list[str], batch_size: int) -> tuple[str, list[str]]:
    """The product's engine in this process (the backend and thread count of the job's actors): (backend, labels)."""
    from ynat_ray.config import EngineArgs
    from ynat_ray.inference import load_engine

    clf = load_engine(EngineArgs(checkpoint=checkpoint, backend=backend), cpus=threads)
    probs = clf.probabilities(texts, batch_size=batch_size)
    return clf.backend, [clf.id2label[int(i)] for i in probs.argmax(axis=1)]


def agreement(a: list[str], b: list[str]) -> float:
    if len(a) != len(b):
        raise AssertionError(f"label lists differ in length: {len(a)} vs {len(b)}")
    return float(np.mean([x == y for x, y in zip(a, b)]))


# ---- the measurements ------------------------------------------------------------------------------------
def write_sources(rows: pd.DataFrame, repeat: int, workdir: str) -> dict[int, tuple[str, list[str]]]:
    """x1 and x`repeat` copies of the rows as jsonl (guid suffixed per copy): {repeat: (path, titles)}."""
    sources = {}
    for n in sorted({1, repeat}):
        frames = []
        for k in range(n):
            copy = rows[["guid", "title", "label"]].copy()
            copy["guid"] = copy["guid"].astype(str) + (f"#{k}" if k else "")
            frames.append(copy)
        big = pd.concat(frames, ignore_index=True)
        path = os.path.join(workdir, f"input_x{n}.jsonl")
        big.to_json(path, orient="records", lines=True, force_ascii=False)
        sources[n] = (path, big["title"].tolist())
    return sources


def print_job(label: str, r: dict[str, Any]) -> None:
    timings = json.dumps({k: round(v, 2) for k, v in r["timings"].items()})
    print(f"  {label}: {r['summary']['rows']} rows, execute {r['summary']['seconds']:.1f} s, wall {r['wall_s']:.1f} s, timings {timings}", flush=True)


def measure_new_cluster(bench: Bench, models: dict[str, str], presets: dict[str, str], sources: dict, args: argparse.Namespace) -> tuple[Jobs, dict]:
    """Per model: the pipeline, every plan's job at x1 and x--repeat (each starting its own Ray), the pipeline again."""
    import torch
    from transformers import pipeline

    jobs: Jobs = {}
    per_model: dict[str, dict[str, Any]] = {}
    for name, checkpoint in models.items():
        texts = sources[args.repeat][1]
        pipe = pipeline("text-classification", model=checkpoint, device="cpu", truncation=True)
        pipe(texts[:PIPELINE_BATCH], batch_size=PIPELINE_BATCH)  # warm-up
        before, pipe_labels, other_before = pipeline_run(bench, pipe, texts)
        print(f"== {name} ({presets[name]}): pipeline {before:.0f} rows/s ({torch.get_num_threads()} threads)", flush=True)
        for plan in args.plans:
            for repeat in (1, args.repeat):
                jobs[(name, plan, "new", repeat)] = r = run_job(bench, checkpoint, sources[repeat][0], plan, "new")
                print_job(f"job {plan} new cluster x{repeat}", r)
        after, _, other_after = pipeline_run(bench, pipe, texts)
        del pipe
        per_model[name] = {"pipeline_before": before, "pipeline_after": after, "pipeline": (before + after) / 2, "pipe_labels": pipe_labels,
                           "pipeline_other_cores": max(other_before, other_after)}  # fmt: skip
        print(f"  pipeline after the jobs: {after:.0f} rows/s", flush=True)
    return jobs, per_model


def measure_running_cluster(bench: Bench, models: dict[str, str], sources: dict, args: argparse.Namespace, jobs: Jobs) -> None:
    """The first plan's jobs on a `ray start` cluster started here (RAY_ADDRESS=auto), stopped by pid at the end."""
    start_cluster(args.cluster_cpus or os.cpu_count() or 2, bench.ray_temp_dir)
    plan = args.plans[0]
    try:
        for name, checkpoint in models.items():
            # One throw-away job first: the cluster's first job also pays for starting its worker processes.
            run_job(bench, checkpoint, sources[1][0], plan, "running")
            for repeat in (1, args.repeat):
                jobs[(name, plan, "running", repeat)] = r = run_job(bench, checkpoint, sources[repeat][0], plan, "running")
                print_job(f"{name} job {plan} running cluster x{repeat}", r)
    finally:
        stop_cluster(bench.ray_temp_dir)


def check_labels(bench: Bench, models: dict[str, str], sources: dict, args: argparse.Namespace, jobs: Jobs, per_model: dict) -> list[str]:
    """Every job's labels against the engine in-process (and the pipeline); the fp32 job must match exactly."""
    from ynat_ray.cpu import threads_for

    checks = []
    plan0 = args.plans[0]
    threads = threads_for(float(plan0.split("x")[1]))
    for name, checkpoint in models.items():
        m, texts = per_model[name], sources[args.repeat][1]
        backend, engine = engine_labels(checkpoint, args.backend, threads, texts, args.eval_batch_size)
        _, engine_alt = engine_labels(checkpoint, args.backend, threads, texts, PIPELINE_BATCH)
        floor = agreement(engine, engine_alt)
        m.update(backend=backend, engine_self_agreement_batch_128_vs_64=floor)
        for key, r in jobs.items():
            if key[0] != name:
                continue
            n = len(r["labels"])
            r["agree_engine"] = agreement(r["labels"], engine[:n])
            r["agree_pipeline"] = agreement(r["labels"], m["pipe_labels"][:n])
            if r["agree_engine"] != 1.0 and r["agree_engine"] < floor - args.tolerance:
                raise AssertionError(f"{name} {key}: job agrees with the engine on {r['agree_engine']:.4%} < noise floor {floor:.4%} - {args.tolerance}")
        checks.append(f"{name}: engine ({backend}) in-process vs itself at batch {args.eval_batch_size} vs {PIPELINE_BATCH}: {floor:.4%} agree")
        if args.fp32_check and backend != "onnx":
            r = run_job(bench, checkpoint, sources[1][0], plan0, "new", backend="onnx")
            _, fp32 = engine_labels(checkpoint, "onnx", threads, sources[1][1], args.eval_batch_size)
            m["fp32_job_vs_engine"] = same = agreement(r["labels"], fp32)
            assert same == 1.0, f"{name}: the fp32 job's labels differ from the engine's on {1 - same:.4%} of rows"
            checks.append(f"{name}: job with --backend onnx (fp32), x1 rows: labels identical to the engine's (backend onnx) in-process ({same:.2%}) [asserted]")
    return checks


# ---- report ----------------------------------------------------------------------------------------------
def fit(n1: int, t1: float, n2: int, t2: float) -> tuple[float, float]:
    """Straight line through (n1, t1), (n2, t2): (steady rows/s, fixed seconds)."""
    if t2 <= t1:
        return float("nan"), float("nan")
    steady = (n2 - n1) / (t2 - t1)
    return steady, t1 - n1 / steady


def table_rows(models: dict[str, str], jobs: Jobs, per_model: dict, n1: int, n5: int, repeat: int) -> list[dict[str, Any]]:
    import torch

    table = []
    for name in models:
        m = per_model[name]
        base = m["pipeline"]
        table.append({"model": name, "contender": "transformers.pipeline, 1 process (loaded beforehand)",
                      "plan": f"{torch.get_num_threads()} torch threads, batch {PIPELINE_BATCH}", "cluster": "-",
                      "rows": n5, "e2e_rows_per_s": base, "steady_rows_per_s": base, "startup_s": 0.0, "wall_s": n5 / base,
                      "execute_s": n5 / base, "ray_init_s": 0.0, "agree_engine": None, "agree_pipeline": 1.0, "other": m["pipeline_other_cores"]})  # fmt: skip
        for (jname, plan, cluster, size), r in jobs.items():
            if jname != name or size != repeat:
                continue
            small = jobs[(name, plan, cluster, 1)]
            steady, fixed = fit(n1, small["summary"]["seconds"], n5, r["summary"]["seconds"])
            table.append({
                "model": name, "contender": f"ynat-ray job ({m['backend']})", "plan": f"{plan.split('x')[0]} actor(s) x {plan.split('x')[1]} CPU",
                "cluster": cluster, "rows": r["summary"]["rows"], "e2e_rows_per_s": r["summary"]["rows"] / r["wall_s"],
                "steady_rows_per_s": steady, "startup_s": fixed, "wall_s": r["wall_s"], "execute_s": r["summary"]["seconds"],
                "ray_init_s": r["timings"]["ray_init_s"], "agree_engine": r["agree_engine"], "agree_pipeline": r["agree_pipeline"],
                "other": max(r["other_processes_cores"], small["other_processes_cores"]),
            })  # fmt: skip
    return table


def goals(table: list[dict[str, Any]], per_model: dict, presets: dict[str, str]) -> list[str]:
    lines = []
    for row in table:
        need = TARGETS.get(presets.get(row["model"], ""))
        if need is None or row["contender"].startswith("transformers"):
            continue
        base = per_model[row["model"]]["pipeline"]
        e2e, steady = row["e2e_rows_per_s"] / base, row["steady_rows_per_s"] / base
        lines.append(
            f"{'MET   ' if e2e >= need else 'MISSED'} {row['model']} {row['plan']} ({row['cluster']} cluster): end-to-end {e2e:.2f}x, "
            f"steady {steady:.2f}x (target >= {need}x)"
        )
    return lines


def markdown(table: list[dict[str, Any]], per_model: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | contender | plan | Ray cluster | rows | rows/s end-to-end | vs pipeline | steady rows/s | vs pipeline | start-up s | wall s "
        "| Ray start/join s | labels = engine | labels = pipeline | other people's load (cores) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        base = per_model[r["model"]]["pipeline"]
        eng = "-" if r["agree_engine"] is None else f"{r['agree_engine']:.2%}"
        lines.append(
            f"| {r['model']} | {r['contender']} | {r['plan']} | {r['cluster']} | {r['rows']} | {r['e2e_rows_per_s']:.0f} | {r['e2e_rows_per_s'] / base:.2f}x "
            f"| {r['steady_rows_per_s']:.0f} | {r['steady_rows_per_s'] / base:.2f}x | {r['startup_s']:.1f} | {r['wall_s']:.1f} | {r['ray_init_s']:.1f} "
            f"| {eng} | {r['agree_pipeline']:.2%} | {r.get('other', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(parser)
    parser.add_argument("--repeat", type=int, default=5, help="The big input is the --input rows repeated this many times.")
    parser.add_argument("--plans", nargs="+", default=["1x1.5", "2x0.75"], help="Actor plans NUM_ACTORSxCPUS_PER_ACTOR (each one job per size).")
    parser.add_argument("--eval_batch_size", type=int, default=128, help="The job's forward-pass batch size (--eval_batch_size).")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "onnx-int8"], help="The job's engine backend.")
    parser.add_argument(
        "--reuse_cluster", action=argparse.BooleanOptionalAction, default=True,
        help="Also run the first plan on a running `ray start` cluster (RAY_ADDRESS=auto), started here and stopped (by pid) at the end.",
    )  # fmt: skip
    parser.add_argument("--cluster_cpus", type=int, default=None, help="--num-cpus of the reused cluster (default: this machine's CPUs).")
    parser.add_argument(
        "--fp32_check", action=argparse.BooleanOptionalAction, default=True,
        help="Run one extra x1 job with --backend onnx and assert its labels equal the engine's in-process labels exactly.",
    )  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=0.002, help="Allowed int8 agreement shortfall below the batching noise floor.")
    common.add_quiet_args(parser, retries=2)
    common.add_out_arg(parser)
    parser.add_argument("--job-child", dest="job_child", default=None, help=argparse.SUPPRESS)
    return parser, parser.parse_args()


def main() -> None:
    parser, args = parse_args()
    if args.job_child:
        job_child(args.job_child)
        return
    if not args.model or not args.input:
        parser.error("--model and --input are required")
    import torch

    models = common.parse_models(args.model)
    presets = {name: common.preset_of(path) for name, path in models.items()}
    rows = common.read_ynat(args.input)
    started = time.time()
    results: dict[str, Any] = {"args": vars(args), "models": models, "presets": presets, "cpus": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(tmp, os.path.join(tmp, "ray"), args.backend, args.eval_batch_size, args.max_foreign_cores, args.retries)
        sources = write_sources(rows, args.repeat, tmp)
        n1, n5 = len(sources[1][1]), len(sources[args.repeat][1])
        print(f"input: {args.input} ({n1} rows) -> x1 {n1} rows, x{args.repeat} {n5} rows; {os.cpu_count()} CPUs", flush=True)
        jobs, per_model = measure_new_cluster(bench, models, presets, sources, args)
        if args.reuse_cluster:
            measure_running_cluster(bench, models, sources, args, jobs)
        checks = check_labels(bench, models, sources, args, jobs, per_model)
    table = table_rows(models, jobs, per_model, n1, n5, args.repeat)
    print(f"\ncheckpoints {models}; {os.cpu_count()} CPUs; torch {torch.__version__}; input {args.input} x{args.repeat}\n")
    print(markdown(table, per_model) + "\n")
    print("\n".join(checks))
    goal_lines = goals(table, per_model, presets)
    print("\n".join(goal_lines))
    for m in per_model.values():
        m.pop("pipe_labels", None)
    results.update(per_model=per_model, table=table, checks=checks, goals=goal_lines,
                   jobs={"/".join(map(str, k)): {kk: vv for kk, vv in v.items() if kk != "labels"} for k, v in jobs.items()})  # fmt: skip
    common.write_results("batch_predict", results, args.out, started=started)


if __name__ == "__main__":
    main()
