"""Rank 0's per-epoch progress (steps, loss, samples/s): a live bar on a terminal, a few plain lines in a log.

Why two forms: a bar redraws in place with carriage returns, which only a terminal understands. In a log
(`ray job logs`, CI, `nohup`, a file) every redraw is a new line (Ray's tqdm_ray even draws each one twice:
once on update, once on refresh), so a short run's log was mostly bar redraws. Off a terminal the epoch is
therefore reported as plain lines: one at every ~10 % of its steps, or after 30 s without one, each printed
once, and a last line when the epoch ends between marks.

Where "terminal" is decided: on the driver (`console_is_live()`, where the user runs `ynat-ray train`). The
bar is drawn there, while the loop runs in a Ray Train worker, an actor whose stdout is never a tty; so the
driver decides once and hands the answer to the workers as the `live` bool.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

LINE_EVERY_FRACTION = 0.1  # off a terminal: a line at every 10 % of the epoch's steps ...
LINE_EVERY_S = 30.0  # ... or after this many seconds without one, whichever comes first


def console_is_live() -> bool:
    """True when the driver's console can show a live bar: stderr, where tqdm draws it, is a terminal.

    Call it on the driver, never in a worker (a Ray actor's stdout and stderr are pipes to its log files).
    """
    return sys.stderr.isatty()


def _print_line(line: str) -> None:
    print(line, flush=True)  # flushed: Ray forwards a worker's stdout to the driver line by line


class EpochProgress:
    """One epoch's progress on rank 0: `step()` after every optimizer step, `close()` when the epoch ends.

    `enabled` False (other ranks, or `--progress_bar false`): nothing at all. `live` (the driver's console is a
    terminal, `console_is_live()`): a `ray.experimental.tqdm_ray` bar, which sends its state to the driver
    so the driver draws one real bar (a plain tqdm in a worker would print one line per refresh). Otherwise
    plain lines, at most every ~10 % of `steps` or every 30 s, once each. `steps` is the expected step
    count; an epoch that runs a step more or fewer is still reported to its end. `clock` and `write` are
    for tests (a fake clock, a list to write into).
    """

    def __init__(
        self,
        epoch: int,
        epochs: int,
        steps: int,
        enabled: bool,
        live: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
        write: Callable[[str], Any] = _print_line,
    ):
        self.label = f"epoch {epoch + 1}/{epochs}"
        self.steps = max(1, steps)
        self.enabled, self.live = enabled, live
        self.clock, self.write = clock, write
        self.bar: Any = None
        self.done = 0  # steps so far
        self.printed = 0  # the step count of the last line written (off a terminal)
        self.last_line_at = clock()
        self.stride = max(1, round(self.steps * LINE_EVERY_FRACTION))
        self.loss, self.samples_per_s = 0.0, 0.0
        if enabled and live:
            from ray.experimental import tqdm_ray

            self.bar = tqdm_ray.tqdm(total=steps, desc=self.label, unit="step")

    def step(self, loss: float, samples_per_s: float) -> None:
        """One optimizer step: `loss` is the epoch's running mean, `samples_per_s` its throughput (all ranks)."""
        if not self.enabled:
            return
        self.done += 1
        self.loss, self.samples_per_s = loss, samples_per_s
        if self.bar is not None:
            self.bar.set_description(f"{self.label} loss {loss:.4f} {samples_per_s:.0f} samples/s")
            self.bar.update(1)
        elif self.done >= self.printed + self.stride or self.clock() - self.last_line_at >= LINE_EVERY_S:
            self._line()

    def close(self) -> None:
        """End of the epoch: close the bar, or write the last line unless the last step already has one."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done > self.printed:
            self._line()

    def _line(self) -> None:
        percent = 100 * self.done / self.steps
        self.write(
            f"[ynat-ray] {self.label} step {self.done}/{self.steps} ({percent:.0f}%) "
            f"loss {self.loss:.4f} {self.samples_per_s:.0f} samples/s"
        )
        self.printed, self.last_line_at = self.done, self.clock()
