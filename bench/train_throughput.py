"""Training throughput, one invocation, same real rows and same model for every contender.

  (a) ynat-ray: Ray Train TorchTrainer, 1 worker, Ray Data tokenization, per-batch padding
  (b) a plain single-process PyTorch loop (per-batch padding, no Ray)
  (c) the notebook's recipe: HF Trainer on rows padded to the model's max length (padding="max_length")

for the tiny preset and a 6-layer x 384 config, in fp32 and bf16 autocast. Then the wall time of the
default job (`ynat-ray train`, no arguments) to its final macro-F1, next to the char n-gram TF-IDF +
logistic regression yardstick (bench/tfidf_baseline.py) trained and scored on the same rows.

Ratios are against (b), measured in the same process, because this machine's absolute speed is noisy.

    python bench/train_throughput.py                       # everything (~15 min on 2 cores)
    python bench/train_throughput.py --rows 1024 --skip-wall-clock
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import common
import pandas as pd
import torch
from tfidf_baseline import yardstick

from ynat_ray.config import ModelArgs, TrainConfig
from ynat_ray.data.sources import embedded_split
from ynat_ray.features import pad_token_ids
from ynat_ray.modeling import build_model, default_learning_rate, load_tokenizer
from ynat_ray.precision import autocast
from ynat_ray.train import param_groups

THREADS = 2
BATCH = 32
MAX_LEN = 64


def plain_loop(model_name: str, tokenizer, rows: pd.DataFrame, precision: str) -> float:
    """(b) One epoch of AdamW steps with per-batch padding; samples/s."""
    torch.set_num_threads(THREADS)
    model = build_model(model_name, tokenizer, MAX_LEN)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=default_learning_rate(model_name))
    ids = tokenizer(rows["title"].tolist(), truncation=True, max_length=MAX_LEN)["input_ids"]
    labels = torch.as_tensor(rows["label"].to_numpy())
    model.train()
    start = time.perf_counter()
    for i in range(0, len(ids), BATCH):
        batch = pad_token_ids(tokenizer, ids[i : i + BATCH], return_tensors="pt")
        with autocast(precision, "cpu"):
            loss = model(**batch, labels=labels[i : i + BATCH]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return len(ids) / (time.perf_counter() - start)


def hf_trainer(model_name: str, tokenizer, rows: pd.DataFrame, precision: str) -> float:
    """(c) The notebook: datasets.map(padding='max_length') + Trainer.train(); samples/s."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.set_num_threads(THREADS)
    model = build_model(model_name, tokenizer, MAX_LEN)
    ds = Dataset.from_pandas(rows[["title", "label"]].reset_index(drop=True))
    ds = ds.map(lambda b: tokenizer(b["title"], padding="max_length", truncation=True, max_length=MAX_LEN), batched=True)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            num_train_epochs=1,
            per_device_train_batch_size=BATCH,
            learning_rate=default_learning_rate(model_name),
            use_cpu=True,
            bf16=precision == "bf16",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=ds.remove_columns(["title"]))
        start = time.perf_counter()
        trainer.train()
        return len(ds) / (time.perf_counter() - start)


def ray_one_worker(model_name: str, rows: pd.DataFrame, precision: str, storage: str) -> float:
    """(a) ynat-ray's TorchTrainer with 1 worker; the loop's own samples/s for the epoch (no startup)."""
    from ynat_ray.train import run_training

    with tempfile.TemporaryDirectory() as tmp:
        train_path, valid_path = os.path.join(tmp, "train.parquet"), os.path.join(tmp, "valid.parquet")
        rows.to_parquet(train_path)
        rows.head(64).to_parquet(valid_path)
        cfg = TrainConfig.of(
            data=train_path, validation_data=valid_path, model=model_name, epochs=1, num_workers=1, batch_size=BATCH,
            precision=precision, storage_path=storage, log_every=0, max_length=MAX_LEN,
        )  # fmt: skip
        outcome = run_training(cfg)
    return outcome.history[-1]["train_samples_per_s"]


def yardstick_scores(train: pd.DataFrame, test: pd.DataFrame) -> tuple[float, float, float]:
    """The yardstick (bench/tfidf_baseline.py): (seconds to fit and score, accuracy, macro-F1)."""
    from ynat_ray.metrics import classification_metrics

    start = time.perf_counter()
    pred = yardstick().fit(train["title"], train["label"]).predict(test["title"])
    scores = classification_metrics(test["label"].tolist(), pred.tolist())
    return time.perf_counter() - start, scores["accuracy"], scores["macro_f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="embedded", help="'embedded' or a YNAT file (e.g. KLUE YNAT's train split as jsonl)")
    parser.add_argument("--rows", type=int, default=2048, help="Training rows per throughput measurement.")
    parser.add_argument("--models", nargs="*", default=["ynat-tiny", "ynat-small"], help="Presets to measure.")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="fp32 and/or bf16 autocast.")
    parser.add_argument("--skip-wall-clock", action="store_true", help="Skip the default-job vs TF-IDF comparison.")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=THREADS, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    storage = tempfile.mkdtemp(prefix="ynat-bench-")
    source = embedded_split("train") if args.data == "embedded" else common.read_ynat(args.data, strict=True)
    rows = source.sample(n=min(args.rows, len(source)), random_state=0).reset_index(drop=True)
    print(f"{len(rows)} real YNAT rows, batch {BATCH}, {THREADS} threads, max_length {MAX_LEN}; CPU bf16 native: ", end="")
    from ynat_ray.cpu import has_native_bf16

    print(has_native_bf16())

    table = []
    for model_name in args.models:
        tokenizer = load_tokenizer(model_name, MAX_LEN, rows["title"], 8000)
        for precision in args.precisions:
            plain = plain_loop(model_name, tokenizer, rows, precision)
            trainer = hf_trainer(model_name, tokenizer, rows, precision)
            ours = ray_one_worker(model_name, rows, precision, storage)
            table.append((model_name, precision, ours, plain, trainer))
            print(
                f"  {model_name} {precision}: ynat-ray {ours:.0f}/s, plain {plain:.0f}/s, HF Trainer max_length {trainer:.0f}/s", flush=True
            )

    print(
        "\n| model | precision | ynat-ray (Ray Train, 1 worker) | plain PyTorch loop | notebook HF Trainer (padding=max_length) | ynat-ray / plain | ynat-ray / Trainer |"
    )
    print("|---|---|---|---|---|---|---|")
    for model_name, precision, ours, plain, trainer in table:
        print(
            f"| {model_name} | {precision} | {ours:.0f} samples/s | {plain:.0f} samples/s | {trainer:.0f} samples/s "
            f"| {ours / plain:.2f}x | {ours / trainer:.2f}x |"
        )
    for model_name in args.models:
        by_precision = {p: o for m, p, o, _, _ in table if m == model_name}
        if {"fp32", "bf16"} <= set(by_precision):
            print(f"{model_name}: bf16 / fp32 (ynat-ray) = {by_precision['bf16'] / by_precision['fp32']:.2f}x")

    if not args.skip_wall_clock:
        from ynat_ray.train import run_training

        start = time.perf_counter()
        outcome = run_training(TrainConfig.of(storage_path=storage, log_every=0))
        wall = time.perf_counter() - start
        train, test = embedded_split("train"), embedded_split("test")
        tf_s, tf_acc, tf_f1 = yardstick_scores(train, test)
        final = outcome.final_metrics
        print("\n| on the embedded 10k train / 1k test rows | wall time | test accuracy | test macro-F1 |")
        print("|---|---|---|---|")
        print(
            f"| `ynat-ray train` (defaults: {ModelArgs().model}, 2 workers, {len(outcome.history)} epochs) | {wall:.0f} s "
            f"| {final['accuracy']:.3f} | {final['macro_f1']:.3f} |"
        )
        print(f"| char n-gram TF-IDF + logistic regression | {tf_s:.1f} s | {tf_acc:.3f} | {tf_f1:.3f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
