"""One flat config for everything: the CLI, `jobs/`, `serve/` and the tests all build a `YnatConfig`.

Why flat: like nanoGPT's config, every knob sits in one commented list, so `--help`, a YAML file and
`YnatConfig(epochs=1)` in a test all speak the same names. Parsing uses `transformers.HfArgumentParser`
(help text comes from each field's `help`), plus `--config FILE.yaml|json` whose values the command line
can override.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

EMBEDDED = "embedded"  # the YNAT subsample shipped in ynat_ray/assets
HUB = "hub"  # datasets.load_dataset("klue", "ynat")


class UsageError(ValueError):
    """A command-line mistake (unknown option, bad value, missing argument): reported in one line, exit 2."""


def _raise_usage_error(message: str) -> None:
    raise UsageError(message)


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class YnatConfig:
    # ---- data -------------------------------------------------------------------------------
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
    text_column: str = _help("Column holding the text to classify.", default="title")
    label_column: str = _help("Column holding the label (int id or Korean topic name).", default="label")
    validation_size: int = _help("Rows held out for validation (and test, for the hub) like the notebook.", default=1000)
    max_train_samples: int | None = _help("Use at most this many training rows (seeded sample).", default=None)
    max_eval_samples: int | None = _help("Use at most this many validation/test rows (seeded).", default=None)
    on_bad_rows: Literal["error", "skip"] = _help(
        "'error': stop at the first malformed row, naming file/row/field. 'skip': drop it, write it to "
        "the quarantine file and report the count.",
        default="error",
    )
    quarantine_path: str | None = _help("Where skipped rows go (jsonl). Default: <run dir>/quarantine.jsonl.", default=None)
    seed: int = _help("Seed for subsampling, splits, shuffling and model init.", default=42)

    # ---- model ------------------------------------------------------------------------------
    model: str = _help(
        "A hub id (e.g. klue/roberta-base), a local HF model directory, or an offline preset: "
        "'ynat-bigram' (default: 1 layer x 256, mean-pooled ModernBERT over syllable bigrams, trains in minutes on a "
        "laptop), 'ynat-wide' (the same over WordPiece), or the RoBERTa presets 'ynat-tiny' (2 layers x 128), "
        "'ynat-mini' (2 x 256) and 'ynat-small' (6 x 384).",
        default="ynat-bigram",
    )
    max_length: int | None = _help(
        "Truncate texts to this many tokens. Training: default 64 (YNAT titles are ~20). Inference: default the "
        "length the checkpoint was trained with (read from its ynat_run_config.json); a smaller value truncates more, "
        "a larger one is capped at the trained length.",
        default=None,
    )
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

    # ---- training ---------------------------------------------------------------------------
    num_workers: int = _help("Ray Train data-parallel workers.", default=2)
    use_gpu: bool = _help("One GPU per worker, NCCL backend, bf16 autocast.", default=False)
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
    eval_batch_size: int = _help("Batch size for evaluation and prediction.", default=128)
    learning_rate: float | None = _help(
        "Peak AdamW learning rate. Default: the recipe's, 1.73e-3 for presets trained from scratch (tuned, docs/tuning.md), "
        "5e-5 for pretrained models.",
        default=None,
    )
    token_dropout: float | None = _help(
        "Training only: replace this fraction of each title's tokens with [MASK] (a regulariser). Default: the recipe's "
        "(presets: tuned, docs/tuning.md; pretrained models 0).",
        default=None,
    )
    weight_decay: float | None = _help(
        "AdamW weight decay (never applied to biases or LayerNorm). Default: the recipe's (presets 1.4e-3, pretrained 0.01).",
        default=None,
    )
    warmup_ratio: float | None = _help(
        "Fraction of steps for linear warmup, then linear decay to 0. Default: the recipe's (presets 0.176, pretrained 0.1).",
        default=None,
    )
    max_grad_norm: float = _help("Gradient clipping norm.", default=1.0)
    precision: Literal["auto", "fp32", "bf16"] = _help(
        "'auto': bf16 autocast on GPUs that support it and on CPUs with AMX/AVX512-BF16, else fp32.",
        default="auto",
    )
    log_every: int = _help("Also print the training loss every N steps (rank 0), for logs without a terminal; 0: off.", default=0)
    progress_bar: bool = _help("A progress bar per epoch on rank 0 (steps, loss, samples/s), drawn on the driver.", default=True)
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
    placement_timeout_s: float = _help(
        "Wait at most this long for the nodes to hold the workers (or batch actors), then stop with one line that "
        "says what was asked and what the nodes have. Raise it on an autoscaling cluster whose nodes take longer to start.",
        default=120.0,
    )
    num_to_keep: int = _help("Checkpoints to keep, the best by validation macro-F1.", default=2)
    verbose: bool = _help("Show Ray's own INFO logs (start-up, Ray Data execution plans, Serve controller) on the console.", default=False)
    push_to_hub: str | None = _help("After training, push the best model + tokenizer to this hub repo id.", default=None)

    # ---- inference (evaluate / predict / serve / predict-batch) ------------------------------
    checkpoint: str | None = _help("A trained checkpoint: local dir, URI, or hub id.", default=None)
    backend: Literal["auto", "torch", "onnx", "onnx-int8"] = _help(
        "Inference engine. 'auto': on CPU, ONNX Runtime int8 when its recorded parity check passed, else ONNX fp32; "
        "on GPU, torch (bf16 where supported). The choice and its reason are logged and shown at /info.",
        default="auto",
    )
    threads: int | None = _help(
        "Intra-op threads for predict/evaluate. Default: the CPUs this process may use. (Serve replicas and batch actors "
        "always use the CPUs they were given: --replica_cpus, --actor_cpus.)",
        default=None,
    )

    # ---- serving ----------------------------------------------------------------------------
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
    max_ongoing_requests: int = _help("Requests one replica takes at once (must be >= max_batch_size).", default=64)
    max_queued_requests: int = _help("Requests waiting per deployment before 503 + Retry-After.", default=256)
    max_batch_size: int = _help("@serve.batch: most texts in one forward pass.", default=32)
    batch_wait_timeout_s: float = _help("@serve.batch: wait this long for a batch to fill (5 ms: best measured).", default=0.005)
    max_texts_per_request: int = _help("Most texts in one request (else 413).", default=64)
    max_chars_per_text: int = _help("Longer texts are truncated to this many characters (see README).", default=2000)
    replica_cpus: float = _help("CPUs per serving replica.", default=1.0)
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
    look_back_period_s: float = _help(
        "Autoscaling: average the ongoing-request metric over this window (Serve's default, 30 s, makes scaling sluggish; "
        "keep it above Serve's 10 s metrics push interval).",
        default=15.0,
    )
    health_check_period_s: float = _help(
        "Seconds between replica health checks (each runs a real 1-text forward pass); also how fast a dead replica is replaced.",
        default=10.0,
    )
    retry_after_s: float = _help("Retry-After header (seconds) sent with 503s for backpressure or a replica that just died.", default=1.0)

    # ---- batch prediction -------------------------------------------------------------------
    input: str | None = _help("predict-batch: input file/dir/glob/URI (json, jsonl, csv, parquet).", default=None)
    output: str | None = _help("predict-batch: output directory (parquet or jsonl files).", default=None)
    output_format: Literal["parquet", "jsonl"] = _help("predict-batch: output file format.", default="parquet")
    all_scores: bool = _help("predict-batch: also write the score of each of the 7 topics.", default=False)
    num_actors: int = _help("predict-batch: predictor actors (each loads the model once).", default=1)
    actor_cpus: float = _help("predict-batch: CPUs per predictor actor.", default=1.0)
    actor_gpus: float = _help("predict-batch: GPUs per predictor actor.", default=0.0)
    rows_per_file: int = _help(
        "predict-batch: rows gathered into one output file. Each file is committed with its rows' ids, so a run stopped "
        "midway and started again with the same arguments redoes at most the files in flight.",
        default=100_000,
    )
    overwrite: bool = _help(
        "predict-batch: replace the contents of an existing --output directory (and the quarantine file); "
        "without it a non-empty --output is an error.",
        default=False,
    )

    # -----------------------------------------------------------------------------------------
    @property
    def train_max_length(self) -> int:
        """The length training truncates to (inference reads the trained one back from the checkpoint)."""
        from ynat_ray.checkpoint import DEFAULT_MAX_LENGTH

        return self.max_length or DEFAULT_MAX_LENGTH

    def with_recipe(self) -> YnatConfig:
        """A copy whose training-recipe fields left at None (learning rate, epochs, batch size, warmup, weight decay,
        dropouts) hold the model's recipe (`modeling.recipe_for`): tuned values for the offline presets, the usual
        fine-tuning ones for pretrained models. Training resolves once, at the start of a run or trial."""
        from dataclasses import replace

        from ynat_ray.modeling import RECIPE_FIELDS, recipe_for

        recipe = recipe_for(self.model)
        return replace(self, **{k: getattr(recipe, k) for k in RECIPE_FIELDS if getattr(self, k) is None})

    def resolved_storage_path(self) -> str:
        """Ray needs an absolute path or a URI; expand ~ and relative paths here, once."""
        if "://" in self.storage_path:  # file:// too: Ray takes it as is
            return self.storage_path
        return str(Path(os.path.expanduser(self.storage_path)).resolve())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> YnatConfig:
        """Build from a dict (a YAML/JSON file); unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)


def is_uri(path: str) -> bool:
    """An object-store or other remote URI (s3://, gs://, ...); `file://` and plain paths are local. The one test
    for it: checkpoints, storage, artifacts and config files all decide local-or-remote here."""
    return "://" in path and not path.startswith("file://")


def read_text(path: str, what: str = "config file") -> str:
    """A small text file from a local path or a URI (s3://, gs://: a best.yaml or search space on shared storage)."""
    if is_uri(path):
        import fsspec

        try:
            with fsspec.open(path, "r", encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{what} {path} does not exist") from None
    local = path.removeprefix("file://")
    if not os.path.isfile(local):
        raise FileNotFoundError(f"{what} {path} does not exist")
    return Path(local).read_text(encoding="utf-8")


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON config file (local or URI) into a dict."""
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
        raise ValueError(f"{path}: a config file must hold a mapping of option names to values")
    try:
        YnatConfig.from_dict(values)  # validate the keys early
    except (TypeError, ValueError) as err:
        raise UsageError(f"config file {path}: {err}") from None
    return values


def build_parser(description: str | None = None) -> Any:
    """HfArgumentParser over YnatConfig, plus --config FILE."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(YnatConfig, description=description)
    parser.error = _raise_usage_error  # argparse would print usage + exit; the CLI prints one line instead
    parser.add_argument("--config", default=None, help="YAML or JSON file of options; command-line flags override it.")
    return parser


def parse_config(argv: list[str] | None = None, parser: Any = None) -> tuple[YnatConfig, argparse.Namespace]:
    """Parse argv into (YnatConfig, namespace of the extra arguments: --config and any the caller added)."""
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config_file(pre.config))
    *outputs, unknown = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False, return_remaining_strings=True)
    if unknown:
        raise UsageError(f"unknown option(s): {' '.join(unknown)} (see --help)")
    extra = outputs[1] if len(outputs) > 1 else argparse.Namespace()
    return outputs[0], extra
