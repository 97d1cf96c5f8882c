"""What this host's CPUs are and how many this process may use: the one reader of `/proc/cpuinfo` and of
the affinity mask.

Why one module: bf16 autocast (`precision`), the int8 quantization settings (`export`), the engine's thread
count (`inference`) and the benchmarks' machine description all decide from the same facts; decided from
constants instead, an AVX2-only machine ran bf16 several times slower than fp32 (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:  # no /proc/cpuinfo (macOS)
        pass
    return model, flags


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this host (empty where there is no /proc/cpuinfo, e.g. macOS)."""
    return _cpuinfo()[1]


def cpu_model() -> str:
    """The CPU model name ('' where unknown)."""
    return _cpuinfo()[0]


def has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX or AVX512-BF16); elsewhere oneDNN emulates bf16 slowly."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which Ray, containers and `taskset` narrow), not the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_for(cpus: float | None) -> int:
    """Intra-op threads for a process given `cpus` CPUs (a Serve replica, a Ray Data actor): at least 1;
    None: every CPU this process may use."""
    return available_cpus() if cpus is None else max(1, round(cpus))
