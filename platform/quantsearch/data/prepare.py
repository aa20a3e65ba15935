"""Turn a job's DataSpec into the train / val / test sets every stage uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantsearch.config import DataSpec
from quantsearch.data.datasets import DataBundle, load_dataset
from quantsearch.data.imageset import ImageSet
from quantsearch.data.splits import split_train_val, take


@dataclass(frozen=True)
class PreparedData:
    """The dataset plus its deterministic train / val split and (possibly limited) test set."""

    bundle: DataBundle
    train: ImageSet
    val: ImageSet
    test: ImageSet

    @property
    def mean(self) -> float:
        """Normalisation mean."""
        return self.bundle.mean

    @property
    def std(self) -> float:
        """Normalisation std."""
        return self.bundle.std

    def example(self, seed: int = 0) -> torch.Tensor:
        """Two normalised training images: enough to trace layer order and shapes."""
        from quantsearch.data.loader import batches

        return next(batches(take(self.train, 2, seed), 2, self.mean, self.std))[0]


def prepare_data(spec: DataSpec) -> PreparedData:
    """Load the dataset, split train/val with split_seed (or take the data's own val set), apply train/test limits."""
    bundle = load_dataset(spec.name, spec=spec)
    if bundle.val is not None:
        train, val = bundle.train, bundle.val
    else:
        val_size = min(spec.val_size, len(bundle.train) // 5)
        train, val = split_train_val(bundle.train, val_size, spec.split_seed)
    train = take(train, spec.train_limit, spec.split_seed)
    test = take(bundle.test, spec.test_limit, spec.split_seed)
    return PreparedData(bundle, train, val, test)
