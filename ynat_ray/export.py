"""ONNX Runtime exports of a checkpoint (fp32 and dynamic int8) and the parity record that vouches for them.

Why ONNX Runtime: on CPU, a YNAT title is a few dozen tokens at most, so a forward pass is a few small matmuls
and torch's per-op overhead dominates. ORT runs single titles (a Serve replica's usual case) several times
faster than torch, and int8 weights cut the CPU per title further (docs/engine.md has the measurements).
Why a parity record (`parity.json`): a faster engine is only used where it was shown, on real validation
rows and on this machine's kernels, to give the same answers; `inference.choose_backend` reads it.

Files live where `checkpoint.export_cache_dir` says (beside the checkpoint, or a cache keyed by the weights'
content hash). Every file is written to a temporary name and renamed into place, and exports into one
directory are serialised by a lock on it, because several Serve replicas may start on one checkpoint at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ynat_ray.checkpoint import (
    ONNX_FP32_FILE,
    ONNX_INT8_FILE,
    PARITY_FILE,
    content_hash,
    export_cache_dir,
    inference_max_length,
    read_run_spec,
)
from ynat_ray.cpu import cpu_flags, threads_for
from ynat_ray.errors import YnatError
from ynat_ray.features import encode_texts
from ynat_ray.metrics import classification_metrics
from ynat_ray.runners import OrtRunner, Runner, TorchRunner, softmax

FP32_MAX_ABS_DIFF = 1e-4  # softmax probabilities, ONNX fp32 vs torch fp32
INT8_MIN_AGREEMENT = 0.99  # share of int8 labels equal to the torch fp32 labels
INT8_MAX_F1_DROP = 0.005  # int8 macro-F1 may be at most this much below fp32 macro-F1
PARITY_BATCH = 64
# The ISA flags that decide int8 kernels; recorded in parity.json so a record can be judged on another host.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
SETTINGS_KEYS = ("weight_type", "reduce_range", "per_channel", "op_types")  # what the int8 file depends on
# Only the linear layers. ORT's default also quantizes the embedding tables (Gather): no faster (a lookup
# is not arithmetic), and less accurate (docs/engine.md).
INT8_OP_TYPES = ("MatMul",)


# ---------------------------------------------------------------------------------------------
# int8 settings from the CPU


def int8_settings(flags: frozenset[str] | set[str] | None = None) -> dict[str, Any]:
    """Dynamic-quantization settings for the CPU we run on (`flags` defaults to this host's /proc/cpuinfo).

    ORT's x86 U8S8 kernel (uint8 activations x int8 weights) on AVX2/AVX-512 without VNNI multiplies with
    VPMADDUBSW, which adds pairs of products into int16 and saturates; VNNI (VPDPBUSD) adds into int32.
    So: VNNI -> int8 weights at full range (exact, fastest). No VNNI -> int8 weights with reduce_range:
    7-bit weights keep a pair of products inside int16 (2 x 255 x 64 < 32767), so nothing saturates.
    Under an emulated no-VNNI CPU, full-range U8S8 lost VNNI's exactness, while U8S8 + reduce_range gave
    outputs bit-identical to VNNI's; U8U8 (uint8 weights) was as exact but a slower kernel, and per-channel
    scales agreed no better (docs/engine.md, "Export and parity", has the measurements).
    No /proc/cpuinfo (macOS): the no-VNNI choice, which is exact on every kernel.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    isa = {name: name in flags for name in ISA_FLAGS}
    common = {"per_channel": False, "op_types": list(INT8_OP_TYPES), "isa": isa}
    if isa["avx512_vnni"] or isa["avx_vnni"]:
        return {"weight_type": "QInt8", "reduce_range": False, **common, "reason": "VNNI: U8S8 at full range is exact and fastest"}
    return {
        "weight_type": "QInt8",
        "reduce_range": True,
        **common,
        "reason": "no VNNI: U8S8 with 7-bit weights, so VPMADDUBSW cannot saturate",
    }


def _settings_key(settings: dict[str, Any]) -> dict[str, Any]:
    return {key: settings.get(key) for key in SETTINGS_KEYS}


# ---------------------------------------------------------------------------------------------
# Export and quantization


@contextlib.contextmanager
def _atomic_path(final: str) -> Iterator[str]:
    """A unique temporary name beside `final`, renamed over it when the block succeeds, removed when it fails.

    Readers (other replicas) see the old file or the complete new one, never a half-written graph. Not
    mkstemp: its 0600 mode would survive the rename and lock other users out of a shared cache.
    """
    tmp = f"{final}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's chatter for one export, on purpose.

    The dynamo exporter logs a "torchvision is not installed" line per vision op, warns about a torch-internal
    pytree deprecation and about axis names it merges (input_ids and attention_mask share batch/sequence,
    which is what we want). None of it is actionable here, and in Serve it lands in every replica's log.
    What guards the graph is not a warning but `check_parity`, which compares it with torch on real rows.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(checkpoint_dir: str, out_path: str, max_length: int) -> str:
    """Export the checkpoint's sequence classifier to ONNX fp32 at `out_path`; return the path.

    Inputs `input_ids` and `attention_mask` (int64, [batch, sequence]), output `logits` ([batch, labels]).
    The torch.export-based exporter (dynamo=True, torch's default since 2.9) with `dynamic_shapes`: the
    legacy TorchScript tracer bakes transformers' Python-side mask checks in as constants (TracerWarnings)
    and gives a much larger graph. Opset: the exporter's default (20 in torch 2.13), which has
    native LayerNormalization and Gelu. One file, no external data: a 2 GB-free model needs none, and one
    file can be renamed atomically.
    """
    import torch

    from ynat_ray.modeling import load_classifier

    # Plain autograd mode even when called under inference_mode (torch.export cannot trace inference tensors).
    with torch.inference_mode(False):
        return _export(load_classifier(checkpoint_dir), out_path, max_length)


def _export(model: Any, out_path: str, max_length: int) -> str:
    import torch

    class Logits(torch.nn.Module):
        """Positional inputs and a plain tensor output, so the graph's names are exactly ours."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.net(input_ids=input_ids, attention_mask=attention_mask).logits

    # Example: batch 2 (size 1 would be specialised), one row padded, so the traced graph is the padded-batch one.
    seq = max(2, min(8, max_length))
    input_ids = torch.full((2, seq), 5, dtype=torch.long)
    attention_mask = torch.ones((2, seq), dtype=torch.long)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    input_ids[1, seq // 2 :] = pad_id
    attention_mask[1, seq // 2 :] = 0
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=max(seq, max_length))
    shapes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with _atomic_path(out_path) as tmp, _quiet_exporter():
        torch.onnx.export(
            Logits(model).eval(),
            (input_ids, attention_mask),
            tmp,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return out_path


def quantize_int8(fp32_path: str, int8_path: str, settings: dict[str, Any]) -> str:
    """Dynamic int8 quantization of the fp32 graph's linear layers (weights int8, activations at run time).

    `quant_pre_process` first (symbolic shape inference and ORT's basic optimisations), as ORT advises;
    here it is required: `quantize_dynamic` on the dynamo graph as exported fails ONNX shape inference
    ("Inferred shape and existing shape differ in dimension 0: (128) vs (7)"). After it, every linear layer
    of the encoder and the classification head is int8; attention's activation x activation products stay fp32.
    """
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    os.makedirs(os.path.dirname(os.path.abspath(int8_path)), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(int8_path))) as work, _atomic_path(int8_path) as tmp:
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(fp32_path, prepared)
        quantize_dynamic(
            prepared,
            tmp,
            op_types_to_quantize=list(settings.get("op_types") or INT8_OP_TYPES),
            weight_type=QuantType[settings["weight_type"]],
            reduce_range=bool(settings["reduce_range"]),
            per_channel=bool(settings["per_channel"]),
        )
    return int8_path


# ---------------------------------------------------------------------------------------------
# Parity


def check_parity(
    checkpoint_dir: str, onnx_dir: str, texts: Sequence[str], labels: Sequence[int] | None, max_length: int, threads: int
) -> dict[str, Any]:
    """Compare torch fp32, ONNX fp32 and ONNX int8 on the same padded batches of `texts`; return the record.

    fp32 passes when no softmax probability differs from torch's by more than FP32_MAX_ABS_DIFF. int8 passes
    when its labels agree with torch fp32 on at least INT8_MIN_AGREEMENT of rows and (with gold `labels`) its
    macro-F1 is at most INT8_MAX_F1_DROP below fp32's. `threads` sizes the ORT sessions.
    """
    import onnxruntime as ort
    import torch

    if not texts:
        raise YnatError("the ONNX parity check needs at least one validation row, and the validation data has none")
    probs = _parity_probabilities(checkpoint_dir, onnx_dir, texts, max_length, threads)
    record: dict[str, Any] = {"rows": len(texts), "max_length": int(max_length), "threads": int(threads), **_agreement(probs)}
    f1_ok = True
    if labels is not None:
        record.update(_label_scores(labels, probs))
        f1_ok = record["int8_macro_f1"] >= record["fp32_macro_f1"] - INT8_MAX_F1_DROP
    record["fp32_ok"] = record["fp32_max_abs_diff"] <= FP32_MAX_ABS_DIFF
    record["int8_ok"] = bool(record["fp32_ok"] and record["int8_label_agreement"] >= INT8_MIN_AGREEMENT and f1_ok)
    record["thresholds"] = {
        "fp32_max_abs_diff": FP32_MAX_ABS_DIFF,
        "int8_min_agreement": INT8_MIN_AGREEMENT,
        "int8_max_f1_drop": INT8_MAX_F1_DROP,
    }
    record["content_hash"] = content_hash(checkpoint_dir)
    record["int8_settings"] = int8_settings()
    record["versions"] = {"torch": torch.__version__, "onnxruntime": ort.__version__}
    return record


def _parity_probabilities(checkpoint_dir: str, onnx_dir: str, texts: Sequence[str], max_length: int, threads: int) -> dict[str, np.ndarray]:
    """Softmax probabilities of torch fp32 ("torch"), ONNX fp32 ("onnx") and ONNX int8 ("int8"), in input order.

    Run by the engine's own runners (`inference.TorchRunner`, `OrtRunner`), so the record vouches for the code
    that serves. Torch's process-wide thread count is left alone (`threads=None`): this runs inside Serve
    replicas and batch actors that have set it already.
    """
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=False)
    runners: dict[str, Runner] = {
        "torch": TorchRunner(checkpoint_dir, torch.device("cpu"), "fp32", threads=None),
        "onnx": OrtRunner(os.path.join(onnx_dir, ONNX_FP32_FILE), threads),
        "int8": OrtRunner(os.path.join(onnx_dir, ONNX_INT8_FILE), threads),
    }
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    for start in range(0, len(texts), PARITY_BATCH):
        enc = encode_texts(tokenizer, texts[start : start + PARITY_BATCH], max_length, return_tensors="np")
        ids, mask = (np.asarray(enc[key], dtype=np.int64) for key in ("input_ids", "attention_mask"))
        for name, run in runners.items():
            chunks[name].append(softmax(run(ids, mask)))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _agreement(probs: dict[str, np.ndarray]) -> dict[str, float]:
    """How far each ONNX graph is from torch fp32: the largest probability difference and the label agreement."""
    torch_labels = probs["torch"].argmax(axis=-1)
    out: dict[str, float] = {}
    for name, key in (("onnx", "fp32"), ("int8", "int8")):
        out[f"{key}_max_abs_diff"] = float(np.abs(probs[name] - probs["torch"]).max())
        out[f"{key}_label_agreement"] = float((probs[name].argmax(axis=-1) == torch_labels).mean())
    return out


def _label_scores(labels: Sequence[int], probs: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy and macro-F1 of torch fp32 (recorded as "fp32") and ONNX int8 against the gold labels."""
    gold = np.asarray(labels, dtype=np.int64)
    out: dict[str, float] = {}
    for name, key in (("torch", "fp32"), ("int8", "int8")):
        metrics = classification_metrics(gold, probs[name].argmax(axis=-1))
        out[f"{key}_accuracy"], out[f"{key}_macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
    return out


# ---------------------------------------------------------------------------------------------
# The entry point


def load_parity(onnx_dir: str) -> dict[str, Any] | None:
    """The parity record in `onnx_dir`, or None when there is none (or it is unreadable: then export again)."""
    try:
        with open(os.path.join(onnx_dir, PARITY_FILE), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _up_to_date(onnx_dir: str, digest: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    record = load_parity(onnx_dir)
    files = all(os.path.exists(os.path.join(onnx_dir, name)) for name in (ONNX_FP32_FILE, ONNX_INT8_FILE))
    if (
        record
        and files
        and record.get("content_hash") == digest
        and _settings_key(record.get("int8_settings") or {}) == _settings_key(settings)
    ):
        return record
    return None


@contextlib.contextmanager
def _export_lock(onnx_dir: str) -> Iterator[None]:
    """One exporter per directory at a time: replicas starting together wait, then reuse the export.

    The lock is flock on the directory itself, so no lock file is left behind (or pushed to the hub).
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic renames still keep every file whole
        yield
        return
    fd = os.open(onnx_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def export_checkpoint(
    checkpoint_dir: str,
    *,
    texts: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    max_length: int | None = None,
    threads: int | None = None,
    force: bool = False,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Export a local checkpoint to ONNX fp32 + int8, check parity, write parity.json; return the record.

    Idempotent: when the export directory already holds both graphs and a parity record for these weights
    (content hash) and these int8 settings, that record is returned and nothing is written. `force=True`
    exports again. Defaults: the embedded validation rows, the trained max_length, all CPUs of this process.
    """
    settings = int8_settings()
    digest = content_hash(checkpoint_dir)
    onnx_dir = export_cache_dir(checkpoint_dir)
    if not force and (record := _up_to_date(onnx_dir, digest, settings)) is not None:
        log(f"[ynat-ray] onnx: up to date in {onnx_dir} (hash {digest}, int8 {'ok' if record.get('int8_ok') else 'FAILED parity'})")
        return record
    os.makedirs(onnx_dir, exist_ok=True)
    with _export_lock(onnx_dir):
        # Another replica may have finished the export while we waited for the lock.
        if not force and (record := _up_to_date(onnx_dir, digest, settings)) is not None:
            log(f"[ynat-ray] onnx: exported meanwhile by another process, in {onnx_dir}")
            return record
        if texts is None:
            texts, labels = _embedded_validation()
        if max_length is None:
            max_length = _trained_max_length(checkpoint_dir)
        record = _export_and_check(checkpoint_dir, onnx_dir, settings, list(texts), labels, max_length, threads_for(threads))
    log(_summary(record))
    return record


def _embedded_validation() -> tuple[list[str], list[int]]:
    """The embedded validation rows: what parity is checked on when the caller brings none."""
    from ynat_ray.data.sources import embedded_split

    rows = embedded_split("validation")
    return rows["title"].tolist(), rows["label"].tolist()


def _trained_max_length(checkpoint_dir: str) -> int:
    """The max_length inference uses for this checkpoint (its run spec's, else its tokenizer's and model's limits)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(checkpoint_dir, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=False)
    return inference_max_length(read_run_spec(checkpoint_dir), config, tokenizer, None)


def _export_and_check(
    checkpoint_dir: str, onnx_dir: str, settings: dict[str, Any], texts: list[str], labels: Sequence[int] | None, max_length: int,
    threads: int,
) -> dict[str, Any]:  # fmt: skip
    """Both graphs, their parity record and parity.json, written into `onnx_dir` (under the caller's lock)."""
    started = time.perf_counter()
    fp32_path = export_onnx(checkpoint_dir, os.path.join(onnx_dir, ONNX_FP32_FILE), max_length)
    quantize_int8(fp32_path, os.path.join(onnx_dir, ONNX_INT8_FILE), settings)
    record = check_parity(checkpoint_dir, onnx_dir, texts, labels, max_length, threads)
    record["onnx_dir"] = onnx_dir
    record["export_s"] = round(time.perf_counter() - started, 2)
    with _atomic_path(os.path.join(onnx_dir, PARITY_FILE)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh, ensure_ascii=False, indent=2)
    return record


def _summary(record: dict[str, Any]) -> str:
    """One log line: where the export went and whether each graph passed parity."""
    return (
        f"[ynat-ray] onnx: exported to {record['onnx_dir']} in {record['export_s']:.1f}s; fp32 max|dp| "
        f"{record['fp32_max_abs_diff']:.1e} ({'ok' if record['fp32_ok'] else 'FAILED'}), int8 agreement "
        f"{record['int8_label_agreement']:.2%} ({'ok' if record['int8_ok'] else 'FAILED'}) on {record['rows']} rows"
    )
