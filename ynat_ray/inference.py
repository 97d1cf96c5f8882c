"""The inference engine: one `TextClassifier` behind `predict`, `evaluate`, the end-of-training report,
Serve replicas and batch actors.

Why one engine: all five paths must give the same answers at the best speed this hardware allows, and
truncate where the model was trained (read from the checkpoint's run spec). It runs one of three
backends, picked by `--backend`:

- `onnx-int8`: ONNX Runtime with dynamically quantized int8 weights. On CPU it is several times faster
  than torch for single titles; `auto` uses it only where the export's recorded parity check passed.
- `onnx`: ONNX Runtime fp32, equal to torch within 1e-4.
- `torch`: the Hugging Face model; `auto` picks it on GPU (bf16 autocast where supported).

Intra-op threads are always explicit: the CPUs a replica or actor was given, never every core, so two
replicas on one machine do not fight over the same cores. Batches are sorted by length and padded by the
tokenizer to their own longest title. Outputs keep the pipeline's shape: `[{'label': '경제', 'score': 0.97}]`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ynat_ray.checkpoint import inference_max_length, read_run_spec, resolve_checkpoint
from ynat_ray.cpu import threads_for
from ynat_ray.errors import UsageError
from ynat_ray.runners import OrtRunner, Runner, TorchRunner, softmax

if TYPE_CHECKING:
    from ynat_ray.config import EngineArgs

logger = logging.getLogger("ynat_ray")
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


def format_predictions(probs: np.ndarray, id2label: dict[int, str], top_k: int | None = 1) -> list[list[dict[str, Any]]]:
    """Per input, the top_k labels (all 7 when None) with scores, best first, like pipeline(top_k=...)."""
    k = probs.shape[1] if top_k is None else max(1, min(top_k, probs.shape[1]))
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[{"label": id2label[int(j)], "score": float(row[j])} for j in idx] for row, idx in zip(probs, order)]


@dataclass(frozen=True)
class BackendChoice:
    """The backend that runs, and why (logged, shown at /info and in the training summary)."""

    name: str
    reason: str


def choose_backend(requested: str, device_type: str, parity: dict[str, Any] | None) -> BackendChoice:
    """Resolve `--backend` for this device and the export's parity record (None: no export)."""
    if requested not in BACKENDS:
        raise UsageError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested != "auto":
        if requested != "torch" and device_type == "cuda":
            raise UsageError(f"--backend {requested} runs on CPU only; use --backend torch (or auto) on a GPU")
        return BackendChoice(requested, "asked for with --backend")
    if device_type == "cuda":
        return BackendChoice("torch", "auto: GPU, so torch")
    if parity is None:
        return BackendChoice("torch", "auto: no ONNX export could be made, so torch")
    if parity.get("int8_ok"):
        return BackendChoice(
            "onnx-int8",
            f"auto: CPU, and int8 passed its parity check (labels agree {parity['int8_label_agreement']:.2%}, "
            f"macro-F1 {parity['int8_macro_f1']:.4f} vs {parity['fp32_macro_f1']:.4f} on {parity['rows']} rows)",
        )
    if parity.get("fp32_ok"):
        return BackendChoice("onnx", "auto: CPU; int8 failed its parity check, so ONNX fp32")
    return BackendChoice("torch", "auto: CPU; the ONNX export failed its parity check, so torch")


class TextClassifier:
    """A checkpoint's tokenizer and one backend, loaded once, predicting in length-sorted padded batches."""

    def __init__(
        self,
        checkpoint: str,
        *,
        backend: str = "auto",
        use_gpu: bool | None = None,
        precision: str = "auto",
        max_length: int | None = None,
        threads: int | None = None,
    ):
        from transformers import AutoConfig, AutoTokenizer

        from ynat_ray.modeling import ModelLoadError, load_advice
        from ynat_ray.precision import pick_device, resolve_precision

        self.source = checkpoint
        self.path = path = resolve_checkpoint(checkpoint)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(load_advice(checkpoint, err)) from err
        self.spec = read_run_spec(path)
        self.max_length = inference_max_length(self.spec, self.config, self.tokenizer, max_length)
        self.threads = threads_for(None) if threads is None else max(1, threads)
        self.id2label = {int(k): v for k, v in self.config.id2label.items()}
        self.labels = [self.id2label[i] for i in range(len(self.id2label))]

        self.device = pick_device(use_gpu)
        parity = None
        if backend != "torch" and self.device.type == "cpu":
            from ynat_ray.export import export_checkpoint

            try:
                parity = export_checkpoint(path, max_length=self.max_length, log=logger.info)
            except Exception as err:  # noqa: BLE001 - any export failure falls back to torch, loudly
                if backend != "auto":
                    raise
                logger.warning("ONNX export of %s failed (%s); using torch", checkpoint, err)
        self.choice = choose_backend(backend, self.device.type, parity)
        self.backend = self.choice.name
        self.precision = resolve_precision(precision, self.device.type) if self.backend == "torch" else "fp32"
        self.runner: Runner
        if self.backend == "torch":
            self.runner = TorchRunner(path, self.device, self.precision, self.threads)
        else:
            from ynat_ray.checkpoint import ONNX_FP32_FILE, ONNX_INT8_FILE, export_cache_dir

            file = ONNX_INT8_FILE if self.backend == "onnx-int8" else ONNX_FP32_FILE
            self.runner = OrtRunner(os.path.join(export_cache_dir(path), file), self.threads)
        if max_length is not None and max_length > self.max_length:
            self.choice = BackendChoice(self.backend, f"{self.choice.reason}; --max_length {max_length} capped at {self.max_length}")

    def describe(self) -> dict[str, Any]:
        """What runs: for logs, /info and summaries."""
        return {
            "backend": self.backend,
            "backend_reason": self.choice.reason,
            "precision": self.precision,
            "device": self.device.type,
            "threads": self.threads,
            "max_length": self.max_length,
        }

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids and attention mask for one batch (the project's one tokenize-and-pad path)."""
        from ynat_ray.features import encode_texts

        return encode_texts(self.tokenizer, texts, self.max_length, return_tensors="np")

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts (for requests that refuse truncation).

        `verbose=False`: counting a long text is the point here, so transformers' "Token indices sequence length is
        longer than the specified maximum" warning (which would land in the replica's log) says nothing useful."""
        return [len(ids) for ids in self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]

    def logits(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Raw classifier scores (before softmax), shape (len(texts), num_labels), float32, in input order.

        Texts are sorted by length first so each padded batch wastes little compute. Serving needs the
        raw scores too (TEI's `raw_scores`, pipeline's `function_to_apply`), so this is the one forward pass.
        """
        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.encode([texts[i] for i in idx])
            out[idx] = self.runner(enc["input_ids"], enc["attention_mask"])
        return out

    def probabilities(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Softmax scores, shape (len(texts), num_labels), in input order."""
        return softmax(self.logits(texts, batch_size))

    def __call__(self, texts: str | Sequence[str], top_k: int | None = 1) -> list[Any]:
        """pipeline-shaped output: a list with one dict per input (a list of dicts per input when top_k != 1)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        preds = format_predictions(self.probabilities(batch), self.id2label, top_k)
        return [p[0] for p in preds] if top_k == 1 else preds


def load_engine(engine: EngineArgs, *, cpus: float | None = None, gpus: float = 0.0) -> TextClassifier:
    """The one way every role builds its engine from its `EngineArgs` and the resources that role was given:
    a Serve replica's `replica_cpus`/`replica_gpus`, a batch actor's `actor_cpus`/`actor_gpus`, predict's
    `--threads`/`--use_gpu`. One intra-op thread per reserved CPU (None: every CPU this process may use), so
    replicas and actors sharing a machine do not oversubscribe it."""
    return TextClassifier(
        engine.checkpoint or "", backend=engine.backend, use_gpu=gpus > 0, precision=engine.precision,
        max_length=engine.max_length, threads=threads_for(cpus),
    )  # fmt: skip
