"""Shared fixtures: tiny seeded data and models, so unit tests run in seconds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic():
    """The seeded synthetic bundle (1,024 train / 256 test, 4 classes, 1x16x16)."""
    from quantsearch.data.datasets import make_synthetic

    return make_synthetic()


def fashion_available() -> bool:
    """Whether Fashion-MNIST can be found without a download."""
    from quantsearch.data.datasets import _find_fashion_dir

    return _find_fashion_dir(None) is not None
