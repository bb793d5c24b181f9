"""The PyTorch class behind the digits samples (used with ``--model-class samples/digits_model.py:DigitsCNN``)."""

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 grayscale digits (sklearn's load_digits), NCHW input scaled to [0, 1]."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4 * 4, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
