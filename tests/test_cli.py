"""User mistakes on the command line: one line `ynat-ray: error: ...`, exit status 2, no traceback.

Real `ynat-ray` processes (`python -m ynat_ray.cli`); every case here fails before Ray or a model would
start, so the module needs no cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str | bytes, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("YNAT_RAY_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "ynat_ray.cli", *args], capture_output=True, env=env, cwd=cwd, timeout=120)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The single error line; fails on a traceback, extra output or another exit status."""
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ynat-ray: error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    bad_rows = root / "bad.jsonl"
    rows = [{"title": "코스피 상승 마감", "label": "경제"}, {"title": "", "label": "경제"}]
    bad_rows.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("epochs: [1, 2\n", encoding="utf-8")
    unknown_key = root / "unknown.yaml"
    unknown_key.write_text("epochs: 1\nepoch_count: 3\n", encoding="utf-8")
    (root / "runs").mkdir()
    return {"root": root, "bad_rows": bad_rows, "bad_yaml": bad_yaml, "unknown_key": unknown_key}


def test_missing_input_file_or_directory(files: dict[str, Path]) -> None:
    output = str(files["root"] / "o")
    line = one_line_error(run_cli("predict-batch", "--checkpoint", "x", "--input", "/nope/news.jsonl", "--output", output))
    assert "no such file or directory: /nope/news.jsonl" in line
    line = one_line_error(run_cli("evaluate", "--checkpoint", "x", "--test_data", str(files["root"] / "missing_dir")))
    assert "missing_dir" in line


def test_bad_checkpoint_path_says_it_does_not_exist(files: dict[str, Path]) -> None:
    line = one_line_error(run_cli("predict", "--checkpoint", "/nope/checkpoint_000004", "코스피 상승 마감"))
    assert line == "ynat-ray: error: checkpoint directory /nope/checkpoint_000004 does not exist"
    line = one_line_error(run_cli("predict", "--checkpoint", "runs/ckpt", "코스피 상승 마감", cwd=files["root"]))  # under ./runs
    assert "checkpoint directory runs/ckpt does not exist" in line
    line = one_line_error(run_cli("predict", "--checkpoint", str(files["root"]), "코스피 상승 마감"))
    assert "has no config.json" in line


def test_bad_config_files(files: dict[str, Path]) -> None:
    assert "is not valid YAML" in one_line_error(run_cli("train", "--config", str(files["bad_yaml"])))
    assert "unknown option(s) epoch_count" in one_line_error(run_cli("train", "--config", str(files["unknown_key"])))
    assert "config file /nope.yaml does not exist" in one_line_error(run_cli("train", "--config", "/nope.yaml"))


def test_unknown_option_and_bad_values() -> None:
    assert "unknown option --epochz (see `ynat-ray train --help`)" in one_line_error(run_cli("train", "--epochz", "3"))
    assert "argument --epochs: invalid int value: 'many'" in one_line_error(run_cli("train", "--epochs", "many"))
    assert "unknown command 'trian'" in run_cli("trian").stderr.decode()
    assert run_cli("trian").returncode == 2


def test_bad_row_names_file_row_and_field(files: dict[str, Path]) -> None:
    line = one_line_error(run_cli("evaluate", "--checkpoint", "x", "--test_data", str(files["bad_rows"])))
    assert line.endswith(f"{files['bad_rows']}: row 2: field 'title': empty")


def test_empty_or_invalid_text() -> None:
    assert one_line_error(run_cli("predict", "--checkpoint", "x", "코스피", "")) == "ynat-ray: error: text 2 is empty"
    line = one_line_error(run_cli("predict", "--checkpoint", "x", b"\xff\xfe broken"))  # invalid UTF-8 in argv
    assert "text 1" in line and "not valid Unicode" in line


def test_debug_shows_the_traceback() -> None:
    done = run_cli("predict", "--checkpoint", "/nope/ckpt", "코스피", "--debug")
    assert done.returncode != 0 and b"Traceback" in done.stderr and b"CheckpointError" in done.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grace_period", "9"], "--grace_period 9 must be between 1 and the trials' most epochs (6)"),
        (["--reduction_factor", "1"], "--reduction_factor 1 must be greater than 1"),
    ],
)
def test_tune_scheduler_mistakes_are_one_line_before_ray_starts(files: dict[str, Path], flags: list[str], message: str) -> None:
    # The shipped space searches up to 6 epochs; ASHA would otherwise fail with a bare assert after Ray started.
    line = one_line_error(run_cli("tune", "--storage_path", str(files["root"] / "runs"), *flags))
    assert line == f"ynat-ray: error: {message}"


def test_serve_on_a_busy_port_names_the_process_holding_it(tmp_path: Path) -> None:
    """A port held by a process this command did not start (say, an orphaned HAProxy after `ray stop --force`):
    one line that names the holder and suggests --port, before Ray starts; the holder is left alone."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_cli("serve", "--checkpoint", str(tmp_path), "--port", str(port))
        line = one_line_error(done)
        assert f"port {port} on 127.0.0.1 is in use by" in line and f"pid {os.getpid()}" in line and "--port" in line, line
        holder.getsockname()  # still open: nothing was killed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["predict", "--checkpoint", "x", "--epochs", "9", "코스피"],
            "--epochs is an option of `ynat-ray train` / `ynat-ray tune`, not of `ynat-ray predict`",
        ),
        (["train", "--port", "1"], "--port is an option of `ynat-ray serve`, not of `ynat-ray train`"),
        (
            ["serve", "--checkpoint", "x", "--num_actors=2"],
            "--num_actors is an option of `ynat-ray predict-batch`, not of `ynat-ray serve`",
        ),
        (["predict-batch", "--max-batch-size", "8"], "--max_batch_size is an option of `ynat-ray serve`, not of `ynat-ray predict-batch`"),
    ],
)
def test_another_commands_option_is_refused_naming_that_command(argv: list[str], message: str) -> None:
    assert one_line_error(run_cli(*argv)) == f"ynat-ray: error: {message}"


def test_help_shows_only_the_commands_groups() -> None:
    done = run_cli("serve", "--help")
    assert done.returncode == 0
    text = done.stdout.decode()
    for group in ("engine:", "replica limits (live-updatable):", "serve:"):
        assert f"\n{group}\n" in text, text
    assert "--port" in text and "--epochs" not in text and "--num_actors" not in text and "--text_column" not in text


def test_a_training_config_also_configures_serve(files: dict[str, Path]) -> None:
    """One YAML may hold options of several commands: `serve` takes its own keys and leaves the training ones."""
    both = files["root"] / "both.yaml"
    both.write_text("epochs: 2\nlearning_rate: 0.001\nnum_actors: 2\nmin_replicas: 3\nmax_replicas: 2\n", encoding="utf-8")
    line = one_line_error(run_cli("serve", "--config", str(both), "--checkpoint", "/nope/ckpt"))
    assert line == "ynat-ray: error: need 1 <= min_replicas (3) <= max_replicas (2)", line  # its keys read, the others left


def test_a_bug_is_not_reported_as_a_user_error() -> None:
    """A plain ValueError from deep inside a library is a bug: the CLI must show its traceback, not one line."""
    from ynat_ray.cli import user_error_types

    assert not issubclass(ValueError, user_error_types()) and ValueError not in user_error_types()
