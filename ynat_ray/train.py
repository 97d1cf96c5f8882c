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

import numpy as np
from ray.data.collate_fn import NumpyBatchCollateFn

from ynat_ray.checkpoint import RunSpec, read_history, save_checkpoint
from ynat_ray.config import DistillArgs, ModelArgs, TrainArgs, TrainConfig, is_uri
from ynat_ray.features import TEACHER_COLUMN, pad_token_ids
from ynat_ray.tracking import TrackedRun, flat_params, log_epoch, log_training_outcome, run_scope, start_run

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
        if TEACHER_COLUMN in batch:  # distillation: the teacher's probabilities for these rows
            out[TEACHER_COLUMN] = torch.tensor(np.stack(batch[TEACHER_COLUMN]), dtype=torch.float32)
        if self.token_dropout > 0 and self.tokenizer.mask_token_id is not None:
            if self.generator is None:  # created on first use, in the process that collates
                self.generator = torch.Generator().manual_seed(self.seed)
            ids = out["input_ids"]
            special = torch.tensor(self.tokenizer.all_special_ids)
            maskable = out["attention_mask"].bool() & ~torch.isin(ids, special)
            drop = (torch.rand(ids.shape, generator=self.generator) < self.token_dropout) & maskable
            out["input_ids"] = ids.masked_fill(drop, self.tokenizer.mask_token_id)
        return out


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


@dataclass
class WorkerState:
    """What one worker trains with: the DDP-wrapped model, its unwrapped core, the optimiser, where it resumes, and
    the distillation settings (None: gold labels only)."""

    model: Any
    core: Any
    optimizer: Any
    scheduler: Any
    start_epoch: int
    history: list[dict[str, Any]]
    distill: DistillArgs | None = None

    def loss(self, batch: dict[str, Any]) -> Any:
        """The model's own cross-entropy, or the distillation loss when the batch carries the teacher's probabilities."""
        teacher = batch.pop(TEACHER_COLUMN, None)
        if teacher is None or self.distill is None:
            return self.model(**batch).loss
        from ynat_ray.distill import distillation_loss

        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return distillation_loss(logits, batch["labels"], teacher, self.distill.distill_weight, self.distill.distill_temperature)


def build_worker_state(model_args: ModelArgs, args: TrainArgs, loop_config: dict[str, Any], world: int, device: Any) -> WorkerState:
    """The model (built inside the worker, so no weights travel), AdamW with its linear schedule, and the state of
    the latest checkpoint when FailureConfig restarted the worker group."""
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ynat_ray.checkpoint import load_resume_state
    from ynat_ray.modeling import build_model

    net = build_model(
        model_args.model, loop_config["tokenizer"], model_args.train_max_length, loop_config["seed"],
        model_args.hidden_dropout, model_args.attention_dropout,
    )  # fmt: skip
    model = ray.train.torch.prepare_model(net)
    core = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.AdamW(param_groups(core, args.weight_decay), lr=args.learning_rate)
    total_steps = steps_per_epoch(loop_config["train_rows"], world, args.batch_size) * args.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    distill = DistillArgs(**loop_config["distill"]) if loop_config.get("distill", {}).get("teacher") else None
    state = WorkerState(model, core, optimizer, scheduler, 0, [], distill)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt_dir:
            saved = load_resume_state(ckpt_dir, core, device)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state.start_epoch, state.history = saved["epoch"] + 1, saved["history"]
    return state


def steps_per_epoch(train_rows: int, world: int, batch_size: int) -> int:
    """Optimiser steps each worker takes per epoch (its shard of the training rows, in batches)."""
    return math.ceil(train_rows // world / batch_size)


def train_one_epoch(
    state: WorkerState, args: TrainArgs, batches: Iterable[dict[str, Any]], progress: Any, precision: str, device_type: str, on_step: Any
) -> dict[str, float]:
    """AdamW steps over one epoch's batches; returns the mean training loss and the steady samples/s (after the
    first step, which waits for the input pipeline to start)."""
    import torch

    from ynat_ray.precision import autocast

    world = ray_world_size()
    state.model.train()
    loss_sum, seen, steady_start, steady_seen = 0.0, 0, None, 0
    for step, batch in enumerate(batches, start=1):
        with autocast(precision, device_type):
            loss = state.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), args.max_grad_norm)
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach().item() * batch["labels"].shape[0]
        seen += batch["labels"].shape[0]
        if steady_start is None:
            steady_start, steady_seen = time.perf_counter(), seen
        elapsed = time.perf_counter() - steady_start
        progress.step(loss_sum / seen, (seen - steady_seen) * world / elapsed if elapsed > 0 else 0.0)
        on_step(step, loss)
    steady_s = time.perf_counter() - steady_start if steady_start is not None else 0.0
    return {"train_loss": loss_sum / max(seen, 1), "train_samples_per_s": (seen - steady_seen) * world / steady_s if steady_s > 0 else 0.0}


def ray_world_size() -> int:
    import ray.train

    return ray.train.get_context().get_world_size()


def validate_and_save(state: WorkerState, loop_config: dict[str, Any], metrics: dict[str, Any], precision: str, device_type: str) -> None:
    """Rank 0: score the whole validation set with the unwrapped model (no DDP collectives), print the epoch's
    line, and report the metrics with a checkpoint that carries what inference and resume need."""
    import ray.train

    from ynat_ray.metrics import classification_metrics

    args, tokenizer = TrainArgs(**loop_config["train"]), loop_config["tokenizer"]
    shard = ray.train.get_dataset_shard("validation")
    val_loss, preds, gold = evaluate_batches(
        state.core, shard.iter_torch_batches(batch_size=args.eval_batch_size, collate_fn=PadCollate(tokenizer)), precision, device_type
    )
    scores = classification_metrics(gold, preds)
    metrics.update(val_loss=val_loss, val_accuracy=scores["accuracy"], val_macro_f1=scores["macro_f1"], val_rows=scores["num_rows"])
    state.history.append(metrics)
    print(
        f"[ynat-ray] epoch {metrics['epoch']}/{args.epochs}: train_loss {metrics['train_loss']:.4f} val_loss {val_loss:.4f} "
        f"accuracy {scores['accuracy']:.4f} macro-F1 {scores['macro_f1']:.4f} ({metrics['train_samples_per_s']:.0f} samples/s)",
        flush=True,
    )
    # Before the report: a worker lost between the two redoes this epoch (a repeated point) rather than skipping it.
    log_epoch(loop_config["run_spec"].get("mlflow"), metrics)
    with tempfile.TemporaryDirectory() as tmp:
        resume = {
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "epoch": metrics["epoch"] - 1,
            "history": state.history,
        }
        save_checkpoint(tmp, state.core, tokenizer, RunSpec.from_json(loop_config["run_spec"]), state.history, resume)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The training loop every Ray Train worker runs. It receives only its roles' options (model and train
    groups, the seed) plus the fitted tokenizer and the run spec its checkpoints record."""
    import ray.train
    import ray.train.torch
    import torch

    from ynat_ray.precision import resolve_precision
    from ynat_ray.progress import EpochProgress

    model_args, args, seed = ModelArgs(**loop_config["model"]), TrainArgs(**loop_config["train"]), loop_config["seed"]
    if not args.verbose:
        quiet_report_logger()
    torch.set_num_threads(loop_config["torch_threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(args.precision, device.type)
    state = build_worker_state(model_args, args, loop_config, world, device)
    resumed_from, steps = state.start_epoch, steps_per_epoch(loop_config["train_rows"], world, args.batch_size)
    if rank == 0:
        if resumed_from:
            print(f"[ynat-ray] resumed from the checkpoint of epoch {resumed_from}", flush=True)
        print(f"[ynat-ray] {world} worker(s) on {device.type}, precision {precision}, {steps} steps/epoch", flush=True)
    train_collate = PadCollate(loop_config["tokenizer"], args.token_dropout, seed=seed * 1000 + rank)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(state.start_epoch, args.epochs):
        started = time.perf_counter()
        batches = shard.iter_torch_batches(
            batch_size=args.batch_size, collate_fn=train_collate, **shuffle_options(args.batch_size, seed, epoch)
        )
        progress = EpochProgress(epoch, args.epochs, steps, enabled=rank == 0 and args.progress_bar, live=loop_config["live_progress"])

        def on_step(step: int, loss: Any, epoch: int = epoch) -> None:
            if loop_config.get("fail_at_epoch") == epoch and not resumed_from and rank == world - 1:
                _die_for_test(rank, epoch)
            if rank == 0 and args.log_every and step % args.log_every == 0:
                print(f"[ynat-ray] epoch {epoch + 1}/{args.epochs} step {step}/{steps} loss {loss.detach().item():.4f}", flush=True)

        metrics: dict[str, Any] = {"epoch": epoch + 1, **train_one_epoch(state, args, batches, progress, precision, device.type, on_step)}
        progress.close()
        metrics.update(epoch_time_s=time.perf_counter() - started, resumed_from_epoch=resumed_from)
        if rank == 0:
            validate_and_save(state, loop_config, metrics, precision, device.type)
        else:
            ray.train.report(metrics, checkpoint=None)


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


def unique_run_name(model: str, kind: str = "") -> str:
    """A fresh name per run or search (`kind` 'tune' marks searches): reusing a name makes Ray resume, or Tune
    restore, that old run."""
    slug = model.rstrip("/").split("/")[-1].replace("_", "-")
    return f"ynat-{kind + '-' if kind else ''}{slug}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def artifacts_dir_for(storage: str, run_name: str) -> str:
    """Artifacts sit beside Ray's run folder, under the same storage: a local path, or a URI (written to a
    temporary folder, then uploaded; nothing stays on the driver's disk, which a cluster may not keep)."""
    return f"{storage.rstrip('/')}/{run_name}/artifacts" if is_uri(storage) else os.path.join(storage, run_name, "artifacts")


@dataclass
class PreparedRun:
    """What a TorchTrainer needs, built once on the driver (`ynat-ray train`) or in a Tune trial's driver."""

    cfg: TrainConfig  # with the model's recipe filled in (`TrainConfig.with_recipe`)
    run_name: str
    storage: str
    artifacts: str
    splits: Any
    tokenizer: Any
    datasets: dict[str, Any]
    plan: Any
    tracking: TrackedRun | None = None  # its MLflow run (None: tracking off)


def prepare_run(
    cfg: TrainConfig, cluster_cpus: float | None = None, parent: TrackedRun | None = None, tags: dict[str, str] | None = None
) -> PreparedRun:
    """Rows, tokenizer, Ray Data token datasets, the CPU plan and the MLflow run for one training run.

    `cluster_cpus` is the share of the cluster this run may plan with: all of it for `ynat-ray train`, a
    trial's share under `ynat-ray tune`, so concurrent trials each keep their own Ray Data reserve. `parent` is the
    search's MLflow run under `ynat-ray tune` (the trial's run is its child) and `tags` mark the trial.
    """
    import ray

    from ynat_ray.data.quarantine import write_quarantine
    from ynat_ray.data.sources import load_splits
    from ynat_ray.data.splits import TOKENIZER_ROWS
    from ynat_ray.features import to_token_dataset
    from ynat_ray.modeling import is_preset, load_tokenizer
    from ynat_ray.resources import alive_node_cpus, plan_workers

    cfg = cfg.with_recipe()
    data, model, args = cfg.data, cfg.model, cfg.train
    # Our loop draws one progress line per epoch; Ray Data's per-dataset bars would bury it.
    ray.data.DataContext.get_current().enable_progress_bars = False
    run_name = args.run_name or unique_run_name(model.model)
    storage = args.resolved_storage_path()
    artifacts = artifacts_dir_for(storage, run_name)
    plan = plan_workers(
        args.num_workers, alive_node_cpus(), use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker, budget=cluster_cpus,
        placement_strategy=args.placement_strategy,
    )  # fmt: skip
    # Training files stream through Ray Data (read + validate + split + tokenize in tasks); only validation,
    # test and a preset's bounded tokenizer sample reach this process. embedded/hub stay in memory (small).
    tokenizer_rows = TOKENIZER_ROWS if is_preset(model.model) else 0
    splits = load_splits(data, stream=True, tokenizer_rows=tokenizer_rows, task_cpus=plan.data_task_cpus)
    if splits.bad_rows:
        path = data.quarantine_path or os.path.join(artifacts, "quarantine.jsonl")
        print(f"[ynat-ray] skipped {write_quarantine(splits.bad_rows, path)} malformed row(s); see {path}", flush=True)
    streamed = f" (streamed by Ray Data from {len(splits.files)} file(s), {splits.input_rows} records)" if splits.streamed else ""
    print(
        f"[ynat-ray] run {run_name}: {splits.train_rows} train{streamed} / {len(splits.validation)} validation"
        f"{f' / {len(splits.test)} test' if splits.test is not None else ''} rows, model {model.model}",
        flush=True,
    )
    tokenizer = load_tokenizer(model.model, model.train_max_length, splits.tokenizer_texts(), model.vocab_size)
    materialize = args.materialize == "yes" or (args.materialize == "auto" and splits.train_rows < 1_000_000)
    print(f"[ynat-ray] {args.num_workers} worker(s) x {plan.resources()}; {plan.data_reserve_cpus:g} CPU left for Ray Data", flush=True)
    train_split = splits.train_stream if splits.streamed else splits.train  # never a DataFrame of streamed files
    if cfg.distill.teacher:  # once, before any worker starts: the rows then carry the teacher's probabilities
        from ynat_ray.distill import teach

        started = time.perf_counter()
        train_split = teach(train_split, cfg.distill)
        print(
            f"[ynat-ray] teacher {cfg.distill.teacher} scored {splits.train_rows} training rows in {time.perf_counter() - started:.0f} s "
            f"(distill_weight {cfg.distill.distill_weight:g}, temperature {cfg.distill.distill_temperature:g})",
            flush=True,
        )
    datasets = {
        name: to_token_dataset(rows, tokenizer, model.train_max_length, materialize=materialize, task_cpus=plan.data_task_cpus)
        for name, rows in (("train", train_split), ("validation", splits.validation))
    }
    # Last, so a run that never got its data leaves no MLflow run open.
    tracked = start_run(args.tracking_uri, storage, run_name, flat_params(cfg.run_spec_config()), parent, tags)
    return PreparedRun(cfg, run_name, storage, artifacts, splits, tokenizer, datasets, plan, tracked)


def run_spec(cfg: TrainConfig, tracked: TrackedRun | None = None) -> RunSpec:
    """What every checkpoint of this run records: the trained length, the model, the labels, the data, model
    and train options (what inference and resume need; no serving or batch settings) and the MLflow run."""
    from ynat_ray import __version__
    from ynat_ray.labels import LABELS

    mlflow = tracked.to_json() if tracked else None
    return RunSpec(cfg.model.train_max_length, cfg.model.model, list(LABELS), __version__, cfg.run_spec_config(), mlflow)


def worker_config(run: PreparedRun, fail_at_epoch: int | None) -> dict[str, Any]:
    """`train_loop_config`: a worker gets its roles' groups (model, train, distillation), the seed, the fitted tokenizer and the
    run spec to record (with the MLflow run rank 0 logs to); whether the driver is on a terminal decides how epoch
    progress is drawn."""
    from dataclasses import asdict

    from ynat_ray.progress import console_is_live

    return {
        "model": asdict(run.cfg.model),
        "train": asdict(run.cfg.train),
        "distill": asdict(run.cfg.distill),
        "seed": run.cfg.data.seed,
        "run_spec": run_spec(run.cfg, run.tracking).to_json(),
        "tokenizer": run.tokenizer,
        "train_rows": run.splits.train_rows,
        "torch_threads": run.plan.torch_threads,
        "fail_at_epoch": fail_at_epoch,
        "live_progress": console_is_live(),
    }


def make_trainer(run: PreparedRun, callbacks: Iterable[Any] = ()) -> Any:
    """The TorchTrainer of one run; `callbacks` is where Tune's TuneReportCallback plugs in."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from ynat_ray.cluster import QUIET_WORKER_ENV
    from ynat_ray.tracking import worker_env

    args, fail_at = run.cfg.train, os.environ.get(FAIL_AT_EPOCH_ENV)
    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **QUIET_WORKER_ENV, **(worker_env() if run.tracking else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker_config(run, int(fail_at) if fail_at else None),
        torch_config=TorchConfig(backend="nccl" if args.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=args.num_workers,
            use_gpu=args.use_gpu,
            resources_per_worker=run.plan.resources(),
            placement_strategy=run.plan.placement_strategy,
        ),  # fmt: skip
        run_config=ray.train.RunConfig(
            name=run.run_name,
            storage_path=run.storage,
            failure_config=ray.train.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=args.num_to_keep, checkpoint_score_attribute=SCORE_METRIC, checkpoint_score_order="max"
            ),
            # Train V2 routes workers' print() through a logger AND the original stream, so every line reached
            # the console twice; plain prints reach it once through Ray's log forwarding.
            # (and rank 0 gets the driver's MLflow credentials: Ray passes no driver environment on).
            worker_runtime_env={"env_vars": env},
            # Worker-group start-up, "Reporting training result ..." and friends: INFO that --verbose brings back.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if args.verbose else "WARNING"),
            callbacks=list(callbacks),
        ),
        datasets=run.datasets,
        # Only the training set is sharded; rank 0 scores the whole validation set.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: TrainConfig) -> TrainOutcome:
    """Everything `ynat-ray train` does: data, tokenizer, TorchTrainer.fit, final evaluation, artifacts."""
    from ynat_ray.cluster import init_ray
    from ynat_ray.distill import check_teacher
    from ynat_ray.resources import wait_for_placement

    check_teacher(cfg.distill)  # a teacher with other labels is one line, before Ray starts
    init_ray(verbose=cfg.train.verbose)
    run = prepare_run(cfg)
    args = run.cfg.train
    with run_scope(run.tracking):  # FINISHED, or FAILED with whatever stopped the run
        bundles = [run.plan.resources()] * args.num_workers
        what = f"{args.num_workers} Train worker(s) x {run.plan.resources()}"
        wait_for_placement(bundles, run.plan.placement_strategy, what, args.placement_timeout_s)
        result = make_trainer(run).fit()
        if result.error:
            raise result.error
        best = result.get_best_checkpoint(SCORE_METRIC, "max") or result.checkpoint
        latest = result.checkpoint or best
        run_dir = f"{run.storage.rstrip('/')}/{run.run_name}" if is_uri(run.storage) else os.path.join(run.storage, run.run_name)
        return finish_run(
            run.cfg, run.run_name, run_dir, storage_uri(run.storage, best.path), run.splits, run.artifacts,
            history_from=storage_uri(run.storage, latest.path), tracked=run.tracking,
        )  # fmt: skip


def storage_uri(storage: str, path: str) -> str:
    """The URI of a path Ray Train reports under `storage`: Ray's `Checkpoint.path` drops the scheme
    (`bucket/runs/x/checkpoint_...`), which read as a local path no node has."""
    if not is_uri(storage) or is_uri(path):
        return path
    return f"{storage.split('://', 1)[0]}://{path.lstrip('/')}"


def finish_run(
    cfg: TrainConfig, run_name: str, run_dir: str, best_path: str, splits: Any, artifacts: str, history_from: str | None = None,
    tracked: TrackedRun | None = None,
) -> TrainOutcome:  # fmt: skip
    """Score the best checkpoint, write artifacts, log them to MLflow, print the summary, optionally push to the hub.

    `history_from` is the newest checkpoint, whose metrics hold every epoch (the best one's stop at the best epoch).
    With URI storage the artifacts are written to a temporary folder and uploaded to `artifacts`.
    """
    if is_uri(artifacts):
        with tempfile.TemporaryDirectory(prefix="ynat-artifacts-") as tmp:
            outcome = _finish_run(cfg, run_name, run_dir, best_path, splits, tmp, artifacts, history_from, tracked)
            import pyarrow.fs

            pyarrow.fs.copy_files(tmp, artifacts)
        return outcome
    return _finish_run(cfg, run_name, run_dir, best_path, splits, artifacts, artifacts, history_from, tracked)


def _finish_run(
    cfg: TrainConfig, run_name: str, run_dir: str, best_path: str, splits: Any, local_artifacts: str, artifacts: str,
    history_from: str | None, tracked: TrackedRun | None,
) -> TrainOutcome:  # fmt: skip
    from ynat_ray.checkpoint import read_run_spec, resolve_checkpoint
    from ynat_ray.config import EngineArgs
    from ynat_ray.inference import load_engine
    from ynat_ray.metrics import score

    local_best = resolve_checkpoint(best_path)
    best_history = read_history(local_best)
    best_epoch = max(best_history, key=lambda h: h["epoch"])["epoch"]
    parity = export_best(local_best, best_path, splits.validation)
    # The report runs the engine serving will run (its `auto` pick), in the precision training used.
    engine = load_engine(EngineArgs(checkpoint=local_best, precision=cfg.train.precision))
    split_name, rows = ("test", splits.test) if splits.test is not None else ("validation", splits.validation)
    final, _ = score(engine, rows["title"].tolist(), rows["label"].tolist(), batch_size=cfg.train.eval_batch_size)
    final.update(split=split_name, checkpoint=best_path, best_epoch=best_epoch)
    history = _full_history(history_from, best_history)
    write_artifacts(local_artifacts, history, final, f"{split_name} ({len(rows)} rows)")
    log_training_outcome(tracked, read_run_spec(local_best).to_json(), local_artifacts, local_best, final)
    sample = rows.head(3)
    examples = [
        {"title": t, "gold": engine.id2label[g], **p} for t, g, p in zip(sample["title"], sample["label"], engine(sample["title"].tolist()))
    ]
    where = tracked.where() if tracked else None
    print_summary(run_name, best_path, best_epoch, artifacts, parity, engine, split_name, final, examples, where)
    if cfg.train.push_to_hub:
        from ynat_ray.checkpoint import push_checkpoint

        print(f"[ynat-ray] pushed to {push_checkpoint(local_best, cfg.train.push_to_hub)}", flush=True)
    return TrainOutcome(run_name, run_dir, best_path, history, final, artifacts, examples)


def export_best(local_best: str, best_path: str, validation: Any) -> dict[str, Any]:
    """ONNX fp32 + int8 exports in the best checkpoint, with parity measured on this run's validation rows (and
    uploaded beside it when the checkpoint lives in object storage)."""
    from ynat_ray.export import export_checkpoint

    parity = export_checkpoint(local_best, texts=validation["title"].tolist(), labels=validation["label"].tolist())
    if is_uri(best_path):
        import pyarrow.fs

        from ynat_ray.checkpoint import ONNX_DIR

        pyarrow.fs.copy_files(os.path.join(local_best, ONNX_DIR), f"{best_path}/{ONNX_DIR}")
    return parity


def write_artifacts(folder: str, history: list[dict[str, Any]], final: dict[str, Any], title: str) -> None:
    """metrics history (json + csv), the learning curve, the confusion matrix and final_metrics.json."""
    from ynat_ray.artifacts import plot_confusion_matrix, plot_learning_curve, write_history

    os.makedirs(folder, exist_ok=True)
    write_history(history, folder)
    plot_learning_curve(history, os.path.join(folder, "learning_curve.png"))
    plot_confusion_matrix(final["confusion_matrix"], os.path.join(folder, "confusion_matrix.png"), title)
    with open(os.path.join(folder, "final_metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(final, fh, ensure_ascii=False, indent=2)


def print_summary(
    run_name: str, best_path: str, best_epoch: int, artifacts: str, parity: dict[str, Any], engine: Any, split_name: str,
    final: dict[str, Any], examples: list[dict[str, Any]], mlflow: str | None = None,
) -> None:  # fmt: skip
    """The end-of-run block: where things are (the MLflow run too), the ONNX parity, the engine, the final scores and
    three examples."""
    from ynat_ray.metrics import format_report

    print("\n" + "=" * 72)
    print(f"run          {run_name}")
    print(f"checkpoint   {best_path}  (best epoch {best_epoch} by validation macro-F1)")
    print(f"artifacts    {artifacts}")
    if mlflow:
        print(f"mlflow       {mlflow}")
    print(
        f"onnx         fp32 max |p - p_torch| {parity['fp32_max_abs_diff']:.1e}; int8 labels agree "
        f"{parity['int8_label_agreement']:.2%}, macro-F1 {parity['int8_macro_f1']:.4f} vs {parity['fp32_macro_f1']:.4f}"
    )
    print(f"engine       {engine.backend} ({engine.choice.reason})")
    print(f"{split_name:<12} {format_report(final)}")
    print("examples:")
    for ex in examples:
        print(f"  {ex['title']!r} -> [{{'label': '{ex['label']}', 'score': {ex['score']:.4f}}}]  (gold {ex['gold']})")
    print("=" * 72, flush=True)


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
