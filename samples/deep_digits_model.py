"""A deeper CNN for the digits data: MobileNetV2-style inverted residuals (depthwise convolutions, SiLU, ReLU6, squeeze
and excitation), the kind of network whose int8 error spreads over its depth instead of sitting in one layer.

Input: the digits samples' 1x8x8 NCHW in [0, 1], upsampled to 32x32 inside the model. Trained by
samples/make_deep_digits.py (it writes a torch.export program)."""

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.SiLU) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduced: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(ch, reduced, 1), nn.Conv2d(reduced, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, se: bool = False, act: type = nn.SiLU):
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1, act=act)
        self.depthwise = _conv_bn(mid, mid, 3, stride, groups=mid, act=act)
        self.se = SqueezeExcite(mid, max(8, mid // 8)) if se else nn.Identity()
        self.project = _conv_bn(mid, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class DeepDigits(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
        self.stem = _conv_bn(1, 16, 3, act=nn.ReLU6)
        self.blocks = nn.Sequential(
            InvertedResidual(16, 24, 2, act=nn.ReLU6),
            InvertedResidual(24, 24, 1, act=nn.ReLU6),
            InvertedResidual(24, 40, 2, se=True),
            InvertedResidual(40, 40, 1, se=True),
            InvertedResidual(40, 64, 2, se=True),
            InvertedResidual(64, 64, 1, se=True),
        )
        self.head = _conv_bn(64, 128, 1, act=nn.Hardswish)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.blocks(self.stem(self.upsample(x))))
        return self.classifier(y.mean((2, 3), keepdim=True))
