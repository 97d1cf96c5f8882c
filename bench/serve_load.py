"""HTTP load on loopback: the ynat-ray Serve app against a naive one-process server, same trained checkpoint, same run.

  (a) ynat-ray on Ray Serve, started the product's way (`ynat_ray.serving.app.deploy`): ONE `YnatServer`
      replica (FastAPI + the continuous batcher + the inference engine; ONNX Runtime int8 on CPU where the export's
      parity check passed) holding `--replica_cpus` CPUs, autoscaling pinned (min = max = 1) so the numbers
      measure the server, not scaling, behind HAProxy direct ingress (or Serve's Python proxy if HAProxy
      cannot start; the ingress in use is reported). One extra cell (`--parts ... proxy`, on by default) serves
      the first model through Serve's Python proxy (`http_ingress="proxy"`), so HAProxy's gain is visible.
  (b) naive: one uvicorn + FastAPI process whose endpoint calls `transformers.pipeline(...)` per request
      (an `async def` endpoint, so requests run one at a time, the way such servers usually start out).

Load: `wrk -t1 -c<concurrency> -d<duration>s --latency` with a Lua script that rotates through real titles
from `--input` as JSON bodies of 1 or 8 titles (`{"inputs": [...]}`), pre-formatted once so the client
spends little CPU. wrk is a C program with one thread: it takes far less CPU per request than a Python
client, which matters when client and servers share 2 cores. If wrk is missing (or `--client httpx`), a
closed-loop asyncio + httpx client in this process is used instead; the output says which. Each cell gets a
`--warmup` run first (not measured). Per cell: req/s, texts/s, p50/p99 latency, non-2xx responses and socket
errors, and the CPU each process spent per request (the server processes, HAProxy, the client, and the
whole machine), which shows where the time goes. Correctness is checked separately before the load: a few
httpx requests must answer 200 with 7 labels per title, and the top labels of both servers are compared.

Ratios (ynat-ray / naive) are computed within one run on the same checkpoint; absolute numbers on a shared
2-core machine drift, ratios less so. The targets checked at the end, at the highest `--concurrency` (16):
ynat-tiny 1 title/request >= 2.5x req/s with p99 <= 250 ms; ynat-tiny 8 titles/request >= 6x texts/s;
6x384 (ynat-small) 8 titles/request >= 5x texts/s; and at concurrency 1, one title per request (issue 19, no
latency tax on a lone request): the Serve app's p50 <= the naive server's and its req/s >= the naive server's.

    . .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/serve_load.py --model tiny=/path/to/ynat-tiny/checkpoint --model 6x384=/path/to/ynat-small/checkpoint \\
        --input /path/to/klue-ynat/validation.jsonl
    # c1 and c16 in one run (every --texts at both; the 1-title c1 cell is measured once):
    python bench/serve_load.py --model tiny=DIR --input ... --concurrency 1 16 --replicas 2 --replica_cpus 1
    # try batching settings (short cells, Serve only, first model), then pass the best to the full run:
    python bench/serve_load.py --model tiny=DIR --input ... --sweep 32:0.01 16:0.002 64:0.005 --duration 6
    python bench/serve_load.py --model tiny=DIR --model 6x384=DIR --input ... \\
        --batch_settings tiny=128:0.005 --batch_settings 6x384=32:0.005 --profile   # py-spy: where the replica's CPU goes
    python bench/serve_load.py --report bench/results/serve_load_<time>.json      # print a saved run again

The machine is shared: before each cell the script waits for a low load average (`common.wait_quiet`), and a cell
during which other people's processes used more than `--max_foreign_cores` is measured again (the column "other
people's load").

The titles are KLUE YNAT (Park et al., KLUE, 2021; CC BY-SA 4.0). Writes bench/results/serve_load_<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import common
import httpx
import numpy as np

APP = "bench"  # Serve application name: the replica's process title is ray::ServeReplica:bench:YnatClassifier
LABELS_PER_TITLE = 7
# (model preset from the checkpoint's run spec, texts/request) -> (metric, ratio target, p99 limit ms or None)
TARGETS: dict[tuple[str, int], tuple[str, float, float | None]] = {
    ("ynat-tiny", 1): ("req_per_s", 2.5, 250.0),
    ("ynat-tiny", 8): ("texts_per_s", 6.0, None),
    ("ynat-small", 8): ("texts_per_s", 5.0, None),
}


PROFILES: dict[str, dict[str, Any]] = {}


@dataclass
class Cell:
    model: str
    server: str  # naive | serve-haproxy | serve-proxy
    texts_per_request: int
    concurrency: int
    client: str
    requests: int
    seconds: float
    req_per_s: float
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    settings: str = ""
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)


def bodies(titles: list[str], texts_per_request: int) -> list[str]:
    """JSON bodies of consecutive groups of titles (a list even for one title, like the naive server expects)."""
    n = texts_per_request
    return [json.dumps({"inputs": titles[i : i + n]}, ensure_ascii=False) for i in range(0, len(titles) - n + 1, n)]


# ---- CPU accounting -------------------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds (user + system) of named process groups and of the whole machine, between start() and stop().

    Serve processes are found by their process title (Ray sets `ray::ServeReplica:<app>:<deployment>`,
    `ray::ProxyActor`, `ray::ServeController`) or binary name (`haproxy`); `client` is wrk (a child process,
    measured with RUSAGE_CHILDREN) or this process for the httpx client; `machine` is every non-idle CPU second.
    """

    def __init__(self, pids: dict[str, list[int]]):
        self.pids = pids

    @staticmethod
    def serve_processes() -> dict[str, list[int]]:
        import psutil

        groups: dict[str, list[int]] = {}
        for proc in psutil.process_iter(["cmdline", "name"]):
            try:
                first = (proc.info["cmdline"] or [""])[0]
                name = proc.info["name"] or ""
            except (psutil.Error, IndexError):
                continue
            if first.startswith(f"ray::ServeReplica:{APP}:"):
                groups.setdefault("replica", []).append(proc.pid)
            elif name == "haproxy" or first.endswith("/haproxy"):
                groups.setdefault("haproxy", []).append(proc.pid)
            elif first.startswith("ray::ProxyActor"):
                groups.setdefault("serve_proxy", []).append(proc.pid)
            elif first.startswith("ray::ServeController"):
                groups.setdefault("controller", []).append(proc.pid)
        return groups

    def _read(self) -> dict[str, float]:
        import psutil

        out: dict[str, float] = {}
        for group, pids in self.pids.items():
            total = 0.0
            for pid in pids:
                try:
                    t = psutil.Process(pid).cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[group] = total
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        out["_children"] = children.ru_utime + children.ru_stime
        out["_self"] = me.ru_utime + me.ru_stime
        cpu = psutil.cpu_times()
        out["machine"] = sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0)
        return out

    def start(self) -> None:
        self.before = self._read()

    def stop(self, requests: int, client: str) -> dict[str, float]:
        after = self._read()
        delta = {k: after[k] - self.before[k] for k in after}
        delta["client"] = delta.pop("_children") if client == "wrk" else delta.pop("_self")
        delta.pop("_children", None), delta.pop("_self", None)
        return {k: round(1000 * v / max(requests, 1), 3) for k, v in delta.items()}


# ---- load generators ----------------------------------------------------------------------------------
def lua_script(path: str, payloads: list[str]) -> str:
    """A wrk script that pre-formats every POST once (in `init`) and rotates through them."""
    for body in payloads:
        if "]==]" in body:
            raise ValueError("a title contains ']==]', which would end the Lua long string")
    items = ",\n".join(f"[==[{b}]==]" for b in payloads)
    Path(path).write_text(
        f"local bodies = {{\n{items}\n}}\n"
        "local reqs = {}\nlocal i = 0\n"
        "function init(args)\n"
        '  for k, b in ipairs(bodies) do reqs[k] = wrk.format("POST", "/predict", {["Content-Type"]="application/json"}, b) end\n'
        "end\n"
        "function request()\n  i = i + 1\n  if i > #reqs then i = 1 end\n  return reqs[i]\nend\n",
        encoding="utf-8",
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, Any]:
    """requests, seconds, req/s, p50/p99 (ms), non-2xx and socket errors from wrk's --latency output."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not total or not rps:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    pct = dict(re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, flags=re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(total.group(1)),
        "seconds": _ms(total.group(2) + total.group(3)) / 1000,
        "req_per_s": float(rps.group(1)),
        "p50_ms": _ms(pct["50"]) if "50" in pct else float("nan"),
        "p99_ms": _ms(pct["99"]) if "99" in pct else float("nan"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


def run_wrk(url: str, script: str, concurrency: int, duration: float) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "30s", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


async def _httpx_cell(url: str, payloads: list[str], concurrency: int, duration: float) -> dict[str, Any]:
    """Closed loop: `concurrency` workers each send a request, wait for it, send the next, until the deadline."""
    latencies: list[float] = []
    non_2xx = errors = sent = 0
    stop_at = time.perf_counter() + duration

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal non_2xx, errors, sent
        while time.perf_counter() < stop_at:
            body = payloads[sent % len(payloads)]
            sent += 1
            t0 = time.perf_counter()
            try:
                resp = await client.post("/predict", content=body.encode(), headers={"Content-Type": "application/json"})
                non_2xx += not 200 <= resp.status_code < 400
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "req_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "non_2xx": non_2xx,
        "socket_errors": errors,
    }


class LoadClient:
    def __init__(self, kind: str, titles: list[str], workdir: str):
        self.kind, self.titles, self.workdir = kind, titles, workdir
        self._scripts: dict[int, str] = {}

    def run(self, url: str, texts_per_request: int, concurrency: int, duration: float) -> dict[str, Any]:
        payloads = bodies(self.titles, texts_per_request)
        if self.kind == "wrk":
            if texts_per_request not in self._scripts:
                self._scripts[texts_per_request] = lua_script(os.path.join(self.workdir, f"titles_{texts_per_request}.lua"), payloads)
            return run_wrk(url, self._scripts[texts_per_request], concurrency, duration)
        return asyncio.run(_httpx_cell(url, payloads, concurrency, duration))


def measure(
    server: str, model: str, url: str, client: LoadClient, plan: list[tuple[int, int]], args: argparse.Namespace,
    pids: dict[str, list[int]], settings: str = "",
) -> list[Cell]:  # fmt: skip
    """One cell per (texts per request, concurrency) of `plan`, each after a warm-up on a quiet machine."""
    return [measure_cell(server, model, url, client, texts, concurrency, args, pids, settings) for texts, concurrency in plan]


def load_with_cpu(client: LoadClient, url: str, texts: int, concurrency: int, duration: float, pids: dict[str, list[int]]) -> tuple[dict, dict]:
    """One measured load run and the CPU each process group spent per request during it."""
    meter = CpuMeter(pids)
    meter.start()
    r = client.run(url, texts, concurrency, duration)
    return r, meter.stop(r["requests"], client.kind)


def measure_cell(
    server: str, model: str, url: str, client: LoadClient, texts: int, concurrency: int, args: argparse.Namespace,
    pids: dict[str, list[int]], settings: str,
) -> Cell:  # fmt: skip
    what = f"{server} {texts} text(s)/req c{concurrency}"
    (r, cpu), other, waited = common.undisturbed(
        partial(load_with_cpu, client, url, texts, concurrency, args.duration, pids), what, args.max_foreign_cores, args.retries,
        warmup=partial(client.run, url, texts, concurrency, args.warmup),
    )  # fmt: skip
    if r["non_2xx"] + r["socket_errors"] > 0.01 * max(r["requests"], 1):
        raise RuntimeError(f"{what}: {r['non_2xx']} non-2xx, {r['socket_errors']} socket errors of {r['requests']}")
    cpu["other_processes_cores"] = round(other, 3)
    cpu["waited_for_quiet_s"] = round(waited, 1)
    good = r["requests"] - r["non_2xx"]
    cell = Cell(
        model=model, server=server, texts_per_request=texts, concurrency=concurrency, client=client.kind,
        requests=r["requests"], seconds=round(r["seconds"], 2), req_per_s=round(r["req_per_s"], 1),
        texts_per_s=round(good * texts / r["seconds"], 1), p50_ms=round(r["p50_ms"], 1), p99_ms=round(r["p99_ms"], 1),
        non_2xx=r["non_2xx"], socket_errors=r["socket_errors"], settings=settings, cpu_ms_per_request=cpu,
    )  # fmt: skip
    print(
        f"  {server:<13} {texts} text(s)/req c{concurrency:<3}: {cell.req_per_s:>7} req/s {cell.texts_per_s:>8} texts/s "
        f"p50 {cell.p50_ms} ms p99 {cell.p99_ms} ms non-2xx {cell.non_2xx} sock-err {cell.socket_errors}  CPU ms/req {cpu}",
        flush=True,
    )
    return cell


def check_answers(url: str, titles: list[str]) -> list[str]:
    """A few requests of 1 and 8 titles: 200, one list per title, 7 labels each. Returns the top labels of 32 titles."""
    top: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, 32, 8):
            group = titles[start : start + 8]
            for payload, n in (({"inputs": group[0]}, 1), ({"inputs": group}, len(group))):
                resp = client.post("/predict", json=payload)
                if resp.status_code != 200:
                    raise RuntimeError(f"{url}/predict answered {resp.status_code}: {resp.text[:300]}")
                out = resp.json()
                if isinstance(payload["inputs"], str) and out and isinstance(out[0], dict):
                    out = [out]  # pipeline(str) answers one flat list; the Serve app (HF protocol) a list per input
                if len(out) != n or any(len(labels) != LABELS_PER_TITLE for labels in out):
                    raise RuntimeError(f"{url}/predict: expected {n} x {LABELS_PER_TITLE} labels, got {out!r:.300}")
            top += [max(labels, key=lambda x: x["score"])["label"] for labels in out]
    return top


def profile_cell(pid: int, url: str, client: LoadClient, texts: int, concurrency: int, seconds: float, out_path: str) -> dict[str, Any]:
    """Run one extra load cell (not in the table) with py-spy sampling process `pid`; summarise where its CPU goes.

    py-spy samples only threads that are running (not idle), so sample shares approximate CPU shares.
    `--nonblocking` keeps the target running (slightly less exact stacks, much less perturbation).
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.path.exists(spy):
        return {"error": "py-spy not installed"}
    duration = max(2, round(seconds) - 2)
    common.wait_quiet()
    cmd = [spy, "record", "-p", str(pid), "-d", str(duration), "-r", "200", "-t", "--nonblocking", "-f", "raw", "-o", out_path]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    load = client.run(url, texts, concurrency, seconds)
    err = proc.communicate(timeout=60)[1]
    if proc.returncode != 0 or not os.path.exists(out_path):
        return {"error": f"py-spy failed: {err[-500:]}"}
    return {"load": load, **summarise_stacks(out_path)}


def summarise_stacks(path: str, top: int = 12) -> dict[str, Any]:
    """Per thread: share of samples; per thread, the functions with the most inclusive and self samples."""
    threads: dict[str, int] = {}
    inclusive: dict[str, dict[str, int]] = {}
    self_: dict[str, dict[str, int]] = {}
    total = 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\):\s*", "", frames[0]).strip() or frames[0]  # 'thread (123): MainThread'
        total += n
        threads[thread] = threads.get(thread, 0) + n
        names = [re.sub(r":\d+\)$", ")", f).strip() for f in frames[1:]]
        for name in set(names):
            inclusive.setdefault(thread, {})[name] = inclusive.setdefault(thread, {}).get(name, 0) + n
        if names:
            self_.setdefault(thread, {})[names[-1]] = self_.setdefault(thread, {}).get(names[-1], 0) + n

    def best(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, round(v / total, 3)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "thread_share": {k: round(v / total, 3) for k, v in sorted(threads.items(), key=lambda kv: -kv[1])},
        "inclusive": {t: best(d) for t, d in inclusive.items()},
        "self": {t: best(d) for t, d in self_.items()},
    }


def print_profile(name: str, prof: dict[str, Any]) -> None:
    if "error" in prof:
        print(f"  profile {name}: {prof['error']}", flush=True)
        return
    print(f"  profile {name}: {prof['samples']} samples; thread shares {prof['thread_share']}", flush=True)
    for thread, rows in prof["inclusive"].items():
        if prof["thread_share"].get(thread, 0) < 0.05:
            continue
        print(f"    [{thread}] inclusive: " + "; ".join(f"{share:.0%} {fn}" for fn, share in rows), flush=True)
        print(f"    [{thread}] self:      " + "; ".join(f"{share:.0%} {fn}" for fn, share in prof["self"].get(thread, [])), flush=True)


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


def run_naive(checkpoint: str, model: str, client: LoadClient, plan: list[tuple[int, int]], args: argparse.Namespace) -> tuple[list[Cell], list[str]]:
    port = common.free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", checkpoint, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        common.wait_ready(f"{url}/healthz", proc=proc)
        top = check_answers(url, client.titles)
        print(f"  naive: correctness ok (200, {LABELS_PER_TITLE} labels per title)", flush=True)
        cells = measure("naive", model, url, client, plan, args, {"server": [proc.pid]})
        if args.profile:
            PROFILES[f"{model}/naive"] = prof = profile_cell(
                proc.pid, url, client, 1, max(args.concurrency), args.duration, os.path.join(client.workdir, "pyspy_naive.txt")
            )
            print_profile(f"{model}/naive", prof)
        return cells, top
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- (a) the Serve app ----------------------------------------------------------------------------
def serve_config(checkpoint: str, args: argparse.Namespace, port: int, ingress: str, max_batch_size: int, wait_s: float) -> Any:
    from ynat_ray.config import ServeConfig

    return ServeConfig.of(
        checkpoint=checkpoint, host="127.0.0.1", port=port, min_replicas=args.replicas, max_replicas=args.replicas, replica_cpus=args.replica_cpus,
        max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s, http_ingress=ingress, backend=args.backend,
    )  # fmt: skip


def batch_settings(args: argparse.Namespace, model: str) -> tuple[int, float]:
    """(max_batch_size, batch_wait_timeout_s) for `model`: its --batch_settings entry, else the global flags."""
    for spec in args.batch_settings:
        name, _, value = spec.partition("=")
        if name == model:
            size, wait = value.split(":")
            return int(size), float(wait)
    return args.max_batch_size, args.batch_wait_timeout_s


def start_serve(cfg: Any) -> tuple[str, dict[str, Any]]:
    """`deploy` (the product path) on a fresh Serve; returns (ingress, /info)."""
    from ynat_ray.serving.app import deploy

    ingress = deploy(cfg, name=APP, route_prefix="/", log=lambda line: print(line, flush=True))
    url = f"http://127.0.0.1:{cfg.serve.port}"
    common.wait_ready(f"{url}/readyz")
    return ingress, httpx.get(url + "/info", timeout=10).json()


def run_serve(
    checkpoint: str, model: str, client: LoadClient, plan: list[tuple[int, int]], args: argparse.Namespace, ingress: str, extra: bool = False,
) -> tuple[list[Cell], list[str], dict[str, Any]]:  # fmt: skip
    from ynat_ray.serving.ingress import stop_serve

    size, wait = batch_settings(args, model)
    cfg = serve_config(checkpoint, args, common.free_port(), ingress, size, wait)
    try:
        used, info = start_serve(cfg)
        url = f"http://127.0.0.1:{cfg.serve.port}"
        top = check_answers(url, client.titles)
        settings = f"max_batch_size={cfg.limits.max_batch_size}, batch_wait_timeout_s={cfg.limits.batch_wait_timeout_s:g}"
        print(f"  serve ({used}): correctness ok; engine {info.get('backend')} ({info.get('backend_reason')}), {info.get('threads')} thread(s); {settings}", flush=True)
        server = f"serve-{used}" + (" (extra)" if extra else "")
        pids = CpuMeter.serve_processes()
        cells = measure(server, model, url, client, plan, args, pids, settings)
        if args.profile and not extra and pids.get("replica"):
            PROFILES[f"{model}/{server}"] = prof = profile_cell(
                pids["replica"][0], url, client, 1, max(args.concurrency), args.duration, os.path.join(client.workdir, "pyspy_replica.txt")
            )
            print_profile(f"{model}/{server} replica", prof)
        return cells, top, {"ingress_requested": ingress, "ingress_used": used, "info": info, "processes": {k: len(v) for k, v in pids.items()}}
    finally:
        stop_serve()


def run_sweep(checkpoint: str, model: str, client: LoadClient, args: argparse.Namespace) -> list[Cell]:
    """Serve only: each --sweep setting MAX_BATCH:WAIT_S on the 1-title and N-title cells at --concurrency."""
    from ray import serve

    from ynat_ray.serving.app import build_app
    from ynat_ray.serving.ingress import stop_serve

    plan = [(n, c) for n in args.texts for c in args.concurrency]
    cells: list[Cell] = []
    first = True
    port = common.free_port()
    try:
        for spec in args.sweep:
            size, wait = spec.split(":")
            cfg = serve_config(checkpoint, args, port, "haproxy", int(size), float(wait))
            if first:
                used, _ = start_serve(cfg)
                first = False
            else:
                serve.run(build_app(cfg), name=APP, route_prefix="/")
                common.wait_ready(f"http://127.0.0.1:{port}/readyz")
            settings = f"max_batch_size={size}, batch_wait_timeout_s={wait}"
            print(f"== sweep {model} ({used}): {settings}", flush=True)
            cells += measure(f"serve-{used}", model, f"http://127.0.0.1:{port}", client, plan, args, CpuMeter.serve_processes(), settings)
    finally:
        stop_serve()
    return cells


# ---- report -------------------------------------------------------------------------------------------
def ratio_of(cell: Cell, naive: dict[tuple[str, int, int], Cell], metric: str) -> float | None:
    base = naive.get((cell.model, cell.texts_per_request, cell.concurrency))
    if base is None or cell.server == "naive" or not getattr(base, metric):
        return None
    return getattr(cell, metric) / getattr(base, metric)


def table(cells: list[Cell]) -> str:
    naive = {(c.model, c.texts_per_request, c.concurrency): c for c in cells if c.server == "naive"}
    rows = [
        "| model | server | batch size / wait s | texts/req | conc. | req/s | texts/s | p50 ms | p99 ms | non-2xx | req/s vs naive | texts/s vs naive "
        "| CPU ms per request: server processes / client / whole machine | other people's load (cores) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in cells:
        r_req, r_txt = ratio_of(c, naive, "req_per_s"), ratio_of(c, naive, "texts_per_s")
        cpu = c.cpu_ms_per_request
        server_cpu = ", ".join(f"{k} {cpu[k]:.2f}" for k in ("server", "replica", "haproxy", "serve_proxy") if k in cpu)
        rows.append(
            f"| {c.model} | {c.server} | {c.settings.replace('max_batch_size=', '').replace(', batch_wait_timeout_s=', ' / ') or '-'} | {c.texts_per_request} | {c.concurrency} | {c.req_per_s:.0f} | {c.texts_per_s:.0f} | {c.p50_ms} | {c.p99_ms} "
            f"| {c.non_2xx + c.socket_errors} | {f'{r_req:.2f}x' if r_req else ''} | {f'{r_txt:.2f}x' if r_txt else ''} "
            f"| {server_cpu} / {cpu.get('client', float('nan')):.2f} / {cpu.get('machine', float('nan')):.2f} | {cpu.get('other_processes_cores', float('nan')):.2f} |"
        )
    return "\n".join(rows)


def goals(cells: list[Cell], presets: dict[str, str], concurrency: int) -> list[dict[str, Any]]:
    """The load targets at `concurrency` (the highest asked for), then the lone-request goal at concurrency 1."""
    naive = {(c.model, c.texts_per_request, c.concurrency): c for c in cells if c.server == "naive"}
    out = []
    for c in cells:
        target = TARGETS.get((presets.get(c.model, ""), c.texts_per_request))
        if not target or not c.server.startswith("serve-") or c.server.endswith("(extra)") or c.concurrency != concurrency:
            continue
        metric, need, p99_limit = target
        ratio = ratio_of(c, naive, metric)
        met = ratio is not None and ratio >= need and (p99_limit is None or c.p99_ms <= p99_limit)
        text = f"{c.model} {c.texts_per_request} title(s)/req c{c.concurrency}: {metric} {ratio or float('nan'):.2f}x (target >= {need}x)"
        if p99_limit is not None:
            text += f", p99 {c.p99_ms} ms (target <= {p99_limit:g} ms)"
        out.append({"goal": text, "met": met, "ratio": ratio, "p99_ms": c.p99_ms})
    for c in cells:
        if c.concurrency == 1 and c.texts_per_request == 1:
            out.append({"goal": f"{c.model} {c.server} c1 1 title: p50 {c.p50_ms} ms, p99 {c.p99_ms} ms", "met": None})
    out += [lone_request_goal(c, naive[(c.model, 1, 1)]) for c in cells if _is_lone_serve_cell(c) and (c.model, 1, 1) in naive]
    return out


def _is_lone_serve_cell(cell: Cell) -> bool:
    return cell.server.startswith("serve-") and not cell.server.endswith("(extra)") and cell.concurrency == 1 and cell.texts_per_request == 1


def lone_request_goal(cell: Cell, naive: Cell) -> dict[str, Any]:
    """No latency tax on a lone request (issue 19): one client, one title, p50 and req/s at least the naive server's."""
    met = cell.p50_ms <= naive.p50_ms and cell.req_per_s >= naive.req_per_s
    text = (
        f"{cell.model} 1 title/req c1: p50 {cell.p50_ms} vs naive {naive.p50_ms} ms, {cell.req_per_s:.0f} vs naive {naive.req_per_s:.0f} req/s "
        "(target: p50 <= naive, req/s >= naive)"
    )
    return {"goal": text, "met": met, "ratio": cell.req_per_s / naive.req_per_s if naive.req_per_s else None, "p99_ms": cell.p99_ms}


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_model_args(parser)
    parser.add_argument("--texts", type=int, nargs="+", default=[1, 8], help="Titles per request for the load cells.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16], help="Open connections (wrk -c) for the load cells.")
    parser.add_argument(
        "--latency_concurrency", type=int, nargs="*", default=[1],
        help="Extra 1-title cells at these concurrencies (latency; default: concurrency 1). Pass nothing to skip.",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, default=12.0, help="Measured seconds per cell (wrk rounds to whole seconds).")
    parser.add_argument("--warmup", type=float, default=3.0, help="Unmeasured warm-up seconds before each cell, same load.")
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto", help="Load generator; auto: wrk if installed, else httpx.")
    parser.add_argument("--replica_cpus", type=float, default=2.0, help="CPUs of each Serve replica (= its engine's intra-op threads).")
    parser.add_argument(
        "--replicas", type=int, default=1,
        help="Serve replicas (min = max, autoscaling pinned). Each is one Python process; e.g. 2 x --replica_cpus 1 on 2 cores.",
    )  # fmt: skip
    parser.add_argument("--max_batch_size", type=int, default=None, help="The replica's max_batch_size (default: the product's).")
    parser.add_argument("--batch_wait_timeout_s", type=float, default=None, help="The replica's batch_wait_timeout_s (default: the product's).")
    parser.add_argument(
        "--batch_settings", action="append", default=[], metavar="NAME=MAX_BATCH:WAIT_S",
        help="Per-model batching settings (e.g. tiny=128:0.005), overriding --max_batch_size/--batch_wait_timeout_s for that model.",
    )  # fmt: skip
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "onnx-int8"], help="The Serve replica's engine backend.")
    parser.add_argument(
        "--sweep", nargs="+", default=None, metavar="MAX_BATCH:WAIT_S",
        help="Instead of the comparison: measure these batching settings on the Serve app (first --model, --texts x --concurrency).",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true",
        help="After each server's cells, one extra 1-title cell (not in the table) with py-spy on the naive server / the Serve replica.",
    )  # fmt: skip
    common.add_quiet_args(parser, retries=3)
    parser.add_argument(
        "--parts", nargs="+", choices=["naive", "serve", "proxy"], default=["naive", "serve", "proxy"],
        help="Which servers to measure: the naive one, the Serve app behind HAProxy, and the extra Serve-proxy cell.",
    )  # fmt: skip
    parser.add_argument("--report", default=None, metavar="JSON", help="Print the table and goals of a saved result file; measure nothing.")
    parser.add_argument("--num_cpus", type=int, default=None, help="Logical CPUs of the local Ray cluster (default: this machine's).")
    common.add_out_arg(parser)
    parser.add_argument("--baseline-server", dest="baseline_server", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    return parser, parser.parse_args()


def cell_plan(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(texts per request, concurrency) of each load cell: --texts x --concurrency, then the 1-title
    --latency_concurrency cells not already in it (so `--concurrency 1 16` measures c1 once)."""
    plan = [(n, c) for n in args.texts for c in args.concurrency] + [(1, c) for c in args.latency_concurrency]
    return list(dict.fromkeys(plan))


def compare(models: dict[str, str], presets: dict[str, str], client: LoadClient, args: argparse.Namespace, meta: dict[str, Any]) -> list[Cell]:
    """Per model: the naive server's cells, the Serve app's (HAProxy) cells, and for the first model the proxy cell."""
    cells: list[Cell] = []
    plan = cell_plan(args)
    for i, (name, checkpoint) in enumerate(models.items()):
        print(f"== {name} ({presets[name]}): {checkpoint}", flush=True)
        naive_top = serve_top = None
        if "naive" in args.parts:
            naive_cells, naive_top = run_naive(checkpoint, name, client, plan, args)
            cells += naive_cells
        if "serve" in args.parts:
            serve_cells, serve_top, meta[name] = run_serve(checkpoint, name, client, plan, args, "haproxy")
            cells += serve_cells
        if naive_top and serve_top:
            agree = float(np.mean([a == b for a, b in zip(naive_top, serve_top)]))
            meta[name]["top_label_agreement_with_naive"] = agree
            print(f"  top labels, serve vs naive (pipeline, torch fp32), {len(naive_top)} titles: {agree:.2%} agree", flush=True)
        if i == 0 and "proxy" in args.parts:
            proxy_cells, _, meta[f"{name}/proxy"] = run_serve(checkpoint, name, client, [(1, max(args.concurrency))], args, "proxy", extra=True)
            cells += proxy_cells
    return cells


def main() -> None:
    parser, args = parse_args()
    if args.baseline_server:
        baseline_server(args.baseline_server, args.port)
        return
    if args.report:
        report(json.loads(Path(args.report).read_text(encoding="utf-8")))
        return
    if not args.model or not args.input:
        parser.error("--model and --input are required")

    import ray

    from ynat_ray.config import LimitArgs

    defaults = LimitArgs()
    args.max_batch_size = args.max_batch_size or defaults.max_batch_size
    args.batch_wait_timeout_s = defaults.batch_wait_timeout_s if args.batch_wait_timeout_s is None else args.batch_wait_timeout_s
    models = common.parse_models(args.model)
    presets = {name: common.preset_of(path) for name, path in models.items()}
    titles = common.read_ynat(args.input)["title"].tolist()
    kind = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    if kind == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (apt-get install -y wrk)")
    print(f"load generator: {kind}; {len(titles)} titles from {args.input}; models {presets}", flush=True)

    # address="local": always a fresh cluster of our own, never one that `ray start` left running on this machine.
    ray.init(address="local", num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    started = time.time()
    cells: list[Cell] = []
    meta: dict[str, Any] = {}
    complete = False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = LoadClient(kind, titles, tmp)
            if args.sweep:
                name = next(iter(models))
                cells += run_sweep(models[name], name, client, args)
            else:
                cells += compare(models, presets, client, args, meta)
        complete = True
    finally:
        ray.shutdown()
        results = {
            "args": vars(args), "models": models, "presets": presets, "client": kind, "servers": meta, "complete": complete,
            "cells": [asdict(c) for c in cells], "profiles": PROFILES,
        }  # fmt: skip
        if cells:
            report(results)
            name = "serve_load_sweep" if args.sweep else "serve_load"
            common.write_results(name, results, args.out, started=started, suffix="" if complete else "_partial")


def report(results: dict[str, Any]) -> None:
    """Print the settings, the table and the goals of one run's results (also used by --report)."""
    args = argparse.Namespace(**results["args"])
    cells = [Cell(**c) for c in results["cells"]]
    print(f"\nload generator: {results['client']} (-t1, --latency); {args.duration:g} s per cell after {args.warmup:g} s warm-up; {args.replicas} replica(s) x {args.replica_cpus:g} CPU")
    if not args.sweep:
        for name in results["models"]:
            size, wait = batch_settings(args, name)
            print(f"{name}: Serve batching max_batch_size={size}, batch_wait_timeout_s={wait:g}")
    for name, m in results["servers"].items():
        info = m.get("info", {})
        print(f"{name}: ingress {m['ingress_used']} (asked {m['ingress_requested']}); engine {info.get('backend')}, {info.get('threads')} thread(s)")
    print(f"\n{table(cells)}\n")
    results["goals"] = [] if args.sweep else goals(cells, results["presets"], max(args.concurrency))
    for g in results["goals"]:
        mark = "" if g["met"] is None else ("MET   " if g["met"] else "MISSED")
        print(f"{mark:<6} {g['goal']}")


if __name__ == "__main__":
    main()
