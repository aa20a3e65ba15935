"""Subnet configs, search spaces built from backend profiles, and the cost model."""

from quantsearch.space.build import (
    build_model_from_checkpoint,
    load_model,
    quantize,
    quantized_model,
    resolve_config,
)
from quantsearch.space.cost import Cost, LayerCost, layer_costs, subnet_cost
from quantsearch.space.space import NetForm, SearchSpace, net_forms
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
    "Cost", "LayerCost", "NetForm", "SearchSpace", "SubnetConfig", "build_model_from_checkpoint", "get_config",
    "layer_costs", "load_model", "model_uniform", "net_forms", "parse_uniform", "pinned_layers", "quantize",
    "quantized_model", "resolve_config", "set_config", "subnet_cost", "uniform_config",
]
