"""EQ-Net's CQAP model: an MLP (Linear + ReLU blocks -> Linear(.., 1)) on standardised accuracy, SmoothL1, Adam.

Runs on the CPU, one thread: the data are a few thousand rows of a few hundred one-hot features, so a GPU would
not pay for its transfers and more threads only hand off tiny matrices (measured 15x slower with two threads on a
busy two-core machine); one thread also sums in the same order on any machine, so the same data and seed give
the same predictions everywhere.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from quantsearch._util import atomic_torch_save
from quantsearch.config import PredictorSpec
from quantsearch.errors import CheckpointError
from quantsearch.predictor.store import first_line, read_meta, write_meta

WEIGHTS = "mlp.pt"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops in the block on one CPU thread; the caller's thread count is restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_mlp(in_dim: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` blocks of Linear(., hidden) + ReLU, then Linear(hidden, 1)."""
    blocks: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    blocks.append(nn.Linear(width, 1))
    return nn.Sequential(*blocks)


class MLPPredictor:
    """MLP regressor of accuracy on feature rows; fit/predict/save/load like the other predictor models."""

    kind: ClassVar[str] = "mlp"

    def __init__(self, hidden: int = 200, layers: int = 3, epochs: int = 300, lr: float = 1e-3,
                 weight_decay: float = 1e-4, seed: int = 0, batch_size: int | None = None) -> None:
        self.hidden, self.layers, self.epochs = hidden, layers, epochs
        self.lr, self.weight_decay, self.seed, self.batch_size = lr, weight_decay, seed, batch_size
        self.net: nn.Sequential | None = None
        self.in_dim = 0
        # targets are standardised for training (accuracies span a few points: raw, SmoothL1 would act as
        # a tiny-scale L2 and Adam's first steps would overshoot); predictions are mapped back
        self.y_mean, self.y_std = 0.0, 1.0

    @classmethod
    def for_spec(cls, spec: PredictorSpec, seed: int) -> MLPPredictor:
        """An unfitted MLP with the spec's width, depth, epochs and optimiser settings (full batch)."""
        return cls(spec.hidden, spec.layers, spec.epochs, spec.lr, spec.weight_decay, seed)

    def fit(self, X: npt.NDArray[np.float32], y: npt.NDArray[np.float64]) -> MLPPredictor:
        """Train from a fresh seeded init on (X, y); returns self."""
        x = torch.as_tensor(np.asarray(X, dtype=np.float32))
        yv = np.asarray(y, dtype=np.float64)
        self.in_dim = int(x.shape[1])
        self.y_mean = float(yv.mean())
        self.y_std = float(yv.std()) or 1.0  # constant targets: any scale works, avoid dividing by zero
        t = torch.as_tensor((yv - self.y_mean) / self.y_std, dtype=torch.float32).unsqueeze(1)
        # the init draws from the global generator: fork it so fitting is seeded and leaves callers' state alone
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = build_mlp(self.in_dim, self.hidden, self.layers)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = nn.SmoothL1Loss()
        n = x.shape[0]
        bs = n if self.batch_size is None else max(1, min(self.batch_size, n))
        net.train()
        with one_thread():
            for _ in range(self.epochs):
                order = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
                for start in range(0, n, bs):
                    idx = order[start:start + bs]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(net(x[idx]), t[idx])
                    loss.backward()
                    opt.step()
        net.eval()
        self.net = net
        return self

    def predict(self, X: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Predicted accuracy for each feature row."""
        if self.net is None:
            raise RuntimeError("MLPPredictor.predict before fit")
        with torch.no_grad(), one_thread():
            z = self.net(torch.as_tensor(np.asarray(X, dtype=np.float32))).squeeze(1).double().numpy()
        out: npt.NDArray[np.float64] = z * self.y_std + self.y_mean
        return out

    def meta(self) -> dict[str, Any]:
        """Hyper-parameters and target standardisation (JSON), enough to rebuild the network for its weights."""
        return {"hidden": self.hidden, "layers": self.layers, "epochs": self.epochs, "lr": self.lr,
                "weight_decay": self.weight_decay, "seed": self.seed, "batch_size": self.batch_size,
                "in_dim": self.in_dim, "y_mean": self.y_mean, "y_std": self.y_std}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write mlp.pt (state_dict) then meta.json (with `extra`, e.g. the encoder) into `directory`."""
        if self.net is None:
            raise RuntimeError("MLPPredictor.save before fit")
        atomic_torch_save(Path(directory) / WEIGHTS, self.net.state_dict())
        write_meta(directory, self.kind, self.meta(), extra)

    @classmethod
    def load(cls, directory: str | Path) -> MLPPredictor:
        """Rebuild from a folder written by save (weights_only load: no code runs)."""
        m = read_meta(directory, cls.kind)["model"]
        try:
            model = cls(int(m["hidden"]), int(m["layers"]), int(m["epochs"]), float(m["lr"]),
                        float(m["weight_decay"]), int(m["seed"]), m["batch_size"])
            model.in_dim, model.y_mean, model.y_std = int(m["in_dim"]), float(m["y_mean"]), float(m["y_std"])
            net = build_mlp(model.in_dim, model.hidden, model.layers)
            state = torch.load(Path(directory) / WEIGHTS, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
            raise CheckpointError(f"{directory}: the MLP predictor does not load ({first_line(exc)}); "
                                  f"refit it") from exc
        net.eval()
        model.net = net
        return model
