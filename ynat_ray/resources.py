"""CPU planning for Ray Train + Ray Data, from what each node can hold.

Why: if Train workers take every CPU, Ray Data's read/tokenize tasks can never be scheduled and the run
hangs without an error ("Cluster resources are not enough to run any task"). A 2-core laptop with
2 workers hits exactly that. We always leave a reserve for Data and give workers fractional CPUs.

Why per node: a bundle is placed on ONE node. A plan that divides the cluster's total CPUs as if it were
one machine asked a cluster of 1-CPU nodes for bundles of 1.12 CPU, which no node can hold, and the run
waited forever with nothing on the console. So the plan shrinks each worker's share until the bundles fit
the nodes with room left for one Data task, and `wait_for_placement` turns a plan that still cannot be
placed (an explicit `--cpus_per_worker`, a node that left) into one clear line after a bounded wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ynat_ray.errors import UsageError

MIN_WORKER_CPUS = 0.1
# Leave at least this much of the cluster to Ray Data even when --cpus_per_worker is given.
MIN_DATA_CPUS = 0.25
# Ray Data's read tasks (parse + validate one file) and write tasks (encode + upload one output file) are light;
# a quarter CPU each means predictor actors or Train workers can never take every CPU and starve them (Ray Data
# then stalls without an error: "Cluster resources are not enough to run any task").
READ_CPUS = 0.25
WRITE_CPUS = 0.25


class PlacementError(UsageError):
    """Workers, actors or replicas that the cluster's nodes cannot hold; the message says what was asked and what the nodes have."""


@dataclass(frozen=True)
class WorkerPlan:
    cpus_per_worker: float
    gpus_per_worker: int
    data_reserve_cpus: float
    torch_threads: int
    placement_strategy: str = "PACK"

    @property
    def data_task_cpus(self) -> float:
        """CPUs each Ray Data task asks for: at most the reserve, so one always fits beside the workers."""
        return min(1.0, self.data_reserve_cpus)

    def resources(self) -> dict[str, float]:
        res = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            res["GPU"] = self.gpus_per_worker
        return res


def alive_node_cpus() -> list[float]:
    """Each alive node's CPUs (the connected cluster's), largest first."""
    import ray

    return sorted((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")), reverse=True)


def describe_nodes(node_cpus: Sequence[float]) -> str:
    """'3 nodes with 1, 1, 1 CPU' for error messages."""
    return f"{len(node_cpus)} node(s) with {', '.join(f'{c:g}' for c in node_cpus)} CPU"


def _place(node_cpus: Sequence[float], bundles: int, share: float, spread: bool) -> list[float] | None:
    """Free CPUs per node after placing `bundles` bundles of `share` CPUs (first fit, largest node first), or None."""
    free = sorted(node_cpus, reverse=True)
    for i in range(bundles):
        order = range(len(free)) if not spread else [i] if i < len(free) else []
        for j in order:
            if free[j] + 1e-9 >= share:
                free[j] -= share
                break
        else:
            return None
    return free


def fits(node_cpus: Sequence[float], bundles: int, share: float, data_task_cpus: float = 0.0, spread: bool = False) -> bool:
    """True if the bundles fit the nodes and one Ray Data task of `data_task_cpus` still fits somewhere."""
    free = _place(node_cpus, bundles, share, spread)
    return free is not None and max(free, default=0.0) + 1e-9 >= data_task_cpus


def plan_workers(
    num_workers: int,
    cluster_cpus: float | Sequence[float],
    *,
    use_gpu: bool = False,
    cpus_per_worker: float | None = None,
    budget: float | None = None,
    placement_strategy: str = "PACK",
) -> WorkerPlan:
    """Split the CPUs between Train workers and a reserve for Ray Data, in bundles the nodes can hold.

    `cluster_cpus` is one number (one machine) or each node's CPUs. `budget` caps the total this run may
    plan with (a Tune trial's share). The reserve is a quarter of the CPUs, at least 0.5 and at most 2: enough
    for tokenization tasks, small enough that training keeps most of the machine.
    """
    if num_workers < 1:
        raise UsageError("num_workers must be >= 1")
    nodes = [float(cluster_cpus)] if isinstance(cluster_cpus, (int, float)) else sorted(map(float, cluster_cpus), reverse=True)
    total = min(sum(nodes), budget) if budget is not None else sum(nodes)
    reserve = min(2.0, max(0.5, total / 4))
    data_task = min(1.0, reserve)
    spread = placement_strategy == "STRICT_SPREAD"
    if cpus_per_worker is None:
        if use_gpu:
            cpus_per_worker = 1.0
        else:
            wanted = math.floor(max(MIN_WORKER_CPUS, (total - reserve) / num_workers) * 100) / 100
            cpus_per_worker = largest_fitting_share(nodes, num_workers, wanted, data_task, spread)
    if not use_gpu and cpus_per_worker * num_workers > total - MIN_DATA_CPUS:
        raise PlacementError(
            f"{num_workers} workers x {cpus_per_worker:g} CPUs leaves no CPU for Ray Data on a {total:g}-CPU "
            "cluster; lower --cpus_per_worker or --num_workers"
        )
    threads = max(1, round(cpus_per_worker))
    return WorkerPlan(cpus_per_worker, 1 if use_gpu else 0, reserve, threads, placement_strategy)


def largest_fitting_share(node_cpus: Sequence[float], bundles: int, wanted: float, data_task_cpus: float, spread: bool = False) -> float:
    """The largest per-worker share, at most `wanted`, whose bundles fit the nodes beside one Data task.

    Candidates are `wanted` and every way a node splits evenly (c/k, and (c - data task)/k for the node that also
    hosts Ray Data); if none fits, `wanted` is returned and `wait_for_placement` says so.
    """
    candidates = {wanted}
    for c in node_cpus:
        for k in range(1, bundles + 1):
            candidates.update({c / k, (c - data_task_cpus) / k})
    for share in sorted((math.floor(s * 100) / 100 for s in candidates if MIN_WORKER_CPUS <= s <= wanted), reverse=True):
        if fits(node_cpus, bundles, share, data_task_cpus, spread):
            return share
    return wanted


def wait_for_placement(bundles: list[dict[str, float]], strategy: str, what: str, timeout_s: float, log: object = print) -> None:
    """Reserve `bundles` as a placement group, then release it; fail in one line if they are not placed in time.

    Why: Ray waits forever for resources that no node has (Train V2 times out after 60 s and retries), and on an
    autoscaling cluster waiting is right, for a while. This makes the while bounded and says what was asked.
    """
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(bundles, strategy=strategy)
    started = time.monotonic()
    ready = pg.wait(timeout_seconds=min(10.0, timeout_s))
    if not ready:
        log(f"[ynat-ray] waiting up to {timeout_s:g} s for {what} ({strategy}); the cluster has {describe_nodes(alive_node_cpus())}")  # type: ignore[operator]
        ready = pg.wait(timeout_seconds=max(0.0, timeout_s - (time.monotonic() - started)))
    remove_placement_group(pg)
    if not ready:
        raise PlacementError(
            f"{what} ({strategy}) could not be placed within {timeout_s:g} s: the cluster has {describe_nodes(alive_node_cpus())}; "
            "lower --cpus_per_worker or --num_workers, or raise --placement_timeout_s if nodes are still being added"
        )


def check_actor_budget(num_actors: int, actor_cpus: float, actor_gpus: float, cluster_cpus: float, node_cpus: Sequence[float] = ()) -> None:
    """A batch job's CPU actors plus one read and one write task must fit the cluster, and each actor one node, or
    Ray Data would wait forever. GPU actors are not checked: on an autoscaling cluster their nodes (and CPUs)
    appear once requested."""
    if actor_gpus > 0:
        return
    if node_cpus and actor_cpus > max(node_cpus):
        raise PlacementError(f"--actor_cpus {actor_cpus:g} fits no node: the cluster has {describe_nodes(node_cpus)}")
    io = READ_CPUS + WRITE_CPUS
    need, fitting = num_actors * actor_cpus + io, max(0.25, (cluster_cpus - io) / num_actors)
    if need > cluster_cpus:
        raise PlacementError(
            f"{num_actors} actor(s) x {actor_cpus:g} CPU + {io:g} CPU for reading/writing needs {need:g} CPUs but the cluster "
            f"has {cluster_cpus:g}; lower --num_actors or --actor_cpus (e.g. --actor_cpus {fitting:.2f})"
        )


def trial_concurrency(
    cluster_cpus: float, cluster_gpus: float, num_workers: int, cpus_per_worker: float | None, use_gpu: bool, requested: int | None
) -> int:
    """How many Tune trials run at once: as many as the cluster holds with every trial's workers AND its Ray Data reserve.

    A trial needs `num_workers` CPUs for its workers (at least 1 each, or `cpus_per_worker`) plus 1 for Ray Data
    (`plan_workers` keeps that reserve inside the trial's share), so a 2-CPU laptop runs one trial at a time and
    never deadlocks; with GPUs, `num_workers` GPUs per trial.
    """
    per_trial = num_workers * max(1.0, cpus_per_worker or 1.0) + 1.0
    most = max(1, int(cluster_cpus // per_trial))
    if use_gpu:
        most = min(most, int(cluster_gpus // num_workers))
        if most < 1:
            raise UsageError(
                f"--use_gpu with {num_workers} worker(s) per trial needs {num_workers} GPU(s); the cluster has {cluster_gpus:g}"
            )
    return min(most, requested) if requested else most
