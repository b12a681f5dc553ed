"""Architectures of the model zoo."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Small CNN for (N, 1, 28, 28) images in [0, 1], 10 classes (17 k parameters).

    ``features``: conv1(1->8)-relu1-pool1 (14x14)-conv2(8->16)-relu2-conv3(16->32)-relu3-pool2 (7x7);
    ``classifier``: flatten-fc(1568->10). Every ReLU is an ``nn.ReLU`` module (so
    :func:`xadv.nn.smooth_relu` can replace it) and there is no BatchNorm or Dropout,
    so train and eval mode compute the same function. Grad-CAM's default layer is
    ``features.conv3`` (a 14x14 map). About 1.2 M multiply-adds per image, so
    explainers and attacks that need many forward passes stay fast on a CPU.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, size: int = 28):
        super().__init__()
        if size % 4:
            raise ValueError(f"size must be a multiple of 4, got {size}")
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_channels, 8, 3, padding=1)), ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(8, 16, 3, padding=1)), ("relu2", nn.ReLU()),
            ("conv3", nn.Conv2d(16, 32, 3, padding=1)), ("relu3", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
        ]))
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()), ("fc", nn.Linear(32 * (size // 4) ** 2, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TabularMLP(nn.Module):
    """MLP for standardised tabular rows: fc1(d->64)-relu1-fc2(64->32)-relu2-fc3(32->classes)."""

    def __init__(self, in_features: int = 30, num_classes: int = 2, hidden=(64, 32)):
        super().__init__()
        layers = OrderedDict()
        d = in_features
        for i, h in enumerate(hidden, 1):
            layers[f"fc{i}"] = nn.Linear(d, h)
            layers[f"relu{i}"] = nn.ReLU()
            d = h
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(d, num_classes)
        self.net = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CifarCNN(nn.Module):
    """VGG-style CNN for (N, 3, 32, 32) images in [0, 1], 10 classes (0.55 M parameters).

    Three blocks of two 3x3 convs (32, 64, 128 channels) with ``nn.ReLU`` modules and
    2x2 max-pooling, then fc(2048->128)-relu-fc(128->10). No shipped weights (CIFAR-10
    is not bundled); train it on data from :func:`xadv.data.load_cifar10` or pass
    ``weights=`` to :func:`xadv.zoo.cifar_cnn`. Grad-CAM's default layer is
    ``features.conv6`` (8x8).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32):
        super().__init__()
        w = width
        chans = [(in_channels, w), (w, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)]
        layers = OrderedDict()
        for i, (a, b) in enumerate(chans, 1):
            layers[f"conv{i}"] = nn.Conv2d(a, b, 3, padding=1)
            layers[f"relu{i}"] = nn.ReLU()
            if i % 2 == 0:
                layers[f"pool{i // 2}"] = nn.MaxPool2d(2)
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(4 * w * 4 * 4, 128)), ("relu", nn.ReLU()),
            ("fc2", nn.Linear(128, num_classes)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
