"""bench/gpu_check.py runs once on a lent GPU machine, so its CPU dry run is tested here: the same three steps
(TorchTrainer fit, a Serve replica answering /predict, predict-batch) through the same code, on the session
cluster, so the script cannot rot between GPU loans.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def load_script() -> ModuleType:
    """Import bench/gpu_check.py by path (bench/ is not a package). Done inside the test: the script imports
    ray lazily, and ray must not be imported before conftest has started the token-auth cluster."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_cpu_dry_run_runs_all_three_steps(ray_session, tmp_path: Path) -> None:
    import ray
    from ray import serve

    from ynat_ray.labels import LABELS

    gpu_check = load_script()
    results = gpu_check.main(["--cpu-dry-run", "--out", str(tmp_path)])

    steps = results["steps"]
    assert list(steps) == ["train", "serve", "batch"]
    for name, step in steps.items():
        assert step["ok"] and step["error"] is None, f"step {name} failed: {step['error']}\n{step['traceback']}"

    train = steps["train"]
    assert train["samples_per_s"] > 0
    assert train["mfu"] == "n/a (CPU)"
    assert train["steps_run"] == results["plan"]["steps"]

    serving = steps["serve"]
    expected_requests = results["plan"]["latency_requests"] + results["plan"]["burst_requests"]
    assert serving["status_codes"] == {200: expected_requests}
    assert sorted(serving["labels"]) == sorted(LABELS)  # every answer lists all 7 Korean topics
    assert serving["backend"] and serving["p50_ms"] > 0 and serving["texts_per_s"] > 0

    batch = steps["batch"]
    assert batch["rows"] == batch["rows_read"] == batch["input_rows"] == results["plan"]["batch_rows"]
    assert batch["quarantined"] == 0 and batch["rows_per_s"] > 0

    table = Path(results["files"]["markdown"]).read_text(encoding="utf-8")
    assert "| step | what | figure(s) | seconds |" in table and "ERROR" not in table
    assert "n/a (CPU)" in table
    saved = json.loads(Path(results["files"]["json"]).read_text(encoding="utf-8"))
    assert {name: step["ok"] for name, step in saved["steps"].items()} == {"train": True, "serve": True, "batch": True}

    # Ray left as found: still connected (the fixture's driver), the script's Serve app gone.
    assert ray.is_initialized()
    assert "gpu-check" not in serve.status().applications
