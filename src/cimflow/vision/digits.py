"""scikit-learn's 8x8 digits (ships inside scikit-learn: nothing is downloaded), a small
CNN for it, and a quick trainer. Used by the demo job, tests and examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DigitsData:
    """Train / test split of the digits, images scaled to [0, 1], shape (N, 1, 8, 8)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_data(test_fraction: float = 0.25, seed: int = 0) -> DigitsData:
    """The 1,797 digits, split with a seeded permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    return DigitsData(x[train], y[train], x[test], y[test])


def small_cnn(channels: int = 16, hidden: int = 64) -> nn.Sequential:
    """Conv(1->c, 3x3) - ReLU - Conv(c->2c, 3x3) - ReLU - MaxPool 2 - Linear - ReLU - Linear(10)."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * channels * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )


def train_classifier(model: nn.Module, data: DigitsData, epochs: int = 15, lr: float = 3e-3, batch: int = 64, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy; a few seconds on 2 cores for :func:`small_cnn`."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(dim=1) == y[i : i + batch]).sum())
    return correct / len(y)
