"""Epoch progress off a terminal: a few plain lines, each once (no Ray: a fake clock and a list as the console)."""

from __future__ import annotations

import sys

import pytest

from ynat_ray.progress import LINE_EVERY_S, EpochProgress, console_is_live


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_epoch(steps: int, ran: int, seconds_per_step: float) -> list[str]:
    """Feed `ran` steps to an off-terminal EpochProgress that expects `steps`; return what it wrote."""
    clock, lines = FakeClock(), []
    progress = EpochProgress(0, 2, steps, enabled=True, live=False, clock=clock, write=lines.append)
    for i in range(1, ran + 1):
        clock.now += seconds_per_step
        progress.step(loss=2.0 / i, samples_per_s=500.0)
    progress.close()
    return lines


def test_fast_epoch_writes_a_line_per_tenth_each_once():
    lines = run_epoch(100, 100, seconds_per_step=0.01)
    assert len(lines) <= 11
    assert len(set(lines)) == len(lines)
    assert [line.split(" step ")[1].split()[0] for line in lines] == [f"{n}/100" for n in range(10, 101, 10)]
    assert all(line.startswith("[ynat-ray] epoch 1/2 step ") and "samples/s" in line for line in lines)
    assert "(100%)" in lines[-1]


def test_slow_epoch_also_writes_every_30_s():
    # 100 steps of 10 s: a 10 % mark every 100 s, so the 30 s rule decides: a line every 3rd step.
    lines = run_epoch(100, 100, seconds_per_step=LINE_EVERY_S / 3)
    assert len(lines) == 34  # steps 3, 6, ..., 99, and the end line at 100
    assert len(set(lines)) == len(lines)


def test_epoch_end_between_marks_gets_its_line_once():
    lines = run_epoch(100, 95, seconds_per_step=0.01)
    assert lines[-1].split(" step ")[1].startswith("95/100")
    assert len(lines) == 10 and len(set(lines)) == len(lines)


def test_small_epoch_reports_every_step():
    assert len(run_epoch(3, 3, seconds_per_step=0.01)) == 3


def test_disabled_writes_nothing():
    lines: list[str] = []
    progress = EpochProgress(0, 1, 10, enabled=False, live=False, write=lines.append)
    for _ in range(10):
        progress.step(1.0, 10.0)
    progress.close()
    assert lines == []


@pytest.mark.parametrize("tty", [True, False])
def test_console_is_live_follows_stderr(monkeypatch, tty):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    assert console_is_live() is tty
