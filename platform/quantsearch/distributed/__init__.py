"""Ray wrappers around the core stages: Ray Train for the supernet (Ray Tune stages follow)."""

from quantsearch.distributed.ray_env import init_ray
from quantsearch.distributed.train_supernet import RayTrainResult, train_supernet_ray

__all__ = ["RayTrainResult", "init_ray", "train_supernet_ray"]
