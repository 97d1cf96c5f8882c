"""The benchmarks stay runnable: every bench/ script imports against the current package.

bench/train_throughput.py once imported a helper that a refactor had renamed, and nothing noticed; the
timings themselves belong in bench/, never in tests.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCH.glob("*.py")))
def test_bench_script_imports(script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # how `python bench/<script>.py` resolves its sibling imports
    module = importlib.import_module(script)
    if '__name__ == "__main__"' in (BENCH / f"{script}.py").read_text(encoding="utf-8"):  # a script, not a helper
        assert callable(getattr(module, "main", None)), f"bench/{script}.py has no main()"
    sys.modules.pop(script, None)
