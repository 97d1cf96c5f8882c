"""CPU planning for Ray Train + Ray Data on small machines.

Why: if Train workers take every CPU, Ray Data's read/tokenize tasks can never be scheduled and the run
hangs without an error ("Cluster resources are not enough to run any task"). A 2-core laptop with
2 workers hits exactly that. We always leave a reserve for Data and give workers fractional CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerPlan:
    cpus_per_worker: float
    gpus_per_worker: int
    data_reserve_cpus: float
    torch_threads: int

    @property
    def data_task_cpus(self) -> float:
        """CPUs each Ray Data task asks for: at most the reserve, so one always fits beside the workers."""
        return min(1.0, self.data_reserve_cpus)

    def resources(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            res["GPU"] = self.gpus_per_worker
        return res


def plan_workers(num_workers: int, cluster_cpus: float, *, use_gpu: bool = False, cpus_per_worker: float | None = None) -> WorkerPlan:
    """Split the cluster's CPUs between Train workers and a reserve for Ray Data.

    The reserve is a quarter of the CPUs, at least 0.5 and at most 2: enough for tokenization tasks,
    small enough that training keeps most of the machine.
    """
    if num_workers < 1:
        raise ValueError("num_workers must be >= 1")
    reserve = min(2.0, max(0.5, cluster_cpus / 4))
    if cpus_per_worker is None:
        cpus_per_worker = 1.0 if use_gpu else round(max(0.1, (cluster_cpus - reserve) / num_workers), 2)
    if not use_gpu and cpus_per_worker * num_workers > cluster_cpus - 0.25:
        raise ValueError(
            f"{num_workers} workers x {cpus_per_worker} CPUs leaves no CPU for Ray Data on a {cluster_cpus:g}-CPU "
            "cluster; lower --cpus_per_worker or --num_workers"
        )
    threads = max(1, round(cpus_per_worker))
    return WorkerPlan(cpus_per_worker, 1 if use_gpu else 0, reserve, threads)
