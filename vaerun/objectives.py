"""ELBO terms per example, in nats, and the β-weighted training loss built from them.

Units: ``recon`` = −log p(x|z) summed over data dimensions; ``kl_per_dim`` = KL(q(z_d|x) || N(0,1))
per latent dimension; both per example. The training loss averages over the batch. The β-weighted
loss is *not* the ELBO: the ELBO is always −(recon + KL) at β = 1.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch

from vaerun.models.vae import VAE


@dataclass
class Terms:
    recon: torch.Tensor       # (B,) −log p(x|z), nats
    kl_per_dim: torch.Tensor  # (B, D) nats
    mu: torch.Tensor          # (B, D)
    logvar: torch.Tensor      # (B, D)
    recon_mass: Optional[torch.Tensor] = None  # (B,) −log P(x|z) as a mass of the 256 levels (evaluation)
    _means: Optional[tuple[torch.Tensor, torch.Tensor]] = field(default=None, repr=False, compare=False)

    def batch_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(recon averaged over the batch, (); kl_per_dim averaged over the batch, (D,)), computed
        once per batch and shared by the loss, its written-out gradient and the loop's running sums."""
        if self._means is None:
            self._means = (self.recon.mean(), self.kl_per_dim.mean(0))
        return self._means

    @property
    def kl(self) -> torch.Tensor:  # (B,)
        return self.kl_per_dim.sum(1)

    @property
    def elbo(self) -> torch.Tensor:  # (B,) at β = 1
        return -(self.recon + self.kl)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, 1)) per dimension, closed form (Kingma & Welling 2013, App. B):
    ½(μ² + σ² − log σ² − 1). Shapes follow the inputs, (B, D)."""
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1.0)


def gaussian_kl_grad(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d KL_d / d μ_d = μ_d and d KL_d / d log σ²_d = ½(σ² − 1) for :func:`gaussian_kl`, (B, D) each."""
    return mu, 0.5 * (logvar.exp() - 1.0)


def elbo_terms(model: VAE, x: torch.Tensor, autocast: Optional[torch.dtype] = None, pieces: bool = False,
               eps: Optional[torch.Tensor] = None, mass: bool = False) -> Terms:
    """One-sample Monte Carlo ELBO terms for a batch x (B, C, H, W). ``autocast`` (e.g.
    torch.bfloat16): the encoder and decoder run under autocast to that dtype; μ, log σ², z, the
    log-likelihood and the KL stay float32. Without it everything stays in the model's dtype.
    ``pieces``: decode in pieces of bounded memory (:meth:`VAE.decode_pieces`; evaluation's large
    batches), with the same draws. ``eps`` (B, D): the reparameterization's draws, given.
    ``mass``: also ``recon_mass``, from the same z (:meth:`Likelihood.log_mass`)."""
    def networks():
        return torch.autocast(x.device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()

    def full(t: torch.Tensor) -> torch.Tensor:
        return t.float() if autocast is not None else t

    with networks():
        mu, logvar = model.encode(x)
    mu, logvar = full(mu), full(logvar)
    z = model.reparameterize(mu, logvar, eps)
    with networks():
        params = full(model.decode_pieces(z, x) if pieces else model.decode(z, x))
    recon = -model.likelihood.log_prob(params, x)
    recon_mass = -model.likelihood.log_mass(params, x) if mass else None
    return Terms(recon, gaussian_kl(mu, logvar), mu, logvar, recon_mass)


def kl_penalty(kl_per_dim: torch.Tensor, free_bits: float, per_dim: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The KL term the optimiser sees, a scalar per batch.

    free_bits = 0: the batch mean of Σ_d KL_d. free_bits = λ > 0: Σ_d max(λ, mean_batch KL_d), the
    free-bits objective of Kingma et al. 2016 (IAF paper, eq. 15) with one group per latent
    dimension: a dimension costs nothing below λ nats, so the optimiser has no reason to squeeze
    it below λ, and the gradient to its KL vanishes there. ``per_dim``: the batch mean of
    ``kl_per_dim`` when the caller has it (:meth:`Terms.batch_means`).
    """
    per_dim = kl_per_dim.mean(0) if per_dim is None else per_dim  # (D,)
    if free_bits <= 0:
        return per_dim.sum()
    return torch.clamp(per_dim, min=free_bits).sum()


def training_loss(terms: Terms, beta: float, free_bits: float, capacity: Optional[tuple[float, float]] = None
                  ) -> torch.Tensor:
    """recon + β·KL (with free bits), averaged over the batch: the quantity that is minimised.

    ``capacity = (γ, C)``: capacity annealing (Burgess et al. 2018, "Understanding disentangling
    in β-VAE", eq. 8): the KL term becomes β·γ·|KL − C|, pulling the KL towards the capacity C
    nats (raised over training) instead of towards zero. With β = 1 it is exactly the paper's
    recon + γ|KL − C|; a β schedule and free bits still apply (KL is the free-bits penalty)."""
    recon, per_dim = terms.batch_means()
    penalty = kl_penalty(terms.kl_per_dim, free_bits, per_dim)
    if capacity is not None:
        gamma, c = capacity
        penalty = gamma * (penalty - c).abs()
    return recon + beta * penalty


def kl_weights(kl_per_dim: torch.Tensor, beta: float, free_bits: float,
               capacity: Optional[tuple[float, float]] = None, per_dim: Optional[torch.Tensor] = None) -> torch.Tensor:
    """d training_loss / d kl_per_dim[b, d], (B, D): what a backward written out by hand
    (models/fused.py) multiplies the KL's own derivatives with. β/B per entry; free bits zero a
    dimension whose batch-mean KL is below λ (as clamp's gradient does); capacity multiplies by
    γ·sign(KL − C) (the gradient of γ|KL − C|). ``per_dim``: as for :func:`kl_penalty`."""
    per_dim = kl_per_dim.mean(0) if per_dim is None else per_dim                # (D,)
    scale = torch.full_like(kl_per_dim[0], beta)                                # (D,)
    if capacity is not None:
        gamma, c = capacity
        scale = scale * (gamma * torch.sign(kl_penalty(kl_per_dim, free_bits, per_dim) - c))
    if free_bits > 0:
        scale = scale * (per_dim >= free_bits)
    return (scale / kl_per_dim.shape[0]).expand_as(kl_per_dim)
