"""Encoders q(z|x) = N(μ(x), diag σ²(x)): images (B, C, H, W) in, (μ, log σ²) of shape (B, D) out."""
from __future__ import annotations

import torch
import torch.nn as nn

from vaerun.models.layers import activation, conv_sizes, mlp


class MLPEncoder(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], hidden: list[int], latent_dim: int, act: str = "relu"):
        super().__init__()
        c, h, w = in_shape
        sizes = [c * h * w, *hidden]
        self.body = nn.Sequential(nn.Flatten(), *mlp(sizes, act))
        self.head = nn.Linear(sizes[-1], 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=1)  # (B, D) each
        return mu, logvar


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (one per entry of ``channels``), then optional hidden linear layers."""

    def __init__(self, in_channels: int, image_size: int, channels: list[int], kernel: int,
                 hidden: list[int], latent_dim: int, act: str = "relu"):
        super().__init__()
        sizes = conv_sizes(image_size, len(channels), kernel)
        layers: list[nn.Module] = []
        for cin, cout in zip([in_channels, *channels[:-1]], channels):
            layers += [nn.Conv2d(cin, cout, kernel, stride=2, padding=(kernel - 1) // 2), activation(act)]
        flat = channels[-1] * sizes[-1] ** 2
        self.body = nn.Sequential(*layers, nn.Flatten(), *mlp([flat, *hidden], act))
        self.head = nn.Linear(hidden[-1] if hidden else flat, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.body(x)).chunk(2, dim=1)  # (B, D) each
        return mu, logvar
