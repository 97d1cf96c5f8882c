"""Ray start-up in one place: every command joins or starts Ray through `init_ray`.

Why one home: how a driver finds its cluster (a `ray job submit` driver gets RAY_ADDRESS; a laptop run
starts a local cluster, or reuses a running one with `RAY_ADDRESS=auto`) and how loud Ray is on the
console must not differ between train, serve and predict-batch. (Serve's HAProxy switch is not set here:
it travels with the Serve controller's options, see `ynat_ray.serving.app.deploy`.)
"""

from __future__ import annotations

import logging
import os

# For Ray's worker processes, unless --verbose:
# - RAY_DATA_LOG_LEVEL: Ray Data's execution-plan lines and its "Progress bars disabled" note come from
#   workers too (the SplitCoordinator feeding Train workers); only its errors reach the console.
# - PYTHONWARNINGS: Ray Data's DatasetManager actor calls its own deprecated `ExecutionOptions.exclude_resources`
#   (a RayDeprecationWarning, a DeprecationWarning subclass) on every Train run; nothing a user can act on.
# - RAY_LOGGER_LEVEL: the `ray` logger's level in workers (Train's "Reporting training result ..." per rank
#   and epoch, worker-group start-up); --verbose brings them back.
QUIET_WORKER_ENV = {"RAY_DATA_LOG_LEVEL": "ERROR", "PYTHONWARNINGS": "ignore::DeprecationWarning", "RAY_LOGGER_LEVEL": "warning"}
# Driver-side Ray Data warnings that are false alarms for this project, by the logger that emits them:
# - "no available CPUs ... will hang": printed whenever Train workers hold their CPUs; the CPU plan
#   (ynat_ray/resources.py) always leaves Ray Data its reserve, so it does not hang.
# - "Progress bars disabled": we turn Ray Data's bars off on purpose (training draws its own per epoch).
FALSE_ALARMS = {
    "ray.data.dataset": "The Ray cluster currently does not have any available CPUs",
    "ray.data._internal.progress": "Progress bars disabled",
}


class _DropMessage(logging.Filter):
    """Drops one logger's records that contain `text` (a known false alarm), keeping the rest of that logger."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def init_ray(*, verbose: bool = False) -> None:
    """Join the cluster in RAY_ADDRESS (a `ray job submit` driver, or `RAY_ADDRESS=auto` to reuse a running
    `ray start` cluster and skip start-up) or start a local one. Nothing happens when Ray is already up.

    Not verbose (the default): Ray's own INFO logs stay in its log files, off the console; warnings
    and errors still show. A cluster started here also quiets Ray Data's INFO lines in its workers; a
    joined cluster keeps its job's runtime environment as submitted.
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or None
    level = logging.INFO if verbose else logging.WARNING
    runtime_env = None if verbose or address else {"env_vars": dict(QUIET_WORKER_ENV)}
    ray.init(address=address, log_to_driver=True, logging_level=level, runtime_env=runtime_env)
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # this driver's Ray Data: execution plans, timings
        for name, text in FALSE_ALARMS.items():
            logging.getLogger(name).addFilter(_DropMessage(text))
