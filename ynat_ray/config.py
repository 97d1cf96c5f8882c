"""Options grouped by concern, and each command's set of groups (HF `run_glue.py`'s `HfArgumentParser` idea).

Why groups: a command must refuse what it would ignore (`predict --epochs 9` is a mistake, not a no-op), a
Train worker or a Serve replica should receive only the options of its role, and the run spec stored in a
checkpoint should hold what inference and resume need, not a port number. So:

- a *group* is a dataclass of options for one concern (`DataArgs`, `ModelArgs`, `TrainArgs`, `EngineArgs`, ...);
- a *command config* (`TrainConfig`, `ServeConfig`, ...) is the handful of groups one command takes;
- the CLI builds one `HfArgumentParser` per command over its groups, so `--help` shows only those, grouped;
- a flag another command takes is a one-line error naming that command; a YAML file may hold options of
  several commands (a training config keeps working with `serve`) but a key no command knows is an error.

An option name means one thing everywhere. A few names sit in more than one group because several roles
take them (`precision` trains and infers, `max_length` truncates in both); no command takes two groups that
share a name (`tests/test_config.py` checks), so each flag has one meaning per command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from ynat_ray.errors import UsageError

EMBEDDED = "embedded"  # the YNAT subsample shipped in ynat_ray/assets
HUB = "hub"  # datasets.load_dataset("klue", "ynat")
DEFAULT_MAX_LENGTH = 64  # tokens training truncates to; YNAT titles are ~20, so 64 truncates almost nothing


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


# ---- options several groups share (one definition each) -------------------------------------------------
def _max_length() -> Any:
    return _help(
        "Truncate texts to this many tokens. Training: default 64 (YNAT titles are ~20). Inference: default the "
        "length the checkpoint was trained with (its run spec); a smaller value truncates more, a larger one is capped "
        "at the trained length.",
        default=None,
    )


def _precision() -> Any:
    return _help("'auto': bf16 autocast on GPUs that support it and on CPUs with AMX/AVX512-BF16, else fp32.", default="auto")


def _use_gpu() -> Any:
    return _help("Use GPUs: one per Train worker (NCCL, bf16 autocast), or the engine of predict/evaluate/export.", default=False)


def _eval_batch_size() -> Any:
    return _help("Texts per forward pass when evaluating or predicting.", default=128)


def _verbose() -> Any:
    return _help("Show Ray's own INFO logs (start-up, Ray Data execution plans, Serve controller) on the console.", default=False)


def _placement_timeout_s() -> Any:
    return _help(
        "Wait at most this long for the nodes to hold the Train workers or batch actors, then stop with one line that "
        "says what was asked and what the nodes have. Raise it on an autoscaling cluster whose nodes start slowly.",
        default=120.0,
    )


# ---- the groups ------------------------------------------------------------------------------------------
@dataclass
class RowArgs:
    """How rows are read: which columns, and what happens to a malformed row."""

    _argument_group_name: ClassVar[str] = "rows"
    text_column: str = _help("Column holding the text to classify.", default="title")
    label_column: str = _help("Column holding the label (int id or Korean topic name).", default="label")
    on_bad_rows: Literal["error", "skip"] = _help(
        "'error': stop at the first malformed row, naming file/row/field. 'skip': drop it, write it to "
        "the quarantine file and report the count.",
        default="error",
    )
    quarantine_path: str | None = _help(
        "Where skipped rows go (jsonl). Default: <run dir>/quarantine.jsonl for training, <output>.quarantine.jsonl "
        "for predict-batch, ./quarantine.jsonl for evaluate.",
        default=None,
    )


@dataclass
class DataArgs(RowArgs):
    """Which rows train, validate and test a model (and how they are read)."""

    _argument_group_name: ClassVar[str] = "data"
    data: str = _help(
        "Training rows: 'embedded' (real YNAT subsample shipped in the package, offline), 'hub' "
        "(datasets.load_dataset('klue','ynat'), needs the HF hub), or a json/jsonl/csv/parquet file, "
        "a directory or a glob.",
        default=EMBEDDED,
    )
    validation_data: str | None = _help(
        "Validation rows (file/dir/glob). Default: the embedded/hub validation split, or for local "
        "train files a seeded hold-out of --validation_size rows.",
        default=None,
    )
    test_data: str | None = _help("Test rows for the final report (file/dir/glob). Optional.", default=None)
    validation_size: int = _help("Rows held out for validation (and test, for the hub) like the notebook.", default=1000)
    max_train_samples: int | None = _help("Use at most this many training rows (seeded sample).", default=None)
    max_eval_samples: int | None = _help("Use at most this many validation/test rows (seeded).", default=None)
    seed: int = _help("Seed for subsampling, splits, shuffling and model init.", default=42)


@dataclass
class ModelArgs:
    """The network to train: where it comes from, and what shapes it."""

    _argument_group_name: ClassVar[str] = "model"
    model: str = _help(
        "A hub id (e.g. klue/roberta-base), a local HF model directory, or an offline preset: "
        "'ynat-bigram' (default: 1 layer x 256, mean-pooled ModernBERT over syllable bigrams, trains in minutes on a "
        "laptop), 'ynat-wide' (the same over WordPiece), or the RoBERTa presets 'ynat-tiny' (2 layers x 128), "
        "'ynat-mini' (2 x 256) and 'ynat-small' (6 x 384).",
        default="ynat-bigram",
    )
    max_length: int | None = _max_length()
    vocab_size: int | None = _help(
        "Vocabulary size (a cap for 'ynat-bigram') of the offline presets' tokenizers. Default: the preset's tuned value (docs/tuning.md).",
        default=None,
    )
    hidden_dropout: float | None = _help(
        "Dropout on hidden states and the classifier head (HF hidden_dropout_prob). Default: the tuned value for presets "
        "(docs/tuning.md), the model's own config for pretrained models.",
        default=None,
    )
    attention_dropout: float | None = _help(
        "Dropout on attention probabilities (HF attention_probs_dropout_prob). Default: as for --hidden_dropout.", default=None
    )

    @property
    def train_max_length(self) -> int:
        """The length training truncates to (inference reads the trained one back from the checkpoint)."""
        return self.max_length or DEFAULT_MAX_LENGTH


@dataclass
class TrainArgs:
    """How Ray Train runs the fit: workers, the optimisation recipe, storage, fault tolerance."""

    _argument_group_name: ClassVar[str] = "train"
    num_workers: int = _help("Ray Train data-parallel workers.", default=2)
    use_gpu: bool = _use_gpu()
    cpus_per_worker: float | None = _help(
        "CPUs per Train worker. Default: share the cluster's CPUs minus a reserve for Ray Data, so "
        "data tasks can always be scheduled (a 2-core laptop otherwise deadlocks).",
        default=None,
    )
    materialize: Literal["auto", "yes", "no"] = _help(
        "Tokenize the whole dataset before training ('auto': when it has under 1M rows) instead of streaming.",
        default="auto",
    )
    epochs: int | None = _help("Training epochs. Default: the model's recipe (presets 5, pretrained models 3).", default=None)
    batch_size: int | None = _help("Per-worker training batch size. Default: the recipe's (presets 64, pretrained 32).", default=None)
    eval_batch_size: int = _eval_batch_size()
    learning_rate: float | None = _help(
        "Peak AdamW learning rate. Default: the recipe's (presets trained from scratch: tuned, docs/tuning.md; "
        "pretrained models 5e-5).",
        default=None,
    )
    token_dropout: float | None = _help(
        "Training only: replace this fraction of each title's tokens with [MASK] (a regulariser). Default: the recipe's "
        "(presets: tuned, docs/tuning.md; pretrained models 0).",
        default=None,
    )
    weight_decay: float | None = _help(
        "AdamW weight decay (never applied to biases or LayerNorm). Default: the recipe's (docs/tuning.md).", default=None
    )
    warmup_ratio: float | None = _help(
        "Fraction of steps for linear warmup, then linear decay to 0. Default: the recipe's (docs/tuning.md).", default=None
    )
    max_grad_norm: float = _help("Gradient clipping norm.", default=1.0)
    precision: Literal["auto", "fp32", "bf16"] = _precision()
    log_every: int = _help("Also print the training loss every N steps (rank 0), for logs without a terminal; 0: off.", default=0)
    progress_bar: bool = _help(
        "Epoch progress on rank 0 (steps, loss, samples/s): a live bar on a terminal, a line every ~10 %% or 30 s in logs.",
        default=True,
    )
    storage_path: str = _help(
        "Where runs and checkpoints go: an absolute path or a URI (s3://, gs://). Multi-node clusters need shared storage.",
        default="~/ynat_ray_results",
    )
    run_name: str | None = _help("Run name. Default: a unique one (reusing a name resumes that run).", default=None)
    max_failures: int = _help("Worker-group restarts allowed; training resumes from the latest checkpoint.", default=2)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = _help(
        "How Train workers are placed on nodes (Ray's placement strategies): 'PACK' (default) fills as few nodes as "
        "possible, 'SPREAD' spreads them where it can, 'STRICT_SPREAD' puts every worker on a different node.",
        default="PACK",
    )
    placement_timeout_s: float = _placement_timeout_s()
    num_to_keep: int = _help("Checkpoints to keep, the best by validation macro-F1.", default=2)
    push_to_hub: str | None = _help("After training, push the best model + tokenizer to this hub repo id.", default=None)
    tracking_uri: str | None = _help(
        "MLflow tracking: an http(s):// tracking server, any MLflow store URI, or 'none' (off). Default: "
        "MLFLOW_TRACKING_URI if set, else an embedded SQLite store <storage_path>/mlflow.db that needs no server "
        "(off for s3:// or gs:// storage). The run's summary prints the `mlflow ui` command that shows it.",
        default=None,
    )
    verbose: bool = _verbose()

    def resolved_storage_path(self) -> str:
        """Ray needs an absolute path or a URI; expand ~ and relative paths here, once."""
        if "://" in self.storage_path:  # file:// too: Ray takes it as is
            return self.storage_path
        return str(Path(os.path.expanduser(self.storage_path)).resolve())


@dataclass
class DistillArgs:
    """Knowledge distillation: a teacher's softened probabilities as a second target beside the gold labels
    (docs/training.md#distillation). The teacher scores the training rows once, before training, in Ray Data actors."""

    _argument_group_name: ClassVar[str] = "distillation"
    teacher: str | None = _help(
        "Distill from this teacher: a ynat-ray checkpoint (local dir, URI or hub id) or 'linear' (the char TF-IDF + "
        "logistic-regression yardstick, ynat_ray/linear.py, scored out-of-fold). Default: no teacher.",
        default=None,
    )
    distill_weight: float = _help(
        "Weight of the teacher's term in the loss: (1 - w) * cross-entropy(gold) + w * T^2 * KL(teacher || student).",
        default=0.5,
    )
    distill_temperature: float = _help("Temperature T that softens both the teacher's and the student's probabilities.", default=2.0)
    teacher_actors: int = _help("Ray Data actors scoring the training rows with a checkpoint teacher.", default=1)
    teacher_cpus: float = _help("CPUs per teacher actor (and for fitting the linear teacher).", default=1.0)
    teacher_gpus: float = _help("GPUs per teacher actor (a large teacher on a GPU node; the Train workers never load it).", default=0.0)


@dataclass
class EngineArgs:
    """Which checkpoint the inference engine loads, and how it runs it (docs/engine.md)."""

    _argument_group_name: ClassVar[str] = "engine"
    checkpoint: str | None = _help("A trained checkpoint: local dir, URI, or hub id.", default=None)
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = _help(
        "Inference engine. 'auto': on CPU, ONNX Runtime int8 when its recorded parity check passed, else ONNX fp32; "
        "on GPU, torch (bf16 where supported). The choice and its reason are logged and shown at /info.",
        default="auto",
    )
    max_length: int | None = _max_length()
    precision: Literal["auto", "fp32", "bf16"] = _precision()


@dataclass
class LocalArgs:
    """The engine of a one-process command (predict, evaluate, export): its threads and device."""

    _argument_group_name: ClassVar[str] = "this process"
    threads: int | None = _help("Intra-op threads. Default: the CPUs this process may use.", default=None)
    use_gpu: bool = _use_gpu()
    eval_batch_size: int = _eval_batch_size()


@dataclass
class LimitArgs:
    """What each Serve replica enforces per request and batch. Reaches replicas as Serve's `user_config`, so a
    `serve deploy` that changes only these updates live replicas without restarting them."""

    _argument_group_name: ClassVar[str] = "replica limits (live-updatable)"
    max_batch_size: int = _help("Most texts in one forward pass (texts of concurrent requests share passes).", default=32)
    batch_wait_timeout_s: float = _help(
        "Most a partial batch waits for requests the replica already accepted (being read or validated); a lone "
        "request never waits, and texts arriving during a forward pass form the next batch (docs/serving.md).",
        default=0.005,
    )
    max_texts_per_request: int = _help("Most texts in one request (else 413).", default=64)
    max_chars_per_text: int = _help("Longer texts are truncated to this many characters (docs/serving.md).", default=2000)
    retry_after_s: float = _help("Retry-After header (seconds) sent with 503s for backpressure or a replica that just died.", default=1.0)


@dataclass
class ServeArgs:
    """The Serve deployment: ingress, replicas, autoscaling and admission control."""

    _argument_group_name: ClassVar[str] = "serve"
    host: str | None = _help(
        "Address the HTTP ingress and the replicas bind. Default: 127.0.0.1 when `serve` starts Ray itself (a laptop), "
        "0.0.0.0 on a running cluster (RAY_ADDRESS), where HAProxy must reach replicas on other nodes (docs/cluster.md).",
        default=None,
    )
    port: int = _help("HTTP port.", default=8000)
    min_replicas: int = _help("Autoscaling: fewest replicas.", default=1)
    max_replicas: int = _help("Autoscaling: most replicas.", default=2)
    target_ongoing_requests: float = _help("Autoscaling: ongoing requests per replica to aim for.", default=8.0)
    upscale_delay_s: float = _help("Autoscaling: load must persist this long before scaling up.", default=3.0)
    downscale_delay_s: float = _help("Autoscaling: idle this long before scaling down.", default=15.0)
    look_back_period_s: float = _help(
        "Autoscaling: average the ongoing-request metric over this window (Serve's default, 30 s, makes scaling sluggish; "
        "keep it above Serve's 10 s metrics push interval).",
        default=15.0,
    )
    max_ongoing_requests: int = _help("Requests one replica takes at once (must be >= max_batch_size).", default=64)
    max_queued_requests: int = _help("Requests waiting per deployment before 503 + Retry-After.", default=256)
    replica_cpus: float = _help("CPUs per serving replica (its engine runs that many threads).", default=1.0)
    replica_gpus: float = _help("GPUs per serving replica (bf16/fp16 on GPU).", default=0.0)
    http_ingress: Literal["haproxy", "proxy"] = _help(
        "'haproxy': Serve's HAProxy direct ingress (faster; falls back to 'proxy' with a warning if it cannot start). "
        "'proxy': Serve's Python HTTP proxy. Applies when `ynat-ray serve` starts Ray itself; a running cluster keeps "
        "the ingress it was started with (RAY_SERVE_ENABLE_HA_PROXY=1 in its environment turns HAProxy on).",
        default="haproxy",
    )
    proxy_location: Literal["EveryNode", "HeadOnly"] = _help(
        "Where Serve runs an HTTP ingress (HAProxy or the Python proxy): 'EveryNode' (default; put a load balancer in "
        "front of the nodes) or 'HeadOnly'. Nodes sharing one machine (ray.cluster_utils) need 'HeadOnly': their ingresses "
        "would share one port.",
        default="EveryNode",
    )
    max_replicas_per_node: int | None = _help(
        "Most replicas of the deployment on one node (1: every replica on its own node, so losing a node loses one replica).",
        default=None,
    )
    request_timeout_s: float = _help("HTTP request timeout at the proxy.", default=30.0)
    health_check_period_s: float = _help(
        "Seconds between replica health checks (each runs a real 1-text forward pass); also how fast a dead replica is replaced.",
        default=10.0,
    )
    verbose: bool = _verbose()


@dataclass
class BatchArgs:
    """A predict-batch job: input and output files, and the predictor actors."""

    _argument_group_name: ClassVar[str] = "batch"
    input: str | None = _help("Input file/dir/glob/URI (json, jsonl, csv, parquet).", default=None)
    output: str | None = _help("Output directory (parquet or jsonl files).", default=None)
    output_format: Literal["parquet", "jsonl"] = _help("Output file format.", default="parquet")
    all_scores: bool = _help("Also write the score of each of the 7 topics.", default=False)
    num_actors: int = _help("Predictor actors (each loads the model once).", default=1)
    actor_cpus: float = _help("CPUs per predictor actor (its engine runs that many threads).", default=1.0)
    actor_gpus: float = _help("GPUs per predictor actor.", default=0.0)
    eval_batch_size: int = _eval_batch_size()
    rows_per_file: int = _help(
        "Rows gathered into one output file. Each file is committed with its rows' ids, so a run stopped midway and "
        "started again with the same arguments redoes at most the files in flight.",
        default=100_000,
    )
    overwrite: bool = _help(
        "Replace the contents of an existing --output directory (and the quarantine file); without it a non-empty "
        "--output is an error.",
        default=False,
    )
    placement_timeout_s: float = _placement_timeout_s()
    verbose: bool = _verbose()


@dataclass
class TuneArgs:
    """The search itself; every other option is fixed for all trials (or searched, when the space names it)."""

    _argument_group_name: ClassVar[str] = "tune"
    space: str | None = _help("YAML search space: option names, fixed values or ranges. Default: the packaged one.", default=None)
    num_samples: int = _help("Trials to sample (with `grid` entries: samples per grid point).", default=8)
    max_concurrent_trials: int | None = _help("Trials at once (default: what the CPUs/GPUs hold).", default=None)
    grace_period: int = _help("ASHA: epochs every trial runs before it can be stopped.", default=2)
    reduction_factor: int = _help("ASHA: keep the best 1/N of trials at each rung.", default=2)
    trial_failures: int = _help("Tune: times a failed trial is retried (workers: --max_failures).", default=1)
    out: str | None = _help("Directory for results.csv, trials.png, best.yaml (default: the search's folder).", default=None)


GROUPS: tuple[type, ...] = (
    RowArgs, DataArgs, ModelArgs, TrainArgs, DistillArgs, EngineArgs, LocalArgs, LimitArgs, ServeArgs, BatchArgs, TuneArgs,
)  # fmt: skip


def option_names(group: type) -> list[str]:
    """The option (flag, YAML key) names of a group or a command config."""
    return [f.name for f in fields(group)]


# ---- command configs -------------------------------------------------------------------------------------
C = TypeVar("C", bound="CommandConfig")


@dataclass
class CommandConfig:
    """A command's groups. Subclasses list one field per group; `of()` builds one from flat option names."""

    command: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def groups(cls) -> dict[str, type]:
        """Group attribute -> group class, in `--help` order."""
        return {f.name: f.type if isinstance(f.type, type) else _GROUP_BY_NAME[f.type] for f in fields(cls)}

    @classmethod
    def options(cls) -> dict[str, str]:
        """Every option this command takes -> the attribute of the group that holds it."""
        return {name: attr for attr, group in cls.groups().items() for name in option_names(group)}

    @classmethod
    def of(cls: type[C], **values: Any) -> C:
        """Build from flat option names (a test's `TrainConfig.of(epochs=1)`, a YAML mapping); a name this command
        does not take is a `UsageError` naming the command that does."""
        check_options(cls, values)
        where = cls.options()
        per_group: dict[str, dict[str, Any]] = {attr: {} for attr in cls.groups()}
        for name, value in values.items():
            per_group[where[name]][name] = value
        return cls(**{attr: group(**per_group[attr]) for attr, group in cls.groups().items()})

    def flat(self) -> dict[str, Any]:
        """All options as one flat mapping (what a YAML file holds)."""
        out: dict[str, Any] = {}
        for attr in self.groups():
            out.update(asdict(getattr(self, attr)))
        return out


@dataclass
class TrainConfig(CommandConfig):
    command: ClassVar[str] = "train"
    description: ClassVar[str] = "Fine-tune a YNAT topic classifier with Ray Train."
    data: DataArgs = field(default_factory=DataArgs)
    model: ModelArgs = field(default_factory=ModelArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    distill: DistillArgs = field(default_factory=DistillArgs)

    def with_recipe(self) -> TrainConfig:
        """A copy whose recipe options left at None (learning rate, epochs, batch size, warmup, weight decay, token
        dropout; the model's dropouts) hold the model's recipe (`modeling.recipe_for`): tuned values for the offline
        presets, the usual fine-tuning ones for pretrained models. Training resolves once, at the start of a run."""
        from ynat_ray.modeling import RECIPE_FIELDS, recipe_for

        recipe = recipe_for(self.model.model)

        def filled(group: Any) -> Any:
            names = set(option_names(type(group))) & set(RECIPE_FIELDS)
            return replace(group, **{k: getattr(recipe, k) for k in names if getattr(group, k) is None})

        return replace(self, model=filled(self.model), train=filled(self.train))

    def run_spec_config(self) -> dict[str, dict[str, Any]]:
        """What a checkpoint records of its run: the data, model, train and distillation groups (what inference and
        resume need, and which teacher taught it)."""
        return {"data": asdict(self.data), "model": asdict(self.model), "train": asdict(self.train), "distill": asdict(self.distill)}


@dataclass
class TuneConfig(TrainConfig):
    command: ClassVar[str] = "tune"
    description: ClassVar[str] = (
        "Search training hyperparameters with Ray Tune (ASHA on validation macro-F1) over the same TorchTrainer loop. "
        "Other options are fixed for every trial; writes results.csv, trials.png and best.yaml (for `train --config`)."
    )
    tune: TuneArgs = field(default_factory=TuneArgs)

    def trial(self) -> TrainConfig:
        """The training options every trial starts from."""
        return TrainConfig(data=self.data, model=self.model, train=self.train, distill=self.distill)


@dataclass
class EvaluateConfig(CommandConfig):
    command: ClassVar[str] = "evaluate"
    description: ClassVar[str] = "Accuracy, macro-F1, per-class F1 and the confusion matrix of a checkpoint."
    engine: EngineArgs = field(default_factory=EngineArgs)
    local: LocalArgs = field(default_factory=LocalArgs)
    data: DataArgs = field(default_factory=DataArgs)


@dataclass
class PredictConfig(CommandConfig):
    command: ClassVar[str] = "predict"
    description: ClassVar[str] = "Classify titles given on the command line; prints pipeline-shaped output."
    engine: EngineArgs = field(default_factory=EngineArgs)
    local: LocalArgs = field(default_factory=LocalArgs)


@dataclass
class ExportConfig(CommandConfig):
    command: ClassVar[str] = "export"
    description: ClassVar[str] = (
        "Export a checkpoint (local dir, URI or hub id) to ONNX fp32 + int8 and record their parity with torch on the "
        "validation rows. Files go into <checkpoint>/onnx, or a cache keyed by the weights' hash when the checkpoint is "
        "not writable."
    )
    engine: EngineArgs = field(default_factory=EngineArgs)
    local: LocalArgs = field(default_factory=LocalArgs)
    data: DataArgs = field(default_factory=DataArgs)


@dataclass
class ServeConfig(CommandConfig):
    command: ClassVar[str] = "serve"
    description: ClassVar[str] = "Serve a checkpoint over HTTP with Ray Serve (autoscaling, batching)."
    engine: EngineArgs = field(default_factory=EngineArgs)
    limits: LimitArgs = field(default_factory=LimitArgs)
    serve: ServeArgs = field(default_factory=ServeArgs)


@dataclass
class BatchConfig(CommandConfig):
    command: ClassVar[str] = "predict-batch"
    description: ClassVar[str] = "Score files with Ray Data (an actor pool running the inference engine); writes parquet/jsonl."
    engine: EngineArgs = field(default_factory=EngineArgs)
    rows: RowArgs = field(default_factory=RowArgs)
    batch: BatchArgs = field(default_factory=BatchArgs)


_GROUP_BY_NAME = {g.__name__: g for g in GROUPS}
COMMAND_CONFIGS: tuple[type[CommandConfig], ...] = (
    TrainConfig, TuneConfig, EvaluateConfig, PredictConfig, ServeConfig, BatchConfig, ExportConfig,
)  # fmt: skip


def commands_taking(name: str) -> list[str]:
    """The commands whose groups hold option `name` (empty: no command knows it)."""
    return [c.command for c in COMMAND_CONFIGS if name in c.options()]


def check_options(cls: type[CommandConfig], names: Any, *, where: str = "") -> None:
    """Every name must be an option of `cls`'s command; otherwise one line naming the command(s) that take it."""
    for name in names:
        if name in cls.options():
            continue
        owners = commands_taking(name)
        prefix = f"{where}: " if where else ""
        if owners:
            takers = " / ".join(f"`ynat-ray {o}`" for o in owners)
            raise UsageError(f"{prefix}--{name} is an option of {takers}, not of `ynat-ray {cls.command}`")
        raise UsageError(f"{prefix}unknown option --{name} (see `ynat-ray {cls.command} --help`)")


# ---- files -----------------------------------------------------------------------------------------------
def is_uri(path: str) -> bool:
    """An object-store or other remote URI (s3://, gs://, ...); `file://` and plain paths are local. The one test
    for it: checkpoints, storage, artifacts, inputs and config files all decide local-or-remote here."""
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    """A local path or `file://` URI as a plain path (remote URIs pass through)."""
    return path.removeprefix("file://")


def read_text(path: str, what: str = "config file") -> str:
    """A small text file from a local path or a URI (s3://, gs://: a best.yaml or search space on shared storage)."""
    if is_uri(path):
        import fsspec

        try:
            with fsspec.open(path, "r", encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} {path} does not exist") from None
    local = local_path(path)
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{what} {path} does not exist")
    return Path(local).read_text(encoding="utf-8")


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON config file (local or URI) into a flat dict of option names. Keys of any command are
    allowed (one file may configure train and serve); a key no command knows is a `UsageError`."""
    text = read_text(path)
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a mapping of option names to values")
    unknown = sorted(k for k in values if not commands_taking(k))
    if unknown:
        raise UsageError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    return values


# ---- parsing ---------------------------------------------------------------------------------------------
def _raise_usage_error(message: str) -> None:
    raise UsageError(message)


def build_parser(cls: type[CommandConfig]) -> Any:
    """HfArgumentParser over the command's groups (one `--help` section each), plus `--config FILE`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(tuple(cls.groups().values()), prog=f"ynat-ray {cls.command}", description=cls.description)
    parser.error = _raise_usage_error  # argparse would print usage + exit; the CLI prints one line instead
    parser.add_argument(
        "--config", default=None, help="YAML or JSON file of options (it may hold other commands' options too); flags override it."
    )
    return parser


def _flag_names(argv: list[str]) -> list[str]:
    return [a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--") and len(a) > 2]


def parse_command(
    cls: type[C], argv: list[str] | None = None, parser: Any = None, defaults: dict[str, Any] | None = None
) -> tuple[C, argparse.Namespace]:
    """Parse argv into (command config, namespace of extra arguments the caller added to `parser`).

    Order of precedence: flags, then the `--config` file (only the keys this command takes), then `defaults`
    (e.g. a search space's fixed values), then each option's default.
    """
    parser = parser or build_parser(cls)
    argv = list(sys.argv[1:] if argv is None else argv)
    extras = {a.dest for a in parser._actions}  # --help, --config and the caller's own arguments
    check_options(cls, [n for n in _flag_names(argv) if n not in extras and n.removeprefix("no_") not in cls.options()])
    pre, _ = parser.parse_known_args(argv)
    values = dict(defaults or {})
    if pre.config:
        values.update({k: v for k, v in load_config_file(pre.config).items() if k in cls.options()})
    parser.set_defaults(**values)
    *groups, unknown = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False, return_remaining_strings=True)
    if unknown:
        raise UsageError(f"unknown option(s): {' '.join(unknown)} (see `ynat-ray {cls.command} --help`)")
    n = len(cls.groups())
    extra = groups[n] if len(groups) > n else argparse.Namespace()
    return cls(**dict(zip(cls.groups(), groups[:n], strict=True))), extra
