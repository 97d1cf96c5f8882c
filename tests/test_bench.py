"""The benchmarks stay runnable and proportionate: every bench/ script imports against the current package, shares
bench/common.py instead of restating it, and names no machine's paths.

bench/train_throughput.py once imported a helper that a refactor had renamed, and nothing noticed; the
timings themselves belong in bench/, never in tests.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))


def source(script: str) -> str:
    return (BENCH / f"{script}.py").read_text(encoding="utf-8")


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))  # how `python bench/<script>.py` resolves its sibling imports


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_imports(script: str, bench_path: None) -> None:
    module = importlib.import_module(script)
    if '__name__ == "__main__"' in source(script):  # a script, not a helper
        assert callable(getattr(module, "main", None)), f"bench/{script}.py has no main()"
    sys.modules.pop(script, None)


def test_one_yardstick_and_no_machine_paths() -> None:
    """The TF-IDF yardstick's classifier is defined once (bench/tfidf_baseline.py); inputs are arguments and scratch
    space is temporary, so no script names a machine's directories or other people's processes."""
    for script in SCRIPTS:
        text = source(script)
        if script != "tfidf_baseline":
            assert not re.search(r"LogisticRegression\(|LinearSVC\(", text), f"bench/{script}.py defines its own linear classifier"
        assert not re.search(r"/work/|/tmp/work|/root/|pgrep|/proc/cpuinfo", text), f"bench/{script}.py names a machine path or process"


def test_common_helpers(bench_path: None, tmp_path: Path) -> None:
    import common

    port = common.free_port()
    assert 0 < port < 65536
    assert common.wait_quiet(below=float("inf")) < 1.0  # a machine under any load average is quiet enough: no wait
    assert common.parse_models([f"tiny={tmp_path}"]) == {"tiny": str(tmp_path)}
    for bad in ("tiny", f"={tmp_path}", f"tiny={tmp_path / 'missing'}"):
        with pytest.raises(SystemExit):
            common.parse_models([bad])
    path = common.write_results("demo", {"텍스트": 1}, tmp_path, started=1234.5, suffix="_partial")
    assert path.name == "demo_1234_partial.json" and json.loads(path.read_text(encoding="utf-8")) == {"텍스트": 1}
    machine = common.machine()
    assert machine["usable_cpus"] >= 1 and set(machine["flags"]) == set(common.CPU_FLAGS)
