"""The backends the engine runs, below the engine and the exporter: padded token ids in, float32 logits out.

Why a module of its own: the inference engine (`inference.TextClassifier`) runs these, and the ONNX export's
parity check (`export.check_parity`) must run exactly the same code to vouch for it; with the runners in either
of the two, each would import the other.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]  # see ort_session


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, shifted by the row max so large logits cannot overflow."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class Runner(Protocol):
    """A backend: padded token ids in, float32 logits out."""

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray: ...


class TorchRunner:
    """The Hugging Face model under inference_mode (bf16 autocast where the hardware has bf16 units).

    `threads` sets torch's process-wide intra-op thread count on CPU; None leaves it as it is (the parity
    check runs inside replicas and actors that have set it already)."""

    def __init__(self, path: str, device: Any, precision: str, threads: int | None):
        import torch

        from ynat_ray.modeling import load_classifier

        if device.type == "cpu" and threads is not None:
            torch.set_num_threads(threads)
        self.torch, self.device, self.precision = torch, device, precision
        self.model = load_classifier(path).to(device)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        from ynat_ray.precision import autocast

        torch = self.torch
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            ids = torch.from_numpy(input_ids).to(self.device)
            mask = torch.from_numpy(attention_mask).to(self.device)
            return self.model(input_ids=ids, attention_mask=mask).logits.float().cpu().numpy()


class OrtRunner:
    """An ONNX Runtime session over the exported graph (fp32 or int8)."""

    def __init__(self, onnx_path: str, threads: int):
        self.session = ort_session(onnx_path, threads)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": input_ids.astype(np.int64, copy=False), "attention_mask": attention_mask.astype(np.int64, copy=False)}
        return self.session.run(["logits"], feed)[0].astype(np.float32, copy=False)


def ort_session(path: str, threads: int) -> Any:
    """A CPU InferenceSession: `threads` intra-op threads, one inter-op thread, sequential, all graph optimisations
    but one.

    SkipLayerNormFusion off: ORT 1.31's fused CPU SkipLayerNormalization kernel was slower than the
    Add + LayerNormalization it replaces, and outputs are unchanged (parity checks it).
    Spinning off: idle intra-op workers otherwise busy-wait between runs, burning a whole core per thread
    that another replica, the HTTP proxy or tokenization needs; spinning bought speed only at batch 1, at
    more CPU per title. With threads=1 (Serve's default) there is no pool to spin. (docs/engine.md has the
    measurements.)
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS)
