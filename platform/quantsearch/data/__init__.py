"""Datasets (fashion-mnist, digits, synthetic), deterministic splits, calibration subsets, batching."""

from quantsearch.data.datasets import DATASETS, ArrayData, DataBundle, load_dataset
from quantsearch.data.loader import batches, normalize
from quantsearch.data.prepare import PreparedData, prepare_data
from quantsearch.data.splits import calibration_subsets, split_train_val, take

__all__ = [
    "DATASETS",
    "ArrayData",
    "DataBundle",
    "PreparedData",
    "batches",
    "calibration_subsets",
    "load_dataset",
    "normalize",
    "prepare_data",
    "split_train_val",
    "take",
]
