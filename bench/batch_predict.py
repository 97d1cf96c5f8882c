"""Batch prediction throughput: the Ray Data job vs `transformers.pipeline` in one process, same run.

For each input size (the real rows, and the same rows repeated so start-up costs amortize) this measures:

  (a) baseline: `pipeline("text-classification", model=CKPT)(texts, batch_size=64)` in this process
      (model already loaded; torch's default threads = every core), run before and after the jobs;
  (b) ynat-ray's job, `run_batch_prediction` (read -> validate -> actor pool -> write parquet) for each
      actor plan, cold: each run starts its actors and loads the model, as a user's job does.

rows/s for (b) is the job's own number (written rows / execution time, model loading included); the
ratio column is (b) / (a) from the same invocation, because this machine's absolute speed is noisy. The
job's labels are compared with the pipeline's on every row.

    python bench/batch_predict.py --input /work/shared/data/ynat/validation.jsonl --checkpoint /tmp/ynat_ckpt_dev
    python bench/batch_predict.py --input ... --checkpoint /tmp/ynat_small_untrained --build_preset ynat-small
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ynat_ray.batch import output_files, read_output_file, run_batch_prediction  # noqa: E402
from ynat_ray.config import YnatConfig  # noqa: E402
from ynat_ray.data import embedded_split, read_rows  # noqa: E402

PIPELINE_BATCH = 64


def build_untrained_preset(preset: str, path: str, max_length: int = 64) -> None:
    """An untrained preset checkpoint (throughput does not depend on training): tokenizer + model + save."""
    from ynat_ray.modeling import build_model, train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(embedded_split("train")["title"], vocab_size=8000, max_length=max_length)
    model = build_model(preset, tokenizer, max_length)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def pipeline_rows_per_s(pipe, texts: list[str]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    out = pipe(texts, batch_size=PIPELINE_BATCH)
    return len(texts) / (time.perf_counter() - started), [o["label"] for o in out]


def job_labels(output: str) -> list[str]:
    return pd.concat([read_output_file(p, ["label"]) for p in output_files(output, "parquet")])["label"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="Real YNAT rows (jsonl/json/csv/parquet), e.g. the validation split.")
    parser.add_argument("--checkpoint", required=True, help="Checkpoint directory both contenders load.")
    parser.add_argument(
        "--build_preset", default=None, help="First write an untrained preset (e.g. ynat-small) to --checkpoint if missing."
    )
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 5], help="Input sizes: the rows repeated this many times.")
    parser.add_argument("--plans", nargs="+", default=["1x1", "1x1.5", "2x0.75"], help="Actor plans NUMxCPUS (each plan is one job).")
    parser.add_argument("--eval_batch_size", type=int, default=128, help="The job's batch size (map_batches and forward pass).")
    args = parser.parse_args()

    if args.build_preset and not os.path.isdir(args.checkpoint):
        build_untrained_preset(args.build_preset, args.checkpoint)

    import ray
    import torch
    from transformers import pipeline

    rows = read_rows(args.input, YnatConfig(on_bad_rows="skip"), require_label=False)
    pipe = pipeline("text-classification", model=args.checkpoint, device="cpu")
    pipe(rows["title"].head(PIPELINE_BATCH).tolist(), batch_size=PIPELINE_BATCH)  # warm-up
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False

    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in args.repeats:
            big = pd.concat([rows] * repeat, ignore_index=True)
            source = os.path.join(tmp, f"input_x{repeat}.parquet")
            big.to_parquet(source)
            # The baseline runs before and after the jobs; its mean is the reference (load on a shared box drifts).
            before, base_labels = pipeline_rows_per_s(pipe, big["title"].tolist())
            rows_at = len(table)
            for plan in args.plans:
                actors, cpus = plan.split("x")
                output = os.path.join(tmp, f"out_x{repeat}_{plan}")
                cfg = YnatConfig(
                    checkpoint=args.checkpoint, input=source, output=output, num_actors=int(actors), actor_cpus=float(cpus),
                    eval_batch_size=args.eval_batch_size,
                )  # fmt: skip
                summary = run_batch_prediction(cfg)
                labels = job_labels(output)
                agree = sum(a == b for a, b in zip(labels, base_labels)) / len(base_labels)
                table.append(
                    (len(big), "ynat-ray job (Ray Data)", f"{actors} actor(s) x {cpus} CPU", summary["rows_per_s"], 0.0, f"{agree:.2%}")
                )
            after, _ = pipeline_rows_per_s(pipe, big["title"].tolist())
            base = (before + after) / 2
            table[rows_at:] = [(n, who, res, rps, rps / base, agree) for n, who, res, rps, _, agree in table[rows_at:]]
            label = f"transformers.pipeline, 1 process ({before:.0f} before, {after:.0f} after the jobs)"
            table.insert(rows_at, (len(big), label, f"{torch.get_num_threads()} threads", base, 1.0, "-"))
    ray.shutdown()

    print(f"\ncheckpoint {args.checkpoint}, input {args.input} ({len(rows)} rows), {os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| rows | contender | resources | rows/s | vs pipeline | same labels as pipeline |")
    print("|---:|---|---|---:|---:|---:|")
    for n, who, res, rps, ratio, agree in table:
        print(f"| {n} | {who} | {res} | {rps:.0f} | {ratio:.2f}x | {agree} |")


if __name__ == "__main__":
    main()
