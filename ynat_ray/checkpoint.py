"""The checkpoint contract: one module owns its file names, how it is written, read back and resolved.

A checkpoint is a plain Hugging Face directory (`pipeline("text-classification", model=DIR)` loads it
unchanged) plus our extras:

- `ynat_run_config.json`, the run spec: the max_length the model was trained with, where the model came
  from, the label list, and the whole training config. Every inference path reads it back, so serving
  and batch jobs truncate exactly where training did (nanoGPT's `model_args` idea).
- `metrics.json`: the per-epoch history up to this checkpoint.
- `training_state.pt`: optimizer / scheduler / epoch, for resuming (never uploaded to the hub).
- `onnx/`: ONNX Runtime exports (fp32 and int8) and `parity.json`, the record of how closely they match
  torch on validation rows. Written by `ynat_ray.export`; extras that `pipeline()` ignores.

Why one module: training, resume, export, evaluate, predict, Serve, batch and hub push all touch these
files; when each had its own copy of a file name or a loader, they drifted (inference truncated at its own
default instead of the trained length).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ynat_ray.errors import YnatError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RUN_SPEC_FILE = "ynat_run_config.json"
METRICS_FILE = "metrics.json"
STATE_FILE = "training_state.pt"
ONNX_DIR = "onnx"
ONNX_FP32_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
PARITY_FILE = "parity.json"
# Where exports of checkpoints we cannot write into (hub ids, read-only dirs) are cached, by content hash.
CACHE_ENV = "YNAT_RAY_CACHE"


class CheckpointError(YnatError):
    """A checkpoint path or id that cannot be used; the message says what was looked for."""


@dataclass(frozen=True)
class RunSpec:
    """What inference needs to know about how a checkpoint was trained. `config` holds the run's data, model and
    train option groups (`TrainConfig.run_spec_config`); checkpoints written before the groups hold one flat dict.
    `mlflow` is the run's MLflow run ({uri, run_id, experiment_id}; None when tracking was off): Train workers log
    to it, and a checkpoint names the run that produced it."""

    max_length: int | None
    model: str | None
    labels: list[str]
    version: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    mlflow: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "model": self.model,
            "labels": self.labels,
            "ynat_ray_version": self.version,
            "config": self.config,
            "mlflow": self.mlflow,
        }

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> RunSpec:
        if "config" not in values:  # the pre-0.2 file was the flat training config itself
            values = {"max_length": values.get("max_length"), "model": values.get("model"), "labels": [], "config": values}
        labels = list(values.get("labels") or [])
        return cls(
            values.get("max_length"), values.get("model"), labels, values.get("ynat_ray_version"), values["config"], values.get("mlflow")
        )


# ---------------------------------------------------------------------------------------------
# Writing


def save_checkpoint(
    path: str, model: Any, tokenizer: Any, spec: RunSpec, history: list[dict[str, Any]], state: dict[str, Any] | None
) -> None:
    """A Hugging Face directory pipeline() loads, plus the run spec, metrics and (optionally) resume state."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" once per epoch is noise in a training log
    model.save_pretrained(path)  # safetensors
    tokenizer.save_pretrained(path)
    _write_json(os.path.join(path, RUN_SPEC_FILE), spec.to_json())
    _write_json(os.path.join(path, METRICS_FILE), history)
    if state is not None:
        import torch

        torch.save(state, os.path.join(path, STATE_FILE))


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh, ensure_ascii=False, indent=2)


# ---------------------------------------------------------------------------------------------
# Reading


def read_run_spec(path: str) -> RunSpec | None:
    """The run spec of a local checkpoint directory; None for a checkpoint trained elsewhere."""
    file = os.path.join(path, RUN_SPEC_FILE)
    if not os.path.exists(file):
        return None
    with open(file, encoding="utf-8") as fh:
        return RunSpec.from_json(json.load(fh))


def read_history(path: str) -> list[dict[str, Any]]:
    """The per-epoch metrics stored in a checkpoint (empty when there are none)."""
    file = os.path.join(path, METRICS_FILE)
    if not os.path.exists(file):
        return []
    with open(file, encoding="utf-8") as fh:
        return json.load(fh)


def load_resume_state(path: str, model: Any, device: Any) -> dict[str, Any]:
    """Load weights strictly into `model` and return the optimizer/scheduler/epoch state.

    Strict on purpose: a checkpoint from another model shape must fail here, not resume silently with
    half-initialised weights.
    """
    import torch
    from safetensors.torch import load_file

    model.load_state_dict(load_file(os.path.join(path, MODEL_FILE), device=str(device)), strict=True)
    return torch.load(os.path.join(path, STATE_FILE), map_location=device, weights_only=False)


def inference_max_length(spec: RunSpec | None, model_config: Any, tokenizer: Any, requested: int | None = None) -> int:
    """Tokens to keep at inference: the trained length, or a shorter one the user asked for.

    A longer request is capped (the model never saw such positions), and the caller reports the cap.
    Without a run spec (a checkpoint trained elsewhere) the tokenizer's and the position table's limits decide.
    """
    from ynat_ray.modeling import position_offset

    limit = model_config.max_position_embeddings - position_offset(model_config)
    base = min(x for x in (spec.max_length if spec else None, tokenizer.model_max_length, limit) if x)
    return base if requested is None else max(1, min(requested, base))


def content_hash(path: str) -> str:
    """A short SHA-256 over a local checkpoint's config and weights: tells two checkpoints apart (/info)
    and keys the ONNX export cache, so an export is never reused for other weights."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name == CONFIG_FILE or name.endswith((".safetensors", ".bin")):
            digest.update(name.encode())
            with open(os.path.join(path, name), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def _looks_like_path(spec: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else with a path shape, or under an existing local
    directory (`runs/ckpt` when ./runs exists), is a local directory."""
    parent = os.path.dirname(spec)
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or (os.sep != "/" and os.sep in spec):
        return True
    return bool(parent and os.path.isdir(parent))


def resolve_checkpoint(spec: str) -> str:
    """A local directory for a checkpoint given as a directory, file:// path, URI (s3://, gs://) or hub id.

    URIs are downloaded with ray.train.Checkpoint; hub ids with huggingface_hub (its cache). A path that
    does not exist is reported as such, not as a malformed hub id.
    """
    if not spec:
        raise CheckpointError("no checkpoint given: pass --checkpoint DIR (a training run prints where its best checkpoint is)")
    from ynat_ray.config import is_uri, local_path

    if is_uri(spec):
        import ray.train

        try:
            return ray.train.Checkpoint(spec).to_directory()
        except Exception as err:  # noqa: BLE001 - storage errors vary by filesystem
            raise CheckpointError(f"could not download checkpoint {spec}: {err}") from err
    local = os.path.expanduser(local_path(spec))
    if os.path.isdir(local):
        if not os.path.exists(os.path.join(local, CONFIG_FILE)):
            raise CheckpointError(f"checkpoint directory {spec} has no {CONFIG_FILE}; is it a Hugging Face model directory?")
        return os.path.abspath(local)
    if os.path.exists(local):
        raise CheckpointError(f"checkpoint {spec} is a file; pass the checkpoint directory")
    if _looks_like_path(spec) or local != os.path.expanduser(spec):  # a path, or given as file://
        raise CheckpointError(f"checkpoint directory {spec} does not exist")
    return _download_from_hub(spec)


def _download_from_hub(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", ONNX_DIR + "/*"])
    except Exception as err:  # noqa: BLE001 - offline, unknown repo and bad id all get the same advice
        raise CheckpointError(
            f"{repo_id!r} is not a local directory, and the Hugging Face hub could not provide it ({type(err).__name__}: {err})"
        ) from err


def export_cache_dir(path: str) -> str:
    """Where the ONNX files of the checkpoint in `path` live: beside it when writable, else a cache by hash."""
    beside = os.path.join(path, ONNX_DIR)
    if os.path.isdir(beside) or (os.access(path, os.W_OK) and not _in_hub_cache(path)):
        return beside
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ynat_ray")
    return os.path.join(root, "onnx", content_hash(path))


def _in_hub_cache(path: str) -> bool:
    """A hub snapshot (huggingface_hub's cache): never write into it, the hub's files are its own."""
    from huggingface_hub import constants

    return os.path.abspath(path).startswith(os.path.abspath(constants.HF_HUB_CACHE) + os.sep)


# ---------------------------------------------------------------------------------------------
# Publishing


def push_checkpoint(checkpoint_dir: str, repo_id: str, private: bool = False) -> str:
    """Upload model + tokenizer + run spec + metrics (+ ONNX exports), not the optimizer state; return the repo URL.

    Needs a write token (`hf auth login` or HF_TOKEN). A missing token, no network or a repo the token may not
    write are the user's to fix: a `CheckpointError` naming the repo and huggingface_hub's reason.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(
            folder_path=checkpoint_dir,
            repo_id=repo_id,
            ignore_patterns=[STATE_FILE],
            commit_message="ynat-ray: upload fine-tuned YNAT classifier",
        )
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"could not push {checkpoint_dir} to the hub repo {repo_id!r}: {err}") from err
    return str(url)
