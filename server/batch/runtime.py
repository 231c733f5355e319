"""Connecting to Ray: a local instance by default, the cluster named by ``RAY_ADDRESS`` when set."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayResources:
    """What the connected Ray instance offers.

    Attributes:
        address: ``"local"`` or the cluster address.
        cpus: total CPUs.
        resources: ``ray.cluster_resources()`` as read (``"CPU"``, ``"GPU"``, ...).
    """

    address: str
    cpus: float
    resources: dict[str, float] = field(default_factory=dict)


def ensure_ray(num_cpus: int | None = None) -> RayResources:
    """Connect to Ray once per process.

    An already initialised Ray (tests, notebooks) is used as is. With ``RAY_ADDRESS`` set,
    ``ray.init()`` joins that cluster (the package must be installed on the cluster's image).
    Otherwise a
    local instance starts with ``num_cpus`` (default: the cores this process may use) and no
    dashboard.

    Args:
        num_cpus: CPUs of a local instance.

    Returns:
        The address and total resources.
    """
    import ray

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            logger.info("joining Ray cluster at %s", address)
            ray.init(address=address, log_to_driver=True)
        else:
            cpus = num_cpus or len(os.sched_getaffinity(0))
            logger.info("starting a local Ray instance with %d CPUs", cpus)
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=True)
    res: dict[str, Any] = ray.cluster_resources()
    return RayResources(
        address=os.environ.get("RAY_ADDRESS") or "local",
        cpus=float(res.get("CPU", 0.0)),
        resources={str(k): float(v) for k, v in res.items()},
    )


def quiet_ray_data(show_progress: bool) -> None:
    """Keep Ray Data's progress bars (``show_progress``) and drop its per-operator INFO chatter."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = show_progress
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
