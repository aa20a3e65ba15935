"""EQ-Net elastic supernet: sandwich sampling, WDR, GPG, BN recalibration, training loop, uniform table.

Core: `train_supernet(model, batches, settings) -> Supernet`, `Supernet.subnet(config)`; the job (checkpoints,
files, sharded batches): `train_supernet_local`, and distributed/ on Ray Train."""

from quantsearch.supernet.bn import recalibrate_bn
from quantsearch.supernet.job import (
    ShardedBatches,
    build_job_run,
    fit_job,
    supernet_data,
    supernet_payload,
    train_supernet_local,
)
from quantsearch.supernet.losses import gpg_loss, wdr_loss
from quantsearch.supernet.measure import Measurement, measure, measure_subnet
from quantsearch.supernet.sampling import NetForm, SandwichSampler, net_forms
from quantsearch.supernet.table import save_table, uniform_table
from quantsearch.supernet.trainer import (
    Supernet,
    SupernetRun,
    build_run,
    fit,
    load_state,
    sandwich_step,
    state_payload,
    train_supernet,
)

__all__ = [
    "Measurement", "NetForm", "SandwichSampler", "ShardedBatches", "Supernet", "SupernetRun", "build_job_run",
    "build_run", "fit", "fit_job", "gpg_loss", "load_state", "measure", "measure_subnet", "net_forms",
    "recalibrate_bn", "sandwich_step", "save_table", "state_payload", "supernet_data", "supernet_payload",
    "train_supernet", "train_supernet_local", "uniform_table", "wdr_loss",
]
