"""EQ-Net elastic supernet: sandwich sampling, WDR, GPG, BN recalibration, training loop, uniform table."""

from quantsearch.supernet.bn import recalibrate_bn
from quantsearch.supernet.local import fp32_checkpoint_path, train_supernet_local
from quantsearch.supernet.losses import gpg_loss, wdr_loss
from quantsearch.supernet.measure import Measurement, measure
from quantsearch.supernet.sampling import NetForm, SandwichSampler, net_forms
from quantsearch.supernet.table import save_table, uniform_table
from quantsearch.supernet.trainer import SupernetRun, build_run, fit, load_state, sandwich_step, state_payload

__all__ = [
    "Measurement", "NetForm", "SandwichSampler", "SupernetRun", "build_run", "fit", "fp32_checkpoint_path",
    "gpg_loss", "load_state", "measure", "net_forms", "recalibrate_bn", "sandwich_step", "save_table",
    "state_payload", "train_supernet_local", "uniform_table", "wdr_loss",
]
