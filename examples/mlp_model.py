"""A model file for `cimflow compile`: it exposes model() and example_inputs().

    cimflow compile examples/mlp_model.py --chip pcm-hermes-like --explain
"""

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return torch.log_softmax(self.fc3(x), dim=-1)


def model() -> nn.Module:
    torch.manual_seed(0)
    return MLP()


def example_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(32, 784),)
