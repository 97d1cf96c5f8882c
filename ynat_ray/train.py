"""Fine-tuning with Ray Train: one readable loop per worker, and the driver that sets it up.

Shape (after HF's run_glue_no_trainer.py and Ray's TorchTrainer examples):
  driver:  rows -> tokenizer -> Ray Data token datasets -> TorchTrainer.fit() -> best checkpoint -> report
  worker:  build the model inside the worker -> DDP -> epochs of AdamW steps -> rank 0 evaluates the
           FULL validation set, writes a HF checkpoint, and every rank calls ray.train.report.
Failure handling: FailureConfig(max_failures) restarts the worker group; the loop resumes from the
latest checkpoint (weights, optimizer, scheduler, epoch, metrics history).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ray.data.collate_fn import NumpyBatchCollateFn

from ynat_ray.checkpoint import read_history, save_checkpoint
from ynat_ray.config import YnatConfig, is_uri
from ynat_ray.features import pad_token_ids

SCORE_METRIC = "val_macro_f1"
# Test hook: make the last worker exit (as if its node died) after the first step of this 0-based
# epoch, once per run. The driver reads it and hands it to the workers.
FAIL_AT_EPOCH_ENV = "YNAT_RAY_FAIL_AT_EPOCH"


@dataclass
class TrainOutcome:
    run_name: str
    run_dir: str
    best_checkpoint: str
    history: list[dict[str, Any]]
    final_metrics: dict[str, Any]
    artifacts_dir: str
    examples: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Worker side


class PadCollate(NumpyBatchCollateFn):
    """Collate for `iter_torch_batches`: pads each batch with the tokenizer (`features.pad_token_ids`), so
    training batches look exactly like inference batches; returns tensors Ray moves to the device.

    `token_dropout` (training batches only) replaces that fraction of each title's tokens with [MASK]: a
    regulariser for small from-scratch models, which otherwise memorise the 10k titles' rare tokens.
    """

    def __init__(self, tokenizer: Any, token_dropout: float = 0.0, seed: int = 0):
        self.tokenizer = tokenizer
        self.token_dropout = token_dropout
        self.seed = seed
        self.generator = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        out = pad_token_ids(self.tokenizer, batch["input_ids"], return_tensors="pt")
        out["labels"] = torch.tensor(batch["labels"], dtype=torch.long)  # a copy: Ray's arrays are read-only
        if self.token_dropout > 0 and self.tokenizer.mask_token_id is not None:
            if self.generator is None:  # created on first use, in the process that collates
                self.generator = torch.Generator().manual_seed(self.seed)
            ids = out["input_ids"]
            special = torch.tensor(self.tokenizer.all_special_ids)
            maskable = out["attention_mask"].bool() & ~torch.isin(ids, special)
            drop = (torch.rand(ids.shape, generator=self.generator) < self.token_dropout) & maskable
            out["input_ids"] = ids.masked_fill(drop, self.tokenizer.mask_token_id)
        return out


class EpochProgress:
    """Rank 0's progress bar for one epoch (steps, loss, samples/s), drawn on the driver's console.

    Why `ray.experimental.tqdm_ray`: a plain tqdm in a worker writes carriage returns that Ray's line-based
    log forwarding turns into one line per refresh; tqdm_ray sends its state to the driver, which draws one
    real bar. It refreshes at most once a second.
    """

    def __init__(self, epoch: int, epochs: int, steps: int, enabled: bool):
        self.label = f"epoch {epoch + 1}/{epochs}"
        self.bar = None
        if enabled:
            from ray.experimental import tqdm_ray

            self.bar = tqdm_ray.tqdm(total=steps, desc=self.label, unit="step")

    def step(self, loss: float, samples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.label} loss {loss:.4f} {samples_per_s:.0f} samples/s")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# Rows of token ids each worker shuffles in memory (a few MB): a worker's shard of the embedded 10k rows, or of
# any run up to this many rows per worker, fits whole, so every epoch is a full reshuffle of it. The cost: each
# epoch's first batch waits until this many rows (or the whole shard) have streamed in.
SHUFFLE_BUFFER_ROWS = 20_000


def shuffle_options(batch_size: int, seed: int, epoch: int) -> dict[str, int]:
    """`iter_torch_batches`' shuffle: a buffer of at least SHUFFLE_BUFFER_ROWS rows, reseeded every epoch.

    Why so large: Ray Data hands each worker its blocks in the same order every epoch, and a 16-batch buffer
    (the old value) only mixed neighbouring rows, so every epoch repeated nearly the same batches. With the
    whole shard in the buffer the default's lowest validation loss fell from 0.98-1.06 to 0.86-0.98 over three
    seeds (docs/tuning.md, round 6).
    """
    return {"local_shuffle_buffer_size": max(batch_size * 16, SHUFFLE_BUFFER_ROWS), "local_shuffle_seed": seed + epoch}


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm weights (as in BERT/RoBERTa recipes)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def evaluate_batches(model: Any, batches: Iterable[dict[str, Any]], precision: str, device_type: str) -> tuple[float, list[int], list[int]]:
    """Mean loss, predictions and gold labels over every batch (no rows dropped)."""
    import torch

    from ynat_ray.precision import autocast

    model.eval()
    loss_sum, count, preds, gold = 0.0, 0, [], []
    with torch.inference_mode(), autocast(precision, device_type):
        for batch in batches:
            out = model(**batch)
            n = batch["labels"].shape[0]
            loss_sum += float(out.loss) * n
            count += n
            preds += out.logits.argmax(-1).tolist()
            gold += batch["labels"].tolist()
    return loss_sum / max(count, 1), preds, gold


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The training loop every Ray Train worker runs."""
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ynat_ray.checkpoint import load_resume_state
    from ynat_ray.metrics import classification_metrics
    from ynat_ray.modeling import build_model
    from ynat_ray.precision import autocast, resolve_precision

    cfg = YnatConfig.from_dict(loop_config["config"])
    if not cfg.verbose:
        quiet_report_logger()
    tokenizer = loop_config["tokenizer"]
    torch.set_num_threads(loop_config["torch_threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(cfg.precision, device.type)

    net = build_model(cfg.model, tokenizer, cfg.train_max_length, cfg.seed, cfg.hidden_dropout, cfg.attention_dropout)
    model = ray.train.torch.prepare_model(net)
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(param_groups(core, cfg.weight_decay), lr=cfg.learning_rate)
    steps_per_epoch = math.ceil(loop_config["train_rows"] // world / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()  # set when FailureConfig restarted the workers
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_resume_state(ckpt_dir, core, device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        if rank == 0:
            print(f"[ynat-ray] resumed from the checkpoint of epoch {start_epoch}", flush=True)

    resumed_from = start_epoch
    collate = PadCollate(tokenizer)
    train_collate = PadCollate(tokenizer, cfg.token_dropout, seed=cfg.seed * 1000 + rank)
    train_shard = ray.train.get_dataset_shard("train")
    if rank == 0:
        print(f"[ynat-ray] {world} worker(s) on {device.type}, precision {precision}, {steps_per_epoch} steps/epoch", flush=True)

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        progress = EpochProgress(epoch, cfg.epochs, steps_per_epoch, enabled=rank == 0 and cfg.progress_bar)
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        steady_start, steady_seen = None, 0  # throughput after the first step (excludes pipeline start-up)
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            collate_fn=train_collate,
            **shuffle_options(cfg.batch_size, cfg.seed, epoch),
        )
        for step, batch in enumerate(batches, start=1):
            with autocast(precision, device.type):
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().item() * batch["labels"].shape[0]
            seen += batch["labels"].shape[0]
            if steady_start is None:
                steady_start, steady_seen = time.perf_counter(), seen
            elapsed_steady = time.perf_counter() - steady_start
            progress.step(loss_sum / seen, (seen - steady_seen) * world / elapsed_steady if elapsed_steady > 0 else 0.0)
            if loop_config.get("fail_at_epoch") == epoch and checkpoint is None and rank == world - 1:
                _die_for_test(rank, epoch)
            if rank == 0 and cfg.log_every and step % cfg.log_every == 0:
                step_loss = loss.detach().item()
                print(f"[ynat-ray] epoch {epoch + 1}/{cfg.epochs} step {step}/{steps_per_epoch} loss {step_loss:.4f}", flush=True)
        progress.close()
        now = time.perf_counter()
        elapsed = now - started
        steady_s = now - steady_start if steady_start is not None else 0.0
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_samples_per_s": (seen - steady_seen) * world / steady_s if steady_s > 0 else 0.0,
            "epoch_time_s": elapsed,
            "resumed_from_epoch": resumed_from,
        }
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            continue
        # Rank 0 scores the whole validation set with the unwrapped model (no DDP collectives).
        val_batches = ray.train.get_dataset_shard("validation").iter_torch_batches(batch_size=cfg.eval_batch_size, collate_fn=collate)
        val_loss, preds, gold = evaluate_batches(core, val_batches, precision, device.type)
        scores = classification_metrics(gold, preds)
        metrics.update(val_loss=val_loss, val_accuracy=scores["accuracy"], val_macro_f1=scores["macro_f1"], val_rows=scores["num_rows"])
        history.append(metrics)
        print(
            f"[ynat-ray] epoch {epoch + 1}/{cfg.epochs}: train_loss {metrics['train_loss']:.4f} val_loss {val_loss:.4f} "
            f"accuracy {scores['accuracy']:.4f} macro-F1 {scores['macro_f1']:.4f} ({metrics['train_samples_per_s']:.0f} samples/s)",
            flush=True,
        )
        with tempfile.TemporaryDirectory() as tmp:
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history}
            save_checkpoint(tmp, core, tokenizer, cfg, history, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def quiet_report_logger() -> None:
    """Silence Train V2's per-rank "Reporting training result ..." INFO line (--verbose keeps it).

    Why here: Ray names that logger after its file (`logging.getLogger(__file__)`), so it sits outside the `ray`
    logger tree that RAY_LOGGER_LEVEL and LoggingConfig set; it inherits the worker's root level (INFO).
    """
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray without that module has moved the line elsewhere
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _die_for_test(rank: int, epoch: int) -> None:
    """FAIL_AT_EPOCH_ENV hook: exit mid-epoch like a lost node, once the last checkpoint is committed."""
    import ray.train

    ray.train.get_all_reported_checkpoints(timeout_s=120)
    print(f"[ynat-ray] {FAIL_AT_EPOCH_ENV}: worker {rank} exiting during epoch {epoch + 1}", flush=True)
    os._exit(1)


# ---------------------------------------------------------------------------------------------
# Driver side


def unique_run_name(model: str) -> str:
    """Reusing a run name makes Ray resume that old run, so every run gets a fresh one."""
    slug = model.rstrip("/").split("/")[-1].replace("_", "-")
    return f"ynat-{slug}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def artifacts_dir_for(storage: str, run_name: str) -> str:
    """Artifacts sit beside Ray's run folder, under the same storage: a local path, or a URI (written to a
    temporary folder, then uploaded; nothing stays on the driver's disk, which a cluster may not keep)."""
    return f"{storage.rstrip('/')}/{run_name}/artifacts" if is_uri(storage) else os.path.join(storage, run_name, "artifacts")


@dataclass
class PreparedRun:
    """What a TorchTrainer needs, built once on the driver (`ynat-ray train`) or in a Tune trial's driver."""

    cfg: YnatConfig  # with the model's recipe filled in (`YnatConfig.with_recipe`)
    run_name: str
    storage: str
    artifacts: str
    splits: Any
    tokenizer: Any
    datasets: dict[str, Any]
    plan: Any


def prepare_run(cfg: YnatConfig, cluster_cpus: float | None = None) -> PreparedRun:
    """Rows, tokenizer, Ray Data token datasets and the CPU plan for one training run.

    `cluster_cpus` is the share of the cluster this run may plan with: all of it for `ynat-ray train`, a
    trial's share under `ynat-ray tune`, so concurrent trials each keep their own Ray Data reserve.
    """
    import ray

    from ynat_ray.data import TOKENIZER_ROWS, load_splits, write_quarantine
    from ynat_ray.features import to_token_dataset
    from ynat_ray.modeling import is_preset, load_tokenizer
    from ynat_ray.resources import alive_node_cpus, plan_workers

    cfg = cfg.with_recipe()
    # Our loop draws one progress bar per epoch; Ray Data's per-dataset bars would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    run_name = cfg.run_name or unique_run_name(cfg.model)
    storage = cfg.resolved_storage_path()
    artifacts = artifacts_dir_for(storage, run_name)
    plan = plan_workers(
        cfg.num_workers, alive_node_cpus(), use_gpu=cfg.use_gpu, cpus_per_worker=cfg.cpus_per_worker, budget=cluster_cpus,
        placement_strategy=cfg.placement_strategy,
    )  # fmt: skip
    # Training files stream through Ray Data (read + validate + split + tokenize in tasks); only validation,
    # test and a preset's bounded tokenizer sample reach this process. embedded/hub stay in memory (small).
    tokenizer_rows = TOKENIZER_ROWS if is_preset(cfg.model) else 0
    splits = load_splits(cfg, stream=True, tokenizer_rows=tokenizer_rows, task_cpus=plan.data_task_cpus)
    if splits.bad_rows:
        path = cfg.quarantine_path or os.path.join(artifacts, "quarantine.jsonl")
        print(f"[ynat-ray] skipped {write_quarantine(splits.bad_rows, path)} malformed row(s); see {path}", flush=True)
    streamed = f" (streamed by Ray Data from {len(splits.files)} file(s), {splits.input_rows} records)" if splits.streamed else ""
    print(
        f"[ynat-ray] run {run_name}: {splits.train_rows} train{streamed} / {len(splits.validation)} validation"
        f"{f' / {len(splits.test)} test' if splits.test is not None else ''} rows, model {cfg.model}",
        flush=True,
    )
    tokenizer = load_tokenizer(cfg.model, cfg.train_max_length, splits.tokenizer_texts(), cfg.vocab_size)
    materialize = cfg.materialize == "yes" or (cfg.materialize == "auto" and splits.train_rows < 1_000_000)
    print(f"[ynat-ray] {cfg.num_workers} worker(s) x {plan.resources()}; {plan.data_reserve_cpus:g} CPU left for Ray Data", flush=True)
    train_split = splits.train_stream if splits.streamed else splits.train  # never a DataFrame of streamed files
    datasets = {
        name: to_token_dataset(rows, tokenizer, cfg.train_max_length, materialize=materialize, task_cpus=plan.data_task_cpus)
        for name, rows in (("train", train_split), ("validation", splits.validation))
    }
    return PreparedRun(cfg, run_name, storage, artifacts, splits, tokenizer, datasets, plan)


def make_trainer(run: PreparedRun, callbacks: Iterable[Any] = ()) -> Any:
    """The TorchTrainer of one run; `callbacks` is where Tune's TuneReportCallback plugs in."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ynat_ray.cluster import QUIET_WORKER_ENV

    cfg = run.cfg
    fail_at = os.environ.get(FAIL_AT_EPOCH_ENV)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.to_dict(),
            "tokenizer": run.tokenizer,
            "train_rows": run.splits.train_rows,
            "torch_threads": run.plan.torch_threads,
            "fail_at_epoch": int(fail_at) if fail_at else None,
        },
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=run.plan.resources(),
            placement_strategy=run.plan.placement_strategy,
        ),  # fmt: skip
        run_config=ray.train.RunConfig(
            name=run.run_name,
            storage_path=run.storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.num_to_keep, checkpoint_score_attribute=SCORE_METRIC, checkpoint_score_order="max"
            ),
            # Train V2 routes workers' print() through a logger AND the original stream, so every line reached
            # the console twice; plain prints reach it once through Ray's log forwarding.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **QUIET_WORKER_ENV}},
            # Worker-group start-up, "Reporting training result ..." and friends: INFO that --verbose brings back.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if cfg.verbose else "WARNING"),
            callbacks=list(callbacks),
        ),
        datasets=run.datasets,
        # Only the training set is sharded; rank 0 scores the whole validation set.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: YnatConfig) -> TrainOutcome:
    """Everything `ynat-ray train` does: data, tokenizer, TorchTrainer.fit, final evaluation, artifacts."""
    from ynat_ray.cluster import init_ray
    from ynat_ray.resources import wait_for_placement

    init_ray(verbose=cfg.verbose)
    run = prepare_run(cfg)
    bundles = [run.plan.resources()] * cfg.num_workers
    what = f"{cfg.num_workers} Train worker(s) x {run.plan.resources()}"
    wait_for_placement(bundles, run.plan.placement_strategy, what, cfg.placement_timeout_s)
    result = make_trainer(run).fit()
    if result.error:
        raise result.error
    best = result.get_best_checkpoint(SCORE_METRIC, "max") or result.checkpoint
    latest = result.checkpoint or best
    run_dir = f"{run.storage.rstrip('/')}/{run.run_name}" if is_uri(run.storage) else os.path.join(run.storage, run.run_name)
    return finish_run(
        run.cfg, run.run_name, run_dir, storage_uri(run.storage, best.path), run.splits, run.artifacts,
        history_from=storage_uri(run.storage, latest.path),
    )  # fmt: skip


def storage_uri(storage: str, path: str) -> str:
    """The URI of a path Ray Train reports under `storage`: Ray's `Checkpoint.path` drops the scheme
    (`bucket/runs/x/checkpoint_...`), which read as a local path no node has."""
    if not is_uri(storage) or is_uri(path):
        return path
    return f"{storage.split('://', 1)[0]}://{path.lstrip('/')}"


def finish_run(
    cfg: YnatConfig, run_name: str, run_dir: str, best_path: str, splits: Any, artifacts: str, history_from: str | None = None
) -> TrainOutcome:
    """Score the best checkpoint, write artifacts, print the summary, optionally push to the hub.

    `history_from` is the newest checkpoint, whose metrics hold every epoch (the best one's stop at the best epoch).
    With URI storage the artifacts are written to a temporary folder and uploaded to `artifacts`.
    """
    if is_uri(artifacts):
        with tempfile.TemporaryDirectory(prefix="ynat-artifacts-") as tmp:
            outcome = _finish_run(cfg, run_name, run_dir, best_path, splits, tmp, artifacts, history_from)
            import pyarrow.fs

            pyarrow.fs.copy_files(tmp, artifacts)
        return outcome
    return _finish_run(cfg, run_name, run_dir, best_path, splits, artifacts, artifacts, history_from)


def _finish_run(
    cfg: YnatConfig, run_name: str, run_dir: str, best_path: str, splits: Any, local_artifacts: str, artifacts: str,
    history_from: str | None,
) -> TrainOutcome:  # fmt: skip
    from ynat_ray.artifacts import plot_confusion_matrix, plot_learning_curve, write_history
    from ynat_ray.checkpoint import resolve_checkpoint
    from ynat_ray.export import export_checkpoint
    from ynat_ray.inference import TextClassifier
    from ynat_ray.metrics import classification_metrics, format_report

    local_best = resolve_checkpoint(best_path)
    best_history = read_history(local_best)
    latest = max(best_history, key=lambda h: h["epoch"])
    # Export ONNX fp32 + int8 into the checkpoint, with parity measured on this run's validation rows.
    parity = export_checkpoint(local_best, texts=splits.validation["title"].tolist(), labels=splits.validation["label"].tolist())
    if is_uri(best_path):
        import pyarrow.fs

        from ynat_ray.checkpoint import ONNX_DIR

        pyarrow.fs.copy_files(os.path.join(local_best, ONNX_DIR), f"{best_path}/{ONNX_DIR}")
    classifier = TextClassifier(local_best, backend=cfg.backend, use_gpu=False, precision=cfg.precision)
    split_name, rows = ("test", splits.test) if splits.test is not None else ("validation", splits.validation)
    probs = classifier.probabilities(rows["title"].tolist(), batch_size=cfg.eval_batch_size)
    final = classification_metrics(rows["label"].tolist(), probs.argmax(1).tolist())
    final.update(split=split_name, checkpoint=best_path, best_epoch=latest["epoch"])

    os.makedirs(local_artifacts, exist_ok=True)
    history = _full_history(history_from, best_history)
    write_history(history, local_artifacts)
    plot_learning_curve(history, os.path.join(local_artifacts, "learning_curve.png"))
    confusion_png = os.path.join(local_artifacts, "confusion_matrix.png")
    plot_confusion_matrix(final["confusion_matrix"], confusion_png, f"{split_name} ({len(rows)} rows)")
    with open(os.path.join(local_artifacts, "final_metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(final, fh, ensure_ascii=False, indent=2)

    sample = rows.head(3)
    examples = [
        {"title": t, "gold": classifier.id2label[g], **p}
        for t, g, p in zip(sample["title"], sample["label"], classifier(sample["title"].tolist()))
    ]
    print("\n" + "=" * 72)
    print(f"run          {run_name}")
    print(f"checkpoint   {best_path}  (best epoch {latest['epoch']} by validation macro-F1)")
    print(f"artifacts    {artifacts}")
    print(
        f"onnx         fp32 max |p - p_torch| {parity['fp32_max_abs_diff']:.1e}; int8 labels agree "
        f"{parity['int8_label_agreement']:.2%}, macro-F1 {parity['int8_macro_f1']:.4f} vs {parity['fp32_macro_f1']:.4f}"
    )
    print(f"engine       {classifier.backend} ({classifier.choice.reason})")
    print(f"{split_name:<12} {format_report(final)}")
    print("examples:")
    for ex in examples:
        print(f"  {ex['title']!r} -> [{{'label': '{ex['label']}', 'score': {ex['score']:.4f}}}]  (gold {ex['gold']})")
    print("=" * 72, flush=True)
    if cfg.push_to_hub:
        from ynat_ray.checkpoint import push_checkpoint

        print(f"[ynat-ray] pushed to {push_checkpoint(local_best, cfg.push_to_hub)}", flush=True)
    return TrainOutcome(run_name, run_dir, best_path, history, final, artifacts, examples)


def _full_history(newest: str | None, fallback: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best checkpoint's history stops at the best epoch; the newest checkpoint (local or URI) has them all."""
    if not newest:
        return fallback
    if not is_uri(newest):
        return read_history(newest) or fallback
    import pyarrow.fs

    from ynat_ray.checkpoint import METRICS_FILE

    fs, path = pyarrow.fs.FileSystem.from_uri(f"{newest.rstrip('/')}/{METRICS_FILE}")
    try:
        with fs.open_input_stream(path) as fh:
            return json.loads(fh.read().decode("utf-8")) or fallback
    except FileNotFoundError:
        return fallback
