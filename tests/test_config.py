"""Options grouped per command (`ynat_ray.config`): what each command takes, YAML files shared between
commands, recipes, and the CPU plans built from them. Pure functions: no Ray cluster."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from ynat_ray.config import (
    COMMAND_CONFIGS,
    BatchConfig,
    ServeConfig,
    TrainConfig,
    UsageError,
    build_parser,
    commands_taking,
    option_names,
    parse_command,
)
from ynat_ray.resources import PlacementError, plan_workers


def test_no_command_takes_two_groups_sharing_an_option() -> None:
    """A name may sit in several groups (precision trains and infers) but never twice in one command."""
    for command in COMMAND_CONFIGS:
        names = [name for group in command.groups().values() for name in option_names(group)]
        assert len(names) == len(set(names)), command.command


def test_every_option_has_help_and_an_owner() -> None:
    for command in COMMAND_CONFIGS:
        helps = [a.help for a in build_parser(command)._actions if a.dest != "help"]
        assert all(helps), f"{command.command}: every option has help text"
    assert commands_taking("port") == ["serve"] and commands_taking("text_column") == [
        "train",
        "tune",
        "evaluate",
        "predict-batch",
        "export",
    ]
    assert commands_taking("nope") == []


def test_config_file_and_flags_share_one_object(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nmodel: klue/roberta-base\nnum_workers: 4\nport: 9000\n")
    cfg, _ = parse_command(TrainConfig, ["--config", str(path), "--epochs", "2", "--use_gpu"])
    assert (cfg.train.epochs, cfg.model.model, cfg.train.num_workers, cfg.train.use_gpu) == (2, "klue/roberta-base", 4, True)
    serve, _ = parse_command(ServeConfig, ["--config", str(path)])  # the same file: serve takes its port, leaves the rest
    assert serve.serve.port == 9000
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(UsageError, match="unknown option"):
        parse_command(TrainConfig, ["--config", str(bad)])
    assert TrainConfig.of(storage_path="relative/dir").train.resolved_storage_path().startswith("/")
    assert TrainConfig.of(storage_path="s3://bucket/runs").train.resolved_storage_path() == "s3://bucket/runs"


def test_of_refuses_another_commands_option() -> None:
    with pytest.raises(UsageError, match="--port is an option of `ynat-ray serve`, not of `ynat-ray predict-batch`"):
        BatchConfig.of(port=1)
    cfg = BatchConfig.of(checkpoint="c", input="i", output="o", text_column="body", num_actors=2)
    assert (cfg.engine.checkpoint, cfg.rows.text_column, cfg.batch.num_actors) == ("c", "body", 2)


def test_run_spec_records_data_model_train_and_distillation_only() -> None:
    spec = TrainConfig.of(epochs=2, max_length=48, teacher="linear").run_spec_config()
    assert set(spec) == {"data", "model", "train", "distill"} and spec["distill"]["teacher"] == "linear"
    assert spec["model"]["max_length"] == 48 and spec["train"]["epochs"] == 2
    flat = {k for group in spec.values() for k in group}
    assert not flat & {"port", "host", "num_actors", "checkpoint", "max_batch_size"}


def test_recipes_fill_only_what_the_user_left_open() -> None:
    default = TrainConfig.of(epochs=2).with_recipe()
    assert default.model.model == "ynat-bigram" and default.train.epochs == 2 and default.train.learning_rate > 1e-4
    assert default.model.hidden_dropout is not None and default.model.vocab_size == 16000
    tiny = TrainConfig.of(model="ynat-tiny", vocab_size=2000).with_recipe()
    assert tiny.model.vocab_size == 2000 and tiny.train.epochs == 7, "each preset has its own tuned recipe; a given value wins"
    roberta = TrainConfig.of(model="klue/roberta-base").with_recipe()
    assert roberta.train.learning_rate == 5e-5 and roberta.model.hidden_dropout is None and roberta.train.token_dropout == 0.0
    assert asdict(TrainConfig().model)["model"] == "ynat-bigram"


def test_cpu_plan_leaves_room_for_ray_data() -> None:
    plan = plan_workers(2, 2.0)
    assert plan.cpus_per_worker * 2 + plan.data_reserve_cpus <= 2.0 and plan.torch_threads == 1
    # a tokenize task (Ray Data's default asks for 1 CPU) must fit beside the workers, or streaming hangs
    assert plan.data_task_cpus <= 2.0 - plan.cpus_per_worker * 2
    assert plan_workers(1, 16.0).cpus_per_worker == 14.0
    assert plan_workers(4, 8.0, use_gpu=True).resources() == {"CPU": 1.0, "GPU": 1}
    with pytest.raises(PlacementError, match="no CPU for Ray Data"):
        plan_workers(2, 2.0, cpus_per_worker=1.0)


def test_cpu_plan_fits_the_nodes_not_the_cluster_total() -> None:
    """3 nodes of 1 CPU: a plan over the total (3 CPUs) asked for 2 x 1.12 CPU, which no node holds, and hung."""
    from ynat_ray.resources import fits, largest_fitting_share

    plan = plan_workers(2, [1.0, 1.0, 1.0])
    assert plan.cpus_per_worker == 1.0 and fits([1.0, 1.0, 1.0], 2, plan.cpus_per_worker, plan.data_task_cpus)
    # Two 1.5-CPU nodes, 2 workers: the total's share (1.12) would leave no node room for a Data task; 0.75 does.
    plan = plan_workers(2, [1.5, 1.5])
    assert plan.cpus_per_worker == 0.75 and fits([1.5, 1.5], 2, plan.cpus_per_worker, plan.data_task_cpus)
    # One machine: the plan is what it always was.
    assert plan_workers(2, [2.0]) == plan_workers(2, 2.0)
    # A Tune trial's budget caps the share, and STRICT_SPREAD needs a node per worker.
    assert plan_workers(1, [4.0, 4.0], budget=2.0).cpus_per_worker == 1.5
    assert largest_fitting_share([1.0], 2, 0.5, 0.25, spread=True) == 0.5  # nothing fits: wait_for_placement says so
