"""Other people's CPU on a shared benchmark machine: measured, and waited out, in one place for every bench script.

Why: these machines are shared, so a benchmark cell run while someone else's job burns a core measures them,
not us. Each script waits for quiet before a cell (`wait_quiet`) and measures foreign load during it
(`ForeignCpu`), re-running cells that were disturbed.
"""

from __future__ import annotations

import contextlib
import time


class ForeignCpu:
    """Cores used during a window by processes that are neither this script's descendants nor (when `also_mine`
    is given) processes whose command line contains it, and their descendants (e.g. a `ray start` cluster with its
    own temp dir). Processes that start and end inside the window are missed, so this is a lower bound."""

    def __init__(self, also_mine: str | None = None) -> None:
        self.also_mine = also_mine

    def _snapshot(self) -> tuple[dict[int, tuple[float, float]], set[int]]:
        import psutil

        procs: dict[int, tuple[float, float]] = {}
        roots = [psutil.Process()]
        for proc in psutil.process_iter(["cpu_times", "create_time", "cmdline"]):
            times = proc.info["cpu_times"]
            if times is not None:
                procs[proc.pid] = (times.user + times.system, proc.info["create_time"] or 0.0)
            if self.also_mine and any(self.also_mine in arg for arg in proc.info["cmdline"] or []):
                roots.append(proc)
        mine: set[int] = set()
        for root in roots:
            with contextlib.suppress(psutil.Error):
                mine |= {root.pid} | {c.pid for c in root.children(recursive=True)}
        return procs, mine

    def start(self) -> None:
        self.t0, self.wall0 = time.monotonic(), time.time()
        self.before, self.mine = self._snapshot()

    def stop(self) -> float:
        """Foreign cores (CPU seconds per wall second) since `start`."""
        after, mine = self._snapshot()
        mine |= self.mine
        total = 0.0
        for pid, (cpu, created) in after.items():
            if pid in mine:
                continue
            if pid in self.before and self.before[pid][1] == created:
                total += cpu - self.before[pid][0]
            elif created >= self.wall0:
                total += cpu
        return total / max(time.monotonic() - self.t0, 1e-6)


def wait_quiet(max_wait_s: float = 600.0, below: float = 0.1, window_s: float = 3.0, also_mine: str | None = None) -> float:
    """Wait until other people's processes use under `below` cores over `window_s` (at most max_wait_s); return the wait."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        meter = ForeignCpu(also_mine)
        meter.start()
        time.sleep(window_s)
        if meter.stop() < below:
            break
    return time.monotonic() - started
