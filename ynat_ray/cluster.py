"""Ray start-up in one place: every command joins or starts Ray through `init_ray`.

Why one home: how a driver finds its cluster (a `ray job submit` driver gets RAY_ADDRESS; a laptop run
starts a local cluster, or reuses a running one with `RAY_ADDRESS=auto`) and how loud Ray is on the
console must not differ between train, serve and predict-batch. (Serve's HAProxy switch is not set here:
it travels with the Serve controller's options, see `ynat_ray.serving.deploy`.)
"""

from __future__ import annotations

import os


def init_ray() -> bool:
    """Join the cluster in RAY_ADDRESS (a `ray job submit` driver, or `RAY_ADDRESS=auto` to reuse a running
    `ray start` cluster and skip start-up) or start a local one; return True when this call started one."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, log_to_driver=True)
    return address is None
