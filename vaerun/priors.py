"""Densities over z to sample from: the prior N(0, I), or one fitted to where the encoder puts the
data (the aggregate posterior q(z) = E_x q(z|x)).

A VAE whose reconstructions are good but whose prior samples are poor has a "prior hole": the
aggregate posterior misses the prior, so z ~ N(0, I) lands where the decoder saw no data (the
`imbalance` check's "reconstruction dominates", `aggregate_kl` in nats). Fitting a density to
encoded training data after training and sampling z from it instead ("ex-post density
estimation", Ghosh et al. 2020, "From variational to deterministic autoencoders", who fit a
10-component Gaussian mixture) draws z where the data is, without retraining:

- ``gaussian``: one full-covariance Gaussian, moment-matched to q(z): mean E[μ], covariance
  Cov(μ) + E[diag σ²] (``aggregate_kl`` is the KL from its diagonal to the prior);
- ``gmm``: a K-component full-covariance Gaussian mixture fitted by EM to one draw z ~ q(z|x) per
  training example.

Each gives ``log_prob`` too, so the fit can be judged on held-out (validation) codes in nats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

KINDS = ("prior", "gaussian", "gmm")


@dataclass
class Mixture:
    """A Gaussian mixture over z: ``weights`` (K,), ``means`` (K, D), ``scale_tril`` (K, D, D),
    float64. The prior is the one-component mixture N(0, I)."""

    weights: torch.Tensor
    means: torch.Tensor
    scale_tril: torch.Tensor
    kind: str = "prior"

    def joint(self, z: torch.Tensor) -> torch.Tensor:
        """log(w_k · N(z; m_k, Σ_k)) in nats, (N, K), for z (N, D)."""
        dist = torch.distributions.MultivariateNormal(self.means, scale_tril=self.scale_tril)
        return dist.log_prob(z.double()[:, None, :]) + self.weights.log()

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log g(z) in nats, (N,), for z (N, D)."""
        return torch.logsumexp(self.joint(z), dim=1)

    def sample(self, n: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n draws (n, D), float32: a component by its weight, then its mean plus T x its spread."""
        device = self.means.device
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)          # (n,)
        eps = torch.randn(n, self.means.shape[1], 1, generator=generator, device=device, dtype=torch.float64)
        return (self.means[k] + temperature * (self.scale_tril[k] @ eps).squeeze(-1)).float()

    def describe(self) -> str:
        k = self.weights.shape[0]
        return ("the prior N(0, I)" if self.kind == "prior" else
                "a full-covariance Gaussian moment-matched to q(z)" if self.kind == "gaussian" else
                f"a {k}-component Gaussian mixture fitted to q(z)")


def standard_normal(dim: int, device="cpu") -> Mixture:
    eye = torch.eye(dim, dtype=torch.float64, device=device)
    return Mixture(torch.ones(1, dtype=torch.float64, device=device), torch.zeros(1, dim, dtype=torch.float64,
                   device=device), eye[None], "prior")


def moment_matched(mu: torch.Tensor, logvar: torch.Tensor, jitter: float = 1e-6) -> Mixture:
    """One full-covariance Gaussian with the aggregate posterior's mean and covariance:
    E[μ] and Cov(μ) + E[diag σ²] over the examples (μ, logvar: (N, D))."""
    from vaerun.metrics import aggregate_moments

    mean, cov = aggregate_moments(mu, logvar)
    cov = cov + jitter * torch.eye(mu.shape[1], dtype=cov.dtype, device=cov.device)
    return Mixture(torch.ones(1, dtype=torch.float64, device=mu.device), mean[None],
                   torch.linalg.cholesky(cov)[None], "gaussian")


def fit_gmm(z: torch.Tensor, components: int = 10, iters: int = 200, seed: int = 0, reg: float = 1e-4,
            tol: float = 1e-7) -> Mixture:
    """A full-covariance Gaussian mixture fitted to points z (N, D) by expectation-maximisation:
    means started at K distinct points drawn with k-means++ seeding, every covariance at the
    data's, ``reg`` added to each covariance's diagonal (so no component shrinks onto one point),
    stopped when the mean log-likelihood gains less than ``tol`` nats. Deterministic for a seed."""
    z = z.double()
    n, d = z.shape
    k = max(1, min(components, n))
    gen = torch.Generator(device=z.device).manual_seed(seed)
    centres = [int(torch.randint(n, (1,), generator=gen, device=z.device))]
    for _ in range(1, k):  # k-means++: each next centre far from those chosen
        d2 = torch.cdist(z, z[centres]).square().min(dim=1).values
        centres.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=gen)) if d2.sum() > 0 else centres[-1])
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    means = z[centres].clone()
    covs = (torch.cov(z.T, correction=0).reshape(d, d) + reg * eye).expand(k, d, d).clone()
    weights = torch.full((k,), 1.0 / k, dtype=z.dtype, device=z.device)
    previous = -math.inf
    for _ in range(iters):
        joint = Mixture(weights, means, torch.linalg.cholesky(covs), "gmm").joint(z)  # (N, K)
        ll = torch.logsumexp(joint, dim=1)
        resp = (joint - ll[:, None]).exp()                                    # (N, K) responsibilities
        mean_ll = float(ll.mean())
        if mean_ll - previous < tol:
            break
        previous = mean_ll
        nk = resp.sum(0) + 1e-12
        weights = nk / n
        means = (resp.T @ z) / nk[:, None]
        centred = z[:, None, :] - means[None]                                 # (N, K, D)
        covs = torch.einsum("nk,nkd,nke->kde", resp, centred, centred) / nk[:, None, None] + reg * eye
    return Mixture(weights, means, torch.linalg.cholesky(covs), "gmm")


@torch.no_grad()
def fit_to_codes(model, data, kind: str, components: int = 10, examples: int = 10000, seed: int = 0,
                 data_seed: int = 0) -> tuple[Mixture, dict]:
    """The density ``kind`` fitted to the posteriors of the first ``examples`` training images,
    and how it explains held-out codes: ``{"fitted_ll", "prior_ll", "gain", "n_fit", "n_val"}``,
    the mean log density (nats) of one draw z ~ q(z|x) per validation image (as many) under it and
    under the prior, and their difference (how far the prior misses the aggregate posterior).
    ``data_seed``: the run's seed, for dynamic binarization as in its evaluation."""
    from vaerun.pictures import posterior

    train = posterior(model, data, "train", max_examples=examples, seed=data_seed)
    density = fit(kind, train["mu"], train["logvar"], components, seed=seed)
    val = posterior(model, data, "val", max_examples=examples, seed=data_seed)
    gen = torch.Generator(device=val["mu"].device).manual_seed(seed + 15485863)
    z = val["mu"] + (0.5 * val["logvar"]).exp() * torch.randn(val["mu"].shape, generator=gen, device=gen.device)
    fitted, prior = float(density.log_prob(z).mean()), float(standard_normal(z.shape[1], z.device).log_prob(z).mean())
    return density, {"fitted_ll": fitted, "prior_ll": prior, "gain": fitted - prior, "n_fit": train["mu"].shape[0],
                     "n_val": z.shape[0]}


def fit(kind: str, mu: torch.Tensor, logvar: torch.Tensor, components: int = 10, seed: int = 0) -> Mixture:
    """The density ``kind`` (one of KINDS) from posteriors (μ, logvar): (N, D) each."""
    if kind == "prior":
        return standard_normal(mu.shape[1], mu.device)
    if kind == "gaussian":
        return moment_matched(mu, logvar)
    if kind == "gmm":
        gen = torch.Generator(device=mu.device).manual_seed(seed + 7919)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=gen, device=mu.device)  # one draw each
        return fit_gmm(z, components, seed=seed)
    raise ValueError(f"unknown density {kind!r}; choose one of {', '.join(KINDS)}")
