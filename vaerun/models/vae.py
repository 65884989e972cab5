"""The VAE: an encoder, a decoder and a likelihood, with a standard-normal prior p(z) = N(0, I)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from vaerun.likelihoods import Likelihood


class VAE(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood, latent_dim: int):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> (μ, log σ²), each (B, D)."""
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2013, eq. 10)."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) -> likelihood parameters (B, C*K, H, W); ``x`` for teacher-forced decoders."""
        return self.decoder(z, x)

    @torch.no_grad()
    def generate(self, z: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images for latent codes z (B, D): the likelihood's mean (probabilities for Bernoulli).
        An autoregressive decoder samples pixel by pixel instead (drawing from ``generator``)."""
        if getattr(self.decoder, "autoregressive", False):
            return self.decoder.generate(z, self.likelihood, generator=generator)
        return self.likelihood.mean(self.decode(z))

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n prior samples z ~ N(0, I), decoded with :meth:`generate`: (n, C, H, W)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.generate(z, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded posterior means: the likelihood mean at z = μ(x) (teacher-forced for AR decoders)."""
        mu, _ = self.encode(x)
        return self.likelihood.mean(self.decode(mu, x))
