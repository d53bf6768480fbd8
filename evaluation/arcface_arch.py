"""ArcFace `resnet_face18` (arcface-pytorch), the face-identity network of the "Deg" metric.

Layout matching the published `resnet18_110.pth`: a 3x3 stem on one gray 128x128 channel, PReLU,
2x2 max-pool, four stages of two pre-activation "IR" blocks (64, 128, 256, 512 channels; the last
three start with stride 2 and a 1x1 projection), then BatchNorm, dropout, a linear layer from the
8x8x512 map to a 512-d embedding and a final BatchNorm1d. No squeeze-excitation (the checkpoint
has none).
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    """BN -> conv -> BN -> PReLU -> conv(stride) -> BN, plus the (projected) input, then PReLU.

    One PReLU module is used at both places, as in the original network.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.prelu = nn.PReLU()
        self.conv2 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.prelu(out + shortcut)


class ResNetFace(nn.Module):
    """ResNet face-embedding network for (B, 1, 128, 128) inputs in [-1, 1] -> (B, 512)."""

    def __init__(self, blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2), embedding_dim: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = nn.PReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        channels = 64
        for stage, (width, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage), start=1):
            stride = 1 if stage == 1 else 2
            blocks = [IRBlock(channels, width, stride)] + [
                IRBlock(width, width) for _ in range(num_blocks - 1)
            ]
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
            channels = width
        self.bn4 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout()
        self.fc5 = nn.Linear(512 * 8 * 8, embedding_dim)
        self.bn5 = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.prelu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn4(x))
        return self.bn5(self.fc5(x.flatten(1)))


def resnet_face18() -> ResNetFace:
    return ResNetFace((2, 2, 2, 2))
