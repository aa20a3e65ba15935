"""DQSS: differentiable per-layer choice among calibration algorithms (MaxAbs, KL, EasyQuant, ADMM), PTQ and QAT.

Core: `dqss_search(model, batches, settings) -> Strategy`; the job (checkpoints, files): `run_dqss`."""

from quantsearch.dqss.mixed import mix_quant, naive_mixed_forward
from quantsearch.dqss.mixers import (
           ActMix,
           Anneal,
           Mixer,
           WeightMix,
           attach_mixers,
           candidate_scales,
           shared_input_groups,
)
from quantsearch.dqss.run import DQSSResult, build_from_strategy, run_dqss, strategy_weights
from quantsearch.dqss.search import dqss_search
from quantsearch.dqss.strategy import STRATEGY_FORMAT, LayerStrategy, Strategy, choose

__all__ = ["STRATEGY_FORMAT", "ActMix", "Anneal", "DQSSResult", "LayerStrategy", "Mixer", "Strategy", "WeightMix",
           "attach_mixers", "build_from_strategy", "candidate_scales", "choose", "dqss_search", "mix_quant",
           "naive_mixed_forward", "run_dqss", "shared_input_groups", "strategy_weights"]
