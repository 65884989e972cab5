"""Decoders: z (B, D) -> likelihood parameters (B, C*K, H, W), channel-major (see likelihoods.py).

Every decoder takes ``forward(z, x=None)``: ``x`` is the observed image, which only an
autoregressive decoder reads (teacher forcing). ``autoregressive`` tells the VAE whether
sampling must go pixel by pixel.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vaerun.models.layers import activation, conv_sizes, mlp, transpose_output_padding


class MLPDecoder(nn.Module):
    autoregressive = False

    def __init__(self, latent_dim: int, hidden: list[int], out_shape: tuple[int, int, int], act: str = "relu"):
        super().__init__()
        self.out_shape = out_shape  # (C*K, H, W)
        sizes = [latent_dim, *hidden]
        c, h, w = out_shape
        self.net = nn.Sequential(*mlp(sizes, act), nn.Linear(sizes[-1], c * h * w))

    def forward(self, z: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.out_shape)  # (B, C*K, H, W)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: linear layers to a (channels[-1], s, s) map, then one
    stride-2 transposed conv per stage; output_padding makes every size come back exactly."""

    autoregressive = False

    def __init__(self, latent_dim: int, image_size: int, channels: list[int], kernel: int,
                 hidden: list[int], out_channels: int, act: str = "relu"):
        super().__init__()
        sizes = conv_sizes(image_size, len(channels), kernel)  # [S, s1, ..., sn]
        self.start = (channels[-1], sizes[-1], sizes[-1])
        flat = channels[-1] * sizes[-1] ** 2
        self.fc = nn.Sequential(*mlp([latent_dim, *reversed(hidden), flat], act))
        layers: list[nn.Module] = []
        outs = [*reversed(channels[:-1]), out_channels]
        for i, (cin, cout) in enumerate(zip(reversed(channels), outs)):
            src, dst = sizes[-1 - i], sizes[-2 - i]
            layers.append(nn.ConvTranspose2d(cin, cout, kernel, stride=2, padding=(kernel - 1) // 2,
                                             output_padding=transpose_output_padding(src, dst, kernel)))
            if i < len(channels) - 1:
                layers.append(activation(act))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], *self.start)  # (B, c_n, s_n, s_n)
        return self.net(h).contiguous()                 # (B, C*K, H, W); NCHW also from channels-last weights
