"""bench/gpu_check.py runs once on a lent GPU machine, so it is tested here, where there is no GPU:

- every command line it runs parses with that command's own options, and the GPU plan asks for the GPU in each
  (a renamed flag would otherwise surface only on the next GPU loan);
- its CPU dry run runs the same `ynat-ray` commands end to end, on the session cluster (RAY_ADDRESS).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """bench/gpu_check.py, imported as `python bench/gpu_check.py` resolves it (bench/ first on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    yield gpu_check
    sys.modules.pop("gpu_check", None)


def parsed(argv: list[str]) -> object:
    """The command config `ynat-ray ARGV` would run with (the CLI's `--json` is evaluate's one extra flag)."""
    from ynat_ray.config import COMMAND_CONFIGS, build_parser, parse_command

    cls = next(c for c in COMMAND_CONFIGS if c.command == argv[0])
    parser = build_parser(cls)
    parser.add_argument("--json", action="store_true")
    return parse_command(cls, argv[1:], parser)[0]


@pytest.mark.parametrize("mode", ["gpu", "dry_run"])
def test_every_command_line_parses_and_the_gpu_plan_uses_the_gpu(gpu_check: ModuleType, mode: str, tmp_path: Path) -> None:
    plan = gpu_check.PLANS[mode]
    cfgs = {name: parsed(argv) for name, argv in gpu_check.commands(plan, str(tmp_path), "/ckpt", 8123).items()}
    assert list(cfgs) == list(gpu_check.STEPS)
    gpu = mode == "gpu"
    assert cfgs["train"].train.use_gpu is gpu and cfgs["train"].train.num_workers == 1
    assert cfgs["train"].model.model == plan.model and cfgs["train"].data.max_train_samples == plan.train_rows
    assert cfgs["serve"].serve.replica_gpus == (1.0 if gpu else 0.0) and cfgs["serve"].serve.port == 8123
    assert cfgs["serve"].serve.min_replicas == cfgs["serve"].serve.max_replicas == 1
    assert cfgs["predict-batch"].batch.actor_gpus == (1.0 if gpu else 0.0) and cfgs["predict-batch"].batch.overwrite
    assert cfgs["evaluate"].local.use_gpu is gpu
    assert {cfg.engine.checkpoint for name, cfg in cfgs.items() if name != "train"} == {"/ckpt"}


def test_cpu_dry_run_runs_every_command(gpu_check: ModuleType, ray_session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ynat_ray.labels import LABELS
    from ynat_ray.serving.ingress import serve_running

    monkeypatch.setenv("RAY_ADDRESS", ray_session.address)  # the commands join the session cluster, not 4 new ones
    results = gpu_check.main(["--dry_run", "--out", str(tmp_path)])
    assert not serve_running(), "a SIGTERMed `ynat-ray serve` must leave no Serve behind on the cluster it joined"

    steps, plan = results["steps"], results["plan"]
    assert list(steps) == ["train", "serve", "predict-batch", "evaluate"]
    for name, step in steps.items():
        assert step["ok"], f"step {name} failed: {step['error']}\n{step['output_tail']}"
        assert step["command"].startswith(f"ynat-ray {name} ") and step["seconds"] > 0

    train = steps["train"]["figures"]
    assert train["device"] == "cpu" and train["samples_per_s"] > 0 and 0 <= train["macro_f1"] <= 1
    serving = steps["serve"]["figures"]
    assert serving["status_codes"] == {200: plan["burst_requests"]}
    assert serving["labels"] == sorted(LABELS)  # every answer scored all 7 Korean topics
    assert serving["p50_ms"] > 0 and serving["texts_per_s"] > 0 and serving["device"] == "cpu"
    batch = steps["predict-batch"]["figures"]
    assert batch["rows"] == batch["rows_read"] == plan["batch_rows"] and batch["quarantined"] == 0 and batch["rows_per_s"] > 0
    assert 0 <= steps["evaluate"]["figures"]["macro_f1"] <= 1

    table = Path(results["files"]["markdown"]).read_text(encoding="utf-8")
    assert "| step | command | figures | seconds |" in table and "ERROR" not in table
    saved = json.loads(Path(results["files"]["json"]).read_text(encoding="utf-8"))
    assert all(step["ok"] for step in saved["steps"].values())
