"""One epoch on >= 1M rows from >= 20 files: the streaming path (Ray Data reads) vs the old in-memory path.

  stream     `ynat-ray train --data DIR` as it is now: Ray Data read tasks parse and validate the files; the
             driver sums a hash histogram, collects the hold-out and a <= 100k-title tokenizer sample, and
             hands Train a lazy read -> filter -> tokenize Dataset.
  in-memory  the pre-streaming path, emulated with the same code: `load_splits(cfg)` reads every row into
             pandas on the driver (same reader, same hash split), the tokenizer learns from all train
             titles, and `ray.data.from_pandas` ships the frame to the object store.

Each variant runs `run_training` (the default model, 1 epoch) in its own subprocess with its own local Ray, so
driver peaks never mix: ru_maxrss of the driver process before `fit()` (data preparation), through `fit()`,
and at the end (finish_run's ONNX export and scoring included); plus the loop's own samples/s (rank 0,
first step excluded) and wall times.

Data: the real titles of --input (e.g. 44,931 KLUE YNAT train rows as jsonl, one record a line) repeated
to --rows, guid suffixed '#<copy>' so every row is its own, spread over --files jsonl files in a temp dir.
KLUE YNAT: Park et al., "KLUE: Korean Language Understanding Evaluation", NeurIPS 2021 Datasets and
Benchmarks, https://github.com/KLUE-benchmark/KLUE -- licensed CC BY-SA 4.0; the generated files are
derived data under the same license and are deleted after the run.

    python bench/train_streaming.py --input YNAT.jsonl                                  # 1,000,000 rows, 20 files, both variants
    python bench/train_streaming.py --input YNAT.jsonl --max-train-samples 200000       # same 1M-row corpus read, a shorter epoch
    python bench/train_streaming.py --input YNAT.jsonl --rows 200000 --variants stream  # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common


def build_corpus(source: str, out: Path, rows: int, files: int) -> int:
    """Write `rows` rows (the real records of `source`, cycled) over `files` jsonl files; return the rows written."""
    base = [json.loads(line) for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    written = 0
    for f in range(files):
        lines = []
        for i in range(f * per_file, min(rows, (f + 1) * per_file)):
            rec = base[i % len(base)]
            lines.append(json.dumps({**rec, "guid": f"{rec['guid']}#{i // len(base)}"}, ensure_ascii=False))
        (out / f"part-{f:03d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        written += len(lines)
    return written


def peak_mib() -> float:
    """This process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    """Run one variant in this process and print one JSON line with its measurements."""
    import psutil
    import ray.train.torch

    import ynat_ray.data.sources
    import ynat_ray.train
    from ynat_ray.cluster import init_ray
    from ynat_ray.config import TrainConfig

    marks: dict[str, float] = {}
    current = psutil.Process()
    sampled = {"max_rss_mib": 0.0}
    done = threading.Event()

    def sample() -> None:  # the RSS curve's maximum, as a cross-check of ru_maxrss
        while not done.wait(0.2):
            sampled["max_rss_mib"] = max(sampled["max_rss_mib"], current.memory_info().rss / 2**20)

    threading.Thread(target=sample, daemon=True).start()
    init_ray()
    marks["after_ray_init_mib"] = peak_mib()

    if args.variant == "in-memory":
        original = ynat_ray.data.sources.load_splits

        def in_memory(data: object, **_: object) -> object:
            return original(data)  # stream=False: every row into pandas on the driver, as before streaming

        ynat_ray.data.sources.load_splits = in_memory  # train.py imports it from there when a run starts

    base_trainer = ray.train.torch.TorchTrainer
    times: dict[str, float] = {}

    class MarkedTrainer(base_trainer):  # type: ignore[misc, valid-type]
        def fit(self) -> object:
            marks["before_fit_mib"] = peak_mib()
            times["data_prep_s"] = time.perf_counter() - started
            fit_started = time.perf_counter()
            try:
                return super().fit()
            finally:
                times["fit_s"] = time.perf_counter() - fit_started
                marks["through_fit_mib"] = peak_mib()

    ray.train.torch.TorchTrainer = MarkedTrainer
    cfg = TrainConfig.of(
        data=args.data,
        epochs=1,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        eval_batch_size=256,
        storage_path=args.storage,
        materialize=args.materialize,
        max_train_samples=args.max_train_samples,
        max_failures=0,
        num_to_keep=1,
        progress_bar=False,
        log_every=0,
    )
    started = time.perf_counter()
    outcome = ynat_ray.train.run_training(cfg)
    done.set()
    last = outcome.history[-1]
    result = {
        "variant": args.variant,
        "peak_rss_mib": peak_mib(),
        "sampled_max_rss_mib": sampled["max_rss_mib"],
        **marks,
        **times,
        "wall_s": time.perf_counter() - started,
        "train_samples_per_s": last["train_samples_per_s"],
        "epoch_time_s": last["epoch_time_s"],
        "val_rows": last["val_rows"],
        "val_macro_f1": last["val_macro_f1"],
    }
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", help="Real YNAT rows, one JSON record a line (guid, title, label), cycled to --rows.")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256, help="per-worker batch (large: fewer optimizer steps per epoch)")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--materialize", choices=["auto", "yes", "no"], default="no")
    parser.add_argument(
        "--max-train-samples",
        type=int,
        default=None,
        help="train on this many hash-picked rows of the corpus; every row is still read (streaming: by Ray Data tasks in every "
        "pass; in-memory: into the driver's DataFrame), only the epoch gets shorter",
    )
    parser.add_argument("--variants", default="stream,in-memory")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per variant")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        child(args)
        return
    if not args.input:
        parser.error("--input is required")

    work = Path(tempfile.mkdtemp(prefix="ynat-stream-bench-"))
    try:
        started = time.perf_counter()
        rows = build_corpus(args.input, work / "data", args.rows, args.files)
        size = sum(p.stat().st_size for p in (work / "data").iterdir()) / 2**20
        print(f"corpus: {rows:,} rows in {args.files} files, {size:.0f} MiB, built in {time.perf_counter() - started:.0f} s", flush=True)
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each variant starts its own local Ray
        env.setdefault("HF_HUB_OFFLINE", "1")
        results = []
        for variant in args.variants.split(","):
            cmd = [
                sys.executable, __file__, "--variant", variant, "--data", str(work / "data"), "--storage", str(work / "runs"),
                "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers), "--materialize", args.materialize,
                *(["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else []),
            ]  # fmt: skip
            print(f"running {variant} ...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=common.REPO)
            found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not found:
                print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
                raise SystemExit(f"{variant} failed with exit code {done.returncode}")
            print("\n".join(line for line in done.stdout.splitlines() if line.startswith("[ynat-ray] run ")), flush=True)
            results.append(json.loads(found[0].removeprefix("RESULT ")))
        report(results, args, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict], args: argparse.Namespace, rows: int) -> None:
    epoch = f"{args.max_train_samples:,} hash-picked train rows" if args.max_train_samples else "every train row"
    print(f"\n{rows:,} rows / {args.files} jsonl files read; 1 epoch on {epoch}; default model, {args.num_workers} worker(s) x batch "
          f"{args.batch_size}, materialize={args.materialize}; driver = the `run_training` process (peaks: ru_maxrss)\n")  # fmt: skip
    print("| variant | driver peak RSS before fit (MiB) | through fit | whole run | train samples/s | epoch s | data prep s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['before_fit_mib']:.0f} | {r['through_fit_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{r['train_samples_per_s']:.0f} | {r['epoch_time_s']:.0f} | {r['data_prep_s']:.0f} | {r['wall_s']:.0f} |"
        )
    common.write_results("train_streaming", {"rows": rows, "files": args.files, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
