"""Datasets (fashion-mnist, digits, synthetic, imagefolder, cifar10), deterministic splits, calibration subsets,
batching from memory or streamed from files."""

from quantsearch.data.datasets import DATASETS, ArrayData, DataBundle, load_dataset
from quantsearch.data.files import FileImages
from quantsearch.data.imageset import ImageSet
from quantsearch.data.loader import ArrayBatches, Batch, batch_inputs, batches, normalize, split_batch
from quantsearch.data.prepare import PreparedData, prepare_data
from quantsearch.data.splits import calibration_subsets, split_train_val, take

__all__ = [
    "DATASETS",
    "ArrayBatches",
    "ArrayData",
    "Batch",
    "DataBundle",
    "FileImages",
    "ImageSet",
    "PreparedData",
    "batch_inputs",
    "batches",
    "calibration_subsets",
    "load_dataset",
    "normalize",
    "prepare_data",
    "split_batch",
    "split_train_val",
    "take",
]
