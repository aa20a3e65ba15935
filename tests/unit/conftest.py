"""Unit tests run on synthetic data: they never read the real Fashion-MNIST, and never download it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_real_fashion_mnist(monkeypatch, tmp_path_factory):
    """The Debian folder and the download cache look empty, QUANTSEARCH_DATA is unset and a download fails, so a
    unit test that needs the real Fashion-MNIST fails here instead of passing only where the data is installed
    (tests that need it live in tests/integration, skipped without it). Tests may still point QUANTSEARCH_DATA or
    data.root at IDX files they write."""
    from quantsearch.data import datasets

    nowhere = Path(tmp_path_factory.getbasetemp()) / "no-fashion-mnist"

    def no_download(target: Path) -> Path:
        raise datasets.DataError("unit tests never download Fashion-MNIST; use the synthetic or digits set")

    monkeypatch.setattr(datasets, "DEBIAN_FASHION_DIR", nowhere)
    monkeypatch.setattr(datasets, "fashion_cache_dir", lambda: nowhere)
    monkeypatch.setattr(datasets, "_download_fashion", no_download)
    monkeypatch.delenv("QUANTSEARCH_DATA", raising=False)
