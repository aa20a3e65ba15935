"""Starting or joining Ray: a local in-process cluster, or --address / RAY_ADDRESS."""

from __future__ import annotations

import os

from quantsearch.allocator import user_choice
from quantsearch.errors import QuantsearchError


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray; one clear error if unreachable."""
    import ray

    if ray.is_initialized():
        return
    # Ray >= 2.59 enables token auth for new local clusters; local runs here need none.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    address = address or os.environ.get("RAY_ADDRESS")
    allocator = user_choice()  # workers on a running cluster do not inherit this shell's environment
    try:
        if address:
            ray.init(address=address, log_to_driver=False,
                     runtime_env={"env_vars": allocator} if allocator else None)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled", **allocator}})
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise QuantsearchError(f"cannot reach Ray at {address or 'a new local cluster'} ({exc}); "
                               "check --address / RAY_ADDRESS or run with --workers 0") from exc
