"""Diagnostic metrics: tensors in, floats out. All in nats unless the name says bits.

- active units (Burda et al. 2015, §5.2): A_d = Cov_x(E_q[z_d | x]); a dimension is active when
  A_d exceeds a threshold (0.01).
- mutual information I(x; z) under q (Hoffman & Johnson 2016; the estimator of He et al. 2019,
  `calc_mi`): E_x E_q(z|x)[log q(z|x) − log q(z)], with q(z) the aggregate posterior over a set of
  examples. It cannot exceed log N for N examples, and its sampling noise is about √(D / 2N) nats.
- importance-weighted bound (Burda et al. 2015, eq. 8): log p(x) ≥ log (1/K) Σ_k p(x, z_k) / q(z_k|x),
  z_k ~ q(z|x); it tightens as K grows, and K = 1 is the ELBO.
- bits per dimension: a negative log-likelihood in nats divided by (number of data dims × ln 2).
  It is a code length only for a probability mass of the data (a Bernoulli on binary pixels, a
  likelihood on the 256 levels); a density is first integrated over each level's bin
  (:meth:`Likelihood.log_mass`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from vaerun.models.vae import VAE

LOG_2PI = math.log(2 * math.pi)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> tuple[int, list[float]]:
    """mu (N, D) posterior means over a dataset -> (number of active dims, per-dim variance)."""
    var = mu.double().var(dim=0, unbiased=True)  # (D,)
    return int((var > threshold).sum()), var.tolist()


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag σ²) summed over the last dim; broadcasts."""
    return -0.5 * (LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar)).sum(-1)


def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, chunk: int = 256,
                       generator: Optional[torch.Generator] = None) -> float:
    """I(x; z) under q from posteriors (N, D) of N examples: one z per example, log q(z) by the
    aggregate of all N posteriors (log-mean-exp). O(N² D), done in chunks of ``chunk`` rows.

    As He et al. (2019) compute it: E_q log q(z|x) in closed form. Not clamped at 0: a clamp
    would bias the estimate upward where the true value is 0. Its ceiling is log N (fully
    separated posteriors); its sampling noise is :func:`mi_noise` nats."""
    n, d = mu.shape
    mu, logvar = mu.double(), logvar.double()
    neg_entropy = (-0.5 * d * LOG_2PI - 0.5 * (1 + logvar).sum(-1)).mean()  # E_x E_q log q(z|x)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps                                   # (N, D)
    log_qz = []
    for start in range(0, n, chunk):
        zc = z[start:start + chunk, None, :]                                 # (c, 1, D)
        log_q = _log_normal(zc, mu[None], logvar[None])                      # (c, N)
        log_qz.append(torch.logsumexp(log_q, dim=1) - math.log(n))
    return float(neg_entropy - torch.cat(log_qz).mean())


def mi_noise(n: int, d: int) -> float:
    """The standard deviation of :func:`mutual_information` over its draws where the posteriors
    are alike (true I = 0): √(D / 2N) nats, the spread of the mean of N draws of −log q(z|x),
    each ½χ²_D plus a constant (variance D/2). Values within a few of it are no evidence of
    information."""
    return math.sqrt(d / (2 * n))


def log_weights(model: VAE, x: torch.Tensor, k: int, chunk: int = 64, mass: bool = False) -> torch.Tensor:
    """log p(x, z_k) − log q(z_k | x) for k samples per example: (B, K) nats. Draws ``chunk``
    samples per example at a time and decodes their B·chunk rows in pieces that stay within
    the decoder's memory bound (:meth:`VAE.decode_pieces`). ``mass``: also the weights with
    p(x|z) as the mass of x's 256 levels (:meth:`Likelihood.log_mass`), from the same draws:
    then (2, B, K), the likelihood's own first."""
    mu, logvar = model.encode(x)                                             # (B, D)
    b = x.shape[0]
    out = []
    for start in range(0, k, chunk):
        kc = min(chunk, k - start)
        eps = torch.randn(kc, b, mu.shape[1], device=x.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps                               # (kc, B, D)
        log_q = _log_normal(z, mu, logvar)                                    # (kc, B)
        log_pz = -0.5 * (LOG_2PI + z.square()).sum(-1)                       # (kc, B)
        xr = x.expand(kc, *x.shape).reshape(kc * b, *x.shape[1:])            # (kc·B, C, H, W)
        params = model.decode_pieces(z.reshape(kc * b, -1), xr)
        log_px = [model.likelihood.log_prob(params, xr).view(kc, b)]        # (kc, B)
        if mass:
            log_px.append(model.likelihood.log_mass(params, xr).view(kc, b))
        out.append(torch.stack([(lp + log_pz - log_q).T for lp in log_px]))  # (1 or 2, B, kc)
    lw = torch.cat(out, dim=2)
    return lw if mass else lw[0]


def iw_log_likelihood(model: VAE, x: torch.Tensor, k: int, chunk: int = 64, mass: bool = False) -> torch.Tensor:
    """The K-sample importance-weighted estimate of log p(x): (B,) nats (a lower bound in
    expectation; −log p(x) estimates are its negation). ``mass``: (2, B), the second under
    the 256-level mass (:func:`log_weights`)."""
    lw = log_weights(model, x, k, chunk, mass)
    return torch.logsumexp(lw.double(), dim=-1) - math.log(k)


def bits_per_dim(nll_nats: float, num_dims: int) -> float:
    """nats per example -> bits per dimension, nll / (D ln 2). An honest code length only when
    the nats are those of a probability mass of the data (see the module docstring)."""
    return nll_nats / (num_dims * math.log(2))


def aggregate_posterior_gap(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """KL(N(m, diag s²) || N(0, I)) for the moment-matched aggregate posterior q(z) = E_x q(z|x):
    m = mean of μ, s² = Var(μ) + E[σ²]. Large values mean prior samples land where the encoder
    never puts data ("holes"), so prior samples look poor."""
    m, cov = aggregate_moments(mu, logvar)
    s2 = cov.diagonal()
    return float(0.5 * (s2 + m.square() - 1 - s2.log()).sum())


def aggregate_moments(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), covariance (D, D)) of the aggregate posterior q(z) = E_x q(z|x), float64:
    E[μ] and Cov(μ) + diag(E[σ²]) over the examples (μ, logvar: (N, D))."""
    mu, var = mu.double(), logvar.double().exp()
    d = mu.shape[1]
    return mu.mean(0), torch.cov(mu.T, correction=0).reshape(d, d) + torch.diag(var.mean(0))


def aggregate_posterior_gap_full(mu: torch.Tensor, logvar: torch.Tensor) -> float:
    """KL(N(m, Σ) || N(0, I)) for the aggregate posterior moment-matched with its full covariance
    (:func:`aggregate_moments`): also counts the correlations between dims, which the diagonal
    ``aggregate_kl`` cannot see: codes spread along a diagonal band leave the prior's mass off it
    empty. Never below the diagonal one (Hadamard's inequality)."""
    m, cov = aggregate_moments(mu, logvar)
    return float(0.5 * (torch.trace(cov) + m @ m - m.shape[0] - torch.logdet(cov)))


def _mutual_info_discrete(a: torch.Tensor, b: torch.Tensor, na: int, nb: int) -> float:
    """I(A; B) in nats from paired integer codes a in [0, na), b in [0, nb)."""
    joint = torch.bincount(a * nb + b, minlength=na * nb).double().view(na, nb)
    p = joint / joint.sum()
    pa, pb = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * (p[nz] / (pa * pb).expand_as(p)[nz]).log()).sum())


def mig(mu: torch.Tensor, factors: torch.Tensor, names: Optional[Sequence[str]] = None, bins: int = 20) -> dict:
    """The mutual information gap (Chen et al. 2018, "Isolating sources of disentanglement"):
    for each ground-truth factor v_k, the gap between the two latent dims with the most mutual
    information about it, normalised by its entropy, (I(z_(1); v_k) − I(z_(2); v_k)) / H(v_k),
    averaged over factors. Posterior means are discretized into ``bins`` equal-width bins per
    dim (as in disentanglement_lib); factors are discrete (each distinct value a class). 1 = each
    factor lives in one dim alone, 0 = no dim stands out. Factors with one value are skipped.
    Returns {"mig": mean gap, "mig_per_factor": {name: gap}, "mig_top_dims": {name: [d1, d2]}}."""
    mu, factors = mu.detach().double().cpu(), factors.detach().cpu()
    n, d = mu.shape
    lo, hi = mu.min(0).values, mu.max(0).values
    codes = ((mu - lo) / (hi - lo).clamp_min(1e-12) * bins).long().clamp(0, bins - 1)   # (N, D)
    names = list(names) if names else [f"factor{k}" for k in range(factors.shape[1])]
    gaps, tops = {}, {}
    for k in range(factors.shape[1]):
        _, v = torch.unique(factors[:, k], return_inverse=True)
        nv = int(v.max()) + 1
        if nv < 2:
            continue
        pv = torch.bincount(v).double() / n
        h = float(-(pv * pv.log()).sum())
        mi = torch.tensor([_mutual_info_discrete(codes[:, j], v, bins, nv) for j in range(d)])
        order = torch.argsort(mi, descending=True)
        second = float(mi[order[1]]) if d > 1 else 0.0
        gaps[names[k]] = (float(mi[order[0]]) - second) / h
        tops[names[k]] = order[:2].tolist()
    return {"mig": sum(gaps.values()) / len(gaps) if gaps else None, "mig_per_factor": gaps, "mig_top_dims": tops}
