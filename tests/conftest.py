"""Shared fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    """One torch thread per test worker: the suite runs two workers on two cores."""
    torch.set_num_threads(1)
    yield
