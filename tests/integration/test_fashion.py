"""Real Fashion-MNIST (skipped where it is not installed): unit tests use synthetic data only."""

import pytest
from quantsearch.config import JobSpec
from quantsearch.data import PreparedData
from quantsearch.train import train_fp32

from tests.conftest import fashion_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not fashion_available(), reason="Fashion-MNIST is not installed (QUANTSEARCH_DATA)")]


def test_resnet_learns_fashion_mnist_in_one_epoch(tmp_path):
    from quantsearch.data import load_dataset, take

    b = load_dataset("fashion-mnist")
    train = take(b.train, 2000, 0)
    test = take(b.test, 1000, 0)
    data = PreparedData(b, train, take(b.train, 10, 1), test)
    spec = JobSpec.model_validate({"training": {"epochs": 1, "batch_size": 64, "lr": 0.01, "augment": False}})
    res = train_fp32(spec, data, tmp_path, progress=False)
    assert res.test_acc > 0.60, res.test_acc
