"""The VAE: an encoder, a decoder and a likelihood, with a standard-normal prior p(z) = N(0, I)."""
from __future__ import annotations

import itertools
from typing import Optional

import torch
import torch.nn as nn

from vaerun.likelihoods import Likelihood

# Bytes one decoder call's widest activation may take in evaluation (decode_pieces), by device
# type. On a CPU pieces that stay in the cache are faster: the default PixelCNN evaluates at
# ~90 examples/s in 32-row pieces, ~50 at 512 rows, the conv model ~4,300 vs ~3,200 at 1,000
# rows (2 cores); the MLP's rows are small enough for thousands per piece. Elsewhere the bound
# only keeps memory in check (K = 50 importance samples of 256 images are 12,800 PixelCNN rows,
# 5 GB for one layer's output).
DECODE_BYTES = {"cpu": 16 * 2 ** 20}
DECODE_BYTES_OTHER = 2 ** 30


class VAE(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood, latent_dim: int):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> (μ, log σ²), each (B, D)."""
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z = μ + σ·ε, ε ~ N(0, I) (Kingma & Welling 2013, eq. 10); ``eps`` (B, D): given draws."""
        return mu + torch.exp(0.5 * logvar) * (torch.randn_like(mu) if eps is None else eps)

    def decode(self, z: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z (B, D) -> likelihood parameters (B, C*K, H, W); ``x`` for teacher-forced decoders."""
        return self.decoder(z, x)

    def decode_pieces(self, z: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`decode` in pieces of rows whose widest decoder activation stays within
        ``DECODE_BYTES`` (evaluation's large batches): the same numbers as one call, up to float
        rounding. The bytes per row are measured once, on one row, from every decoder module's
        output."""
        rows = max(1, DECODE_BYTES.get(z.device.type, DECODE_BYTES_OTHER) // self._decoder_row_bytes(z, x))
        if z.shape[0] <= rows:
            return self.decode(z, x)
        xs = x.split(rows) if x is not None else itertools.repeat(None)
        return torch.cat([self.decode(zp, xp) for zp, xp in zip(z.split(rows), xs)])

    def _decoder_row_bytes(self, z: torch.Tensor, x: Optional[torch.Tensor]) -> int:
        measured = getattr(self, "_row_bytes", None)                  # (dtype, bytes): a .double() measures again
        if measured is None or measured[0] != z.dtype:
            widest = [0]

            def hook(module, inputs, out):
                if isinstance(out, torch.Tensor):
                    widest[0] = max(widest[0], out.numel() * out.element_size())
            handles = [m.register_forward_hook(hook) for m in self.decoder.modules()]
            try:
                with torch.no_grad():
                    self.decode(z[:1], None if x is None else x[:1])
            finally:
                for h in handles:
                    h.remove()
            self._row_bytes = (z.dtype, max(widest[0], 1))
        return self._row_bytes[1]

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
