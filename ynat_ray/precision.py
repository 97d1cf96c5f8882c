"""Choosing fp32 or bf16 autocast, and the device, in one place.

Why: bf16 autocast pays off only where the hardware has bf16 matrix units (NVIDIA Ampere+ GPUs, Intel
CPUs with AMX or AVX512-BF16). Elsewhere (for example AVX2-only AMD EPYC) oneDNN emulates it and it is
slower than fp32, so 'auto' must look at the hardware instead of assuming.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ynat_ray.cpu import has_native_bf16


def resolve_precision(precision: str, device_type: str) -> str:
    """'auto' -> 'bf16' or 'fp32' for this device; explicit values pass through."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if has_native_bf16() else "fp32"


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for bf16, a no-op for fp32."""
    if precision == "bf16":
        import torch

        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_device(use_gpu: bool | None = None) -> Any:
    """cuda when asked for (or available, if None), else cpu."""
    import torch

    if use_gpu or (use_gpu is None and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
