"""DQSS: differentiable per-layer choice of calibration algorithm for activations and weights."""

from quantsearch.dqss.mixed import mix_quant, naive_mixed_forward
from quantsearch.dqss.run import DQSSResult, load_strategy, run_dqss_ptq
from quantsearch.dqss.search import STRATEGIES, Mixer, apply_strategy, attach_mixers, candidate_scales, choose

__all__ = ["STRATEGIES", "DQSSResult", "Mixer", "apply_strategy", "attach_mixers", "candidate_scales", "choose",
           "load_strategy", "mix_quant", "naive_mixed_forward", "run_dqss_ptq"]
