"""Subnet configs, search spaces built from backend profiles, and the cost model."""

from quantsearch.space.cost import Cost, LayerCost, layer_costs, subnet_cost
from quantsearch.space.space import SearchSpace
from quantsearch.space.subnet import (
    SubnetConfig,
    get_config,
    model_uniform,
    parse_uniform,
    pinned_layers,
    set_config,
    uniform_config,
)

__all__ = [
    "Cost", "LayerCost", "SearchSpace", "SubnetConfig", "get_config", "layer_costs", "model_uniform",
    "parse_uniform", "pinned_layers", "set_config", "subnet_cost", "uniform_config",
]
