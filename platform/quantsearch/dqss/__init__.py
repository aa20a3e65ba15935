"""DQSS: differentiable per-layer choice among calibration algorithms (MaxAbs, KL, EasyQuant, ADMM), PTQ and QAT."""

from quantsearch.dqss.mixed import mix_quant, naive_mixed_forward
from quantsearch.dqss.run import (
    DQSSResult,
    QATSchedule,
    build_from_strategy,
    load_strategy,
    run_dqss,
    run_dqss_ptq,
    run_dqss_qat,
    strategy_weights,
)
from quantsearch.dqss.search import (
    STRATEGIES,
    ActMix,
    Mixer,
    WeightMix,
    apply_strategy,
    attach_mixers,
    candidate_scales,
    choose,
    shared_input_groups,
)

__all__ = ["STRATEGIES", "ActMix", "DQSSResult", "Mixer", "QATSchedule", "WeightMix", "apply_strategy",
           "attach_mixers", "build_from_strategy", "candidate_scales", "choose", "load_strategy", "mix_quant",
           "naive_mixed_forward", "run_dqss", "run_dqss_ptq", "run_dqss_qat", "shared_input_groups", "strategy_weights"]
