"""Loading a trained checkpoint and predicting, shared by `ynat-ray predict/evaluate`, Serve and batch jobs.

Why not `transformers.pipeline` everywhere: the serving and batch paths need dynamic padding over
length-sorted batches, bf16 autocast where the hardware has it and `torch.inference_mode()`, and all
three must give the same answers. Outputs keep the pipeline's shape: `[{'label': '경제', 'score': 0.97}]`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ynat_ray.precision import autocast, pick_device, resolve_precision


def resolve_checkpoint(checkpoint: str) -> str:
    """A local directory as is; a URI (s3://, gs://, ...) downloaded to a local directory; else a hub id."""
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        import ray.train

        return ray.train.Checkpoint(checkpoint).to_directory()
    local = checkpoint.removeprefix("file://")
    return local if os.path.isdir(local) else checkpoint


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by the row max so large logits cannot overflow."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def format_predictions(probs: np.ndarray, id2label: dict[int, str], top_k: int | None = 1) -> list[list[dict[str, Any]]]:
    """Per input, the top_k labels (all 7 when None) with scores, best first, like pipeline(top_k=...)."""
    k = probs.shape[1] if top_k is None else max(1, min(top_k, probs.shape[1]))
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[{"label": id2label[int(j)], "score": float(row[j])} for j in idx] for row, idx in zip(probs, order)]


class TextClassifier:
    """A checkpoint's tokenizer and model, loaded once, predicting in dynamically padded batches."""

    def __init__(self, checkpoint: str, *, use_gpu: bool | None = None, precision: str = "auto", max_length: int | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ynat_ray.modeling import ModelLoadError, load_advice

        self.source = checkpoint
        self.path = path = resolve_checkpoint(checkpoint)  # a local directory, or the hub id as given
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False)
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(load_advice(checkpoint, err)) from err
        self.device = pick_device(use_gpu)
        self.precision = resolve_precision(precision, self.device.type)
        self.model.to(self.device).eval()
        config = self.model.config
        limit = config.max_position_embeddings - (config.pad_token_id + 1 if config.model_type == "roberta" else 0)
        self.max_length = min(x for x in (max_length, self.tokenizer.model_max_length, limit) if x)
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.labels = [self.id2label[i] for i in range(len(self.id2label))]

    def encode(self, texts: Sequence[str]) -> dict[str, Any]:
        """Tokenize with truncation and padding to the longest text in this batch only."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def logits(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Raw classifier scores (before softmax), shape (len(texts), num_labels), float32, in input order.

        Texts are sorted by length first so each padded batch wastes little compute. Serving needs the
        raw scores too (TEI's `raw_scores`, pipeline's `function_to_apply`), so this is the one forward pass.
        """
        import torch

        texts = list(texts)
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                out[idx] = self.model(**self.encode([texts[i] for i in idx])).logits.float().cpu().numpy()
        return out

    def probabilities(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Softmax scores, shape (len(texts), num_labels), in input order."""
        return softmax(self.logits(texts, batch_size))

    def __call__(self, texts: str | Sequence[str], top_k: int | None = 1) -> list[Any]:
        """pipeline-shaped output: a list with one dict per input (a list of dicts per input when top_k != 1)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        preds = format_predictions(self.probabilities(batch), self.id2label, top_k)
        return [p[0] for p in preds] if top_k == 1 else preds
