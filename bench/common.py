"""What every bench script shares: free ports and readiness, a quiet machine, the real YNAT rows, the machine
description and the results file.

Why one module: the benchmarks run on shared machines and compare figures across runs, so "quiet", "the same
rows" and "the same machine facts" must mean the same thing in every script. Nothing here names a machine's
paths or other people's processes: inputs are arguments, scratch space comes from `tempfile`, and a quiet
machine is judged by its load average.

Not a package: `python bench/<script>.py` puts bench/ on sys.path, so scripts `import common` (tests do the same).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
if str(REPO) not in sys.path:  # a checkout that was not pip-installed still imports its own ynat_ray
    sys.path.insert(0, str(REPO))

T = TypeVar("T")

# The ISA flags that decide fp32/int8/bf16 kernel speed (recorded with every CPU benchmark).
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


# ---- ports and readiness -----------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout_s: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200. With `proc` (the server's process), stop early if it exits: a server
    that died should fail the run with its exit status, not after the whole timeout."""
    import httpx

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before {url} was ready")
        try:
            resp = httpx.get(url, timeout=5)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:g}s ({last})")


# ---- a quiet machine ---------------------------------------------------------------------------------------
class ForeignCpu:
    """Cores used during a window by processes that are neither this script's descendants nor (when `also_mine`
    is given) processes whose command line contains it, and their descendants (e.g. a `ray start` cluster with its
    own temp dir). Processes that start and end inside the window are missed, so this is a lower bound."""

    def __init__(self, also_mine: str | None = None) -> None:
        self.also_mine = also_mine

    def _snapshot(self) -> tuple[dict[int, tuple[float, float]], set[int]]:
        import psutil

        procs: dict[int, tuple[float, float]] = {}
        roots = [psutil.Process()]
        for proc in psutil.process_iter(["cpu_times", "create_time", "cmdline"]):
            times = proc.info["cpu_times"]
            if times is not None:
                procs[proc.pid] = (times.user + times.system, proc.info["create_time"] or 0.0)
            if self.also_mine and any(self.also_mine in arg for arg in proc.info["cmdline"] or []):
                roots.append(proc)
        mine: set[int] = set()
        for root in roots:
            with contextlib.suppress(psutil.Error):
                mine |= {root.pid} | {c.pid for c in root.children(recursive=True)}
        return procs, mine

    def start(self) -> None:
        self.t0, self.wall0 = time.monotonic(), time.time()
        self.before, self.mine = self._snapshot()

    def stop(self) -> float:
        """Foreign cores (CPU seconds per wall second) since `start`."""
        after, mine = self._snapshot()
        mine |= self.mine
        total = 0.0
        for pid, (cpu, created) in after.items():
            if pid in mine:
                continue
            if pid in self.before and self.before[pid][1] == created:
                total += cpu - self.before[pid][0]
            elif created >= self.wall0:
                total += cpu
        return total / max(time.monotonic() - self.t0, 1e-6)


def wait_quiet(below: float | None = None, max_wait_s: float = 600.0, poll_s: float = 2.0) -> float:
    """Wait until the 1-minute load average is under `below` (default: a quarter of the CPUs this process may use),
    at most `max_wait_s`; return the seconds waited.

    Why before every cell: on a shared machine a cell measured while another job burns a core measures that job.
    The load average also covers the tail of our own previous cell (a finished job's Ray processes exit for a few
    seconds after its driver returns), so the next cell starts from an idle machine either way. Whatever load
    slips through is measured during the cell (`ForeignCpu`) and the cell repeated (`undisturbed`).
    """
    from ynat_ray.cpu import available_cpus

    limit = 0.25 * available_cpus() if below is None else below
    started, said = time.monotonic(), False
    while (load := os.getloadavg()[0]) >= limit and time.monotonic() - started < max_wait_s:
        if not said:
            print(f"  waiting for a quiet machine (load average {load:.2f}, want < {limit:g}) ...", flush=True)
            said = True
        time.sleep(poll_s)
    return time.monotonic() - started


def undisturbed(
    run: Callable[[], T], what: str, max_foreign_cores: float, retries: int, *, also_mine: str | None = None,
    warmup: Callable[[], object] | None = None, foreign_of: Callable[[T], float] | None = None,
) -> tuple[T, float, float]:  # fmt: skip
    """Measure `run` on a quiet machine, again (up to `retries` times) while other people's processes used more than
    `max_foreign_cores` during it; the last try is kept (and flagged by its figure). Returns (result, foreign cores,
    seconds waited for quiet). `warmup` runs after the wait, outside the window; `foreign_of` reads the foreign
    load from the result when `run` measures it itself."""
    for attempt in range(1, retries + 2):
        waited = wait_quiet()
        if warmup is not None:
            warmup()
        meter = ForeignCpu(also_mine)
        meter.start()
        result = run()
        other = foreign_of(result) if foreign_of is not None else meter.stop()
        if other <= max_foreign_cores:
            break
        again = "; measuring again" if attempt <= retries else "; keeping it, flagged"
        print(f"  {what}: other processes used {other:.2f} cores (attempt {attempt}){again}", flush=True)
    return result, other, waited


# ---- arguments and inputs ----------------------------------------------------------------------------------
def add_model_args(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """--model NAME=DIR (repeatable) and --input: the checkpoints to compare and the real rows they see."""
    parser.add_argument(
        "--model", action="append", required=required, metavar="NAME=DIR",
        help="A trained checkpoint as NAME=DIR (repeat for several, e.g. tiny=... 6x384=...). Its run spec names the preset.",
    )  # fmt: skip
    parser.add_argument("--input", required=required, help="Real YNAT rows (jsonl/json/csv/parquet), e.g. the KLUE YNAT validation split.")


def add_quiet_args(parser: argparse.ArgumentParser, *, retries: int) -> None:
    """--max_foreign_cores and --retries: how a shared machine's noise is handled (see `undisturbed`)."""
    parser.add_argument(
        "--max_foreign_cores", type=float, default=0.25,
        help="A measurement during which other people's processes used more cores than this is repeated (shared machine).",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=int, default=retries, help="How many times a disturbed measurement is repeated (the last try is kept)."
    )


def add_out_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=str(RESULTS), help="Directory for the JSON results (default: bench/results).")


def parse_models(specs: list[str]) -> dict[str, str]:
    """--model NAME=DIR entries -> {name: checkpoint dir}; a malformed entry or a missing directory stops the run."""
    models = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model wants NAME=CHECKPOINT_DIR, got {spec!r}")
        if not os.path.isdir(path):
            raise SystemExit(f"--model {name}: {path} is not a directory")
        models[name] = path
    return models


def preset_of(checkpoint: str) -> str:
    """The model preset a checkpoint was trained from (its run spec), '' when unknown: targets are per preset."""
    from ynat_ray.checkpoint import read_run_spec

    spec = read_run_spec(checkpoint)
    return (spec.model if spec else "") or ""


def read_ynat(path: str, *, strict: bool = False) -> Any:
    """Real YNAT rows through the product's own reader (guid, title, label, ...). Default: malformed rows skipped and
    labels optional (titles for load); `strict`: a malformed or unlabelled row is an error (rows that are scored)."""
    from ynat_ray.config import RowArgs
    from ynat_ray.data.reading import read_rows

    return read_rows(path, RowArgs(on_bad_rows="error" if strict else "skip"), require_label=strict)


# ---- the machine and the results ---------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """This host's CPU (model, CPUs this process may use, the kernel-relevant ISA flags), from `ynat_ray.cpu`."""
    from ynat_ray.cpu import available_cpus, cpu_flags, cpu_model, has_native_bf16

    flags = cpu_flags()
    return {
        "model": cpu_model() or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "usable_cpus": available_cpus(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "native_bf16": has_native_bf16(),
    }


def versions(*modules: str) -> dict[str, str]:
    """Python's version and each named module's `__version__` (e.g. versions("torch", "onnxruntime"))."""
    import importlib

    out = {"python": platform.python_version()}
    for name in modules:
        out[name] = str(getattr(importlib.import_module(name), "__version__", "?"))
    return out


def write_results(
    name: str, results: dict[str, Any], out_dir: str | Path = RESULTS, *, started: float | None = None, suffix: str = ""
) -> Path:
    """Write `<out_dir>/<name>_<unix time><suffix>.json` (the time the run started, else now) and say where."""
    os.makedirs(out_dir, exist_ok=True)
    path = Path(out_dir) / f"{name}_{int(started if started is not None else time.time())}{suffix}.json"
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    print(f"wrote {path}", flush=True)
    return path
