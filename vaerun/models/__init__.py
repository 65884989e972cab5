"""Encoders, decoders and the VAE that joins them; :func:`build_vae` is the registry."""
from __future__ import annotations

import torch

from vaerun.likelihoods import Likelihood
from vaerun.models.autoregressive import PixelCNNDecoder
from vaerun.models.decoders import ConvDecoder, MLPDecoder
from vaerun.models.encoders import ConvEncoder, MLPEncoder
from vaerun.models.layers import initialize
from vaerun.models.vae import VAE

MODELS = ("mlp", "conv", "autoregressive")


def build_vae(name: str, data_shape: tuple[int, int, int], likelihood: Likelihood, *, latent_dim: int,
              hidden: list[int], channels: list[int], kernel: int, activation: str = "relu",
              init: str = "default", ar_layers: int = 6, ar_kernel: int = 5, ar_width: int = 64,
              ar_cond_channels: int = 32, ar_cond: str = "spatial") -> VAE:
    """Builds a VAE for images of ``data_shape`` (C, H, W). The decoder emits C·K maps for the
    likelihood's K parameters per channel. Raises ValueError when the geometry does not fit."""
    c, h, w = data_shape
    out_channels = c * likelihood.params_per_channel
    if name == "mlp":
        enc = MLPEncoder(data_shape, list(hidden), latent_dim, activation)
        dec = MLPDecoder(latent_dim, list(reversed(hidden)), (out_channels, h, w), activation)
    elif name in ("conv", "autoregressive"):
        if h != w:
            raise ValueError(f"the {name} model needs square images, got {h}x{w}")
        enc = ConvEncoder(c, h, list(channels), kernel, list(hidden), latent_dim, activation)
        if name == "conv":
            dec = ConvDecoder(latent_dim, h, list(channels), kernel, list(hidden), out_channels, activation)
        else:
            dec = PixelCNNDecoder(latent_dim, data_shape, likelihood.params_per_channel, ar_width, ar_layers,
                                  ar_kernel, ar_cond_channels, ar_cond)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    vae = VAE(enc, dec, likelihood, latent_dim)
    initialize(vae.encoder, init)
    initialize(vae.decoder, init)
    return vae


def place(vae: VAE, device: torch.device) -> VAE:
    """``vae`` on ``device``, in the memory layout that trains fastest there: on a CPU the conv
    model's 4-D weights channels-last (NHWC), so every convolution runs oneDNN's NHWC kernels
    (1.08-1.17x per training step for the MNIST conv model on 2 cores, ``make bench``; the
    single-channel first and last layers gain most). Values are unchanged; the other models gain
    nothing (the PixelCNN loses), so they stay as built."""
    vae = vae.to(device)
    if device.type == "cpu" and type(vae.decoder) is ConvDecoder:
        vae.to(memory_format=torch.channels_last)
    return vae


__all__ = ["VAE", "build_vae", "place", "MODELS", "MLPEncoder", "ConvEncoder", "MLPDecoder", "ConvDecoder",
           "PixelCNNDecoder"]
