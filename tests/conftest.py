"""Shared fixtures: small random networks in float64 and seeded inputs."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)


def small_cnn(in_ch: int = 1, classes: int = 5, size: int = 8, act=torch.nn.ReLU) -> torch.nn.Sequential:
    """Conv-act-conv-act-linear network for (N, in_ch, size, size) inputs."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_ch, 4, 3, padding=1), act(),
        torch.nn.Conv2d(4, 6, 3, padding=1), act(),
        torch.nn.Flatten(), torch.nn.Linear(6 * size * size, classes),
    )


def small_mlp(d: int = 10, classes: int = 4, act=torch.nn.ReLU) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(d, 16), act(), torch.nn.Linear(16, 12), act(),
                               torch.nn.Linear(12, classes))


@pytest.fixture
def cnn64():
    torch.manual_seed(0)
    return small_cnn().double().eval()


@pytest.fixture
def softplus_cnn64():
    torch.manual_seed(0)
    return small_cnn(act=lambda: torch.nn.Softplus(beta=3.0)).double().eval()


@pytest.fixture
def mlp64():
    torch.manual_seed(0)
    return small_mlp().double().eval()


@pytest.fixture
def images64():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 8, 8, generator=g, dtype=torch.float64)


@pytest.fixture
def rows64():
    g = torch.Generator().manual_seed(2)
    return torch.randn(7, 10, generator=g, dtype=torch.float64)
