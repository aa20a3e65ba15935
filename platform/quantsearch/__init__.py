"""quantsearch: find how to quantize a CNN for a target, and prove it on real data.

The public API: one verb per stage, each on any nn.Module and any iterable of (x, y) or x batches (a DataLoader),
on any device, with no files, Ray or MLflow involved::

    qmodel = quantsearch.quantize(model, "W4A4", example)        # convert + set a config
    quantsearch.calibrate(qmodel, loader, method="kl")           # PTQ: set the scales
    strategy = quantsearch.dqss_search(qmodel, loader, quantsearch.DQSSSpec(iters=100))   # -> Strategy
    supernet = quantsearch.train_supernet(model, loader, quantsearch.SupernetSpec(epochs=1))
    sub = supernet.subnet("W3A3", bn_batches=loader)
    cqap = quantsearch.fit_predictor(supernet.sample(200, val, loader), quantsearch.PredictorSpec(), supernet.space, 0)
    found = quantsearch.search_subnets(supernet.space, supernet.costs(), cqap.predictor.predict, search_spec, seed=0)
    quantsearch.export_onnx(sub, example, "model.onnx", check_batches=test_loader)   # ONNX QDQ, checked in onnxruntime

Settings are the job spec's sections (pydantic models: validated, with defaults); results are frozen dataclasses
(`Strategy`, `SubnetConfig`) with to_json/from_json. Names are imported on first use, so `import quantsearch`
stays light (no torch, Ray or MLflow until a name is touched).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "quantize": "quantsearch.space.build",
    "calibrate": "quantsearch.quant.calibrate",
    "dqss_search": "quantsearch.dqss.search",
    "train_supernet": "quantsearch.supernet.trainer",
    "evaluate": "quantsearch.train.loop",
    "fit_predictor": "quantsearch.predictor.fit",
    # not `search`: importing the subpackage quantsearch.search would rebind that attribute to the module
    "search_subnets": "quantsearch.search.nsga:search",
    "export_onnx": "quantsearch.export.exporter",
    "PredictorSpec": "quantsearch.config",
    "SearchSpec": "quantsearch.config",
    "Supernet": "quantsearch.supernet.trainer",
    "Strategy": "quantsearch.dqss.strategy",
    "LayerStrategy": "quantsearch.dqss.strategy",
    "SubnetConfig": "quantsearch.space.subnet",
    "LayerConfig": "quantsearch.quant.forms",
    "QuantForm": "quantsearch.quant.forms",
    "QuantPolicy": "quantsearch.quant.convert",
    "QuantTarget": "quantsearch.config",
    "DQSSSpec": "quantsearch.config",
    "SupernetSpec": "quantsearch.config",
    "CALIBRATORS": "quantsearch.quant.registry",
    "QuantsearchError": "quantsearch.errors",
    "ConfigError": "quantsearch.errors",
}

__all__ = [
    "CALIBRATORS", "ConfigError", "DQSSSpec", "LayerConfig", "LayerStrategy", "PredictorSpec", "QuantForm",
    "QuantPolicy", "QuantTarget", "QuantsearchError", "SearchSpec", "Strategy", "SubnetConfig", "Supernet",
    "SupernetSpec", "__version__", "calibrate", "dqss_search", "evaluate", "export_onnx", "fit_predictor", "quantize",
    "search_subnets", "train_supernet",
]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'quantsearch' has no attribute '{name}'")
    module, _, attr = module.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from quantsearch.config import DQSSSpec, PredictorSpec, QuantTarget, SearchSpec, SupernetSpec
    from quantsearch.dqss.search import dqss_search
    from quantsearch.dqss.strategy import LayerStrategy, Strategy
    from quantsearch.errors import ConfigError, QuantsearchError
    from quantsearch.export.exporter import export_onnx
    from quantsearch.predictor.fit import fit_predictor
    from quantsearch.quant.calibrate import calibrate
    from quantsearch.quant.convert import QuantPolicy
    from quantsearch.quant.forms import LayerConfig, QuantForm
    from quantsearch.quant.registry import CALIBRATORS
    from quantsearch.search.nsga import search as search_subnets
    from quantsearch.space.build import quantize
    from quantsearch.space.subnet import SubnetConfig
    from quantsearch.supernet.trainer import Supernet, train_supernet
    from quantsearch.train.loop import evaluate
