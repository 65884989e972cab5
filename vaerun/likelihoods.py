"""Observation models p(x|z) as objects: ``log_prob`` / ``mean`` / ``sample`` on decoder outputs.

A decoder emits ``params`` of shape (B, C*K, H, W), channel-major: data channel c owns the K
parameter maps ``params[:, c*K:(c+1)*K]`` (K = ``params_per_channel``). This layout lets an
autoregressive decoder mask by data channel. ``log_prob`` returns nats per example, summed over
every data dimension, normalising constants included.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _per_channel(params: torch.Tensor, k: int) -> torch.Tensor:
    b, ck, h, w = params.shape
    return params.view(b, ck // k, k, h, w)  # (B, C, K, H, W)


class Likelihood(nn.Module):
    """Base class; subclasses may own learned parameters (e.g. a global σ)."""

    params_per_channel: int = 1

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B,) nats
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        raise NotImplementedError

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """p(x|z) = Π Bernoulli(x_i; sigmoid(logit_i)). On grey levels this is a cross-entropy, not a
    likelihood of the data: binarize the data for an honest NLL (vaerun warns)."""

    params_per_channel = 1

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        nll = F.binary_cross_entropy_with_logits(params, x, reduction="none")  # (B, C, H, W)
        return -nll.flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class Gaussian(Likelihood):
    """p(x|z) = Π Normal(x_i; μ_i, σ²), σ fixed, learned (global or per channel), or predicted
    per pixel by the decoder. log σ is clamped to [min_log_sigma, max_log_sigma]."""

    def __init__(self, channels: int, sigma: float = 0.1, learn_sigma: str = "none",
                 min_log_sigma: float = -6.0, max_log_sigma: float = 2.0):
        super().__init__()
        if learn_sigma not in ("none", "global", "channel", "pixel"):
            raise ValueError(f"learn_sigma must be none, global, channel or pixel, not {learn_sigma!r}")
        self.learn_sigma, self.min_log_sigma, self.max_log_sigma = learn_sigma, min_log_sigma, max_log_sigma
        self.params_per_channel = 2 if learn_sigma == "pixel" else 1
        init = torch.full((channels if learn_sigma == "channel" else 1,), math.log(sigma))
        if learn_sigma in ("global", "channel"):
            self.log_sigma = nn.Parameter(init)
        else:
            self.register_buffer("log_sigma", init)

    def _mean_logsigma(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = _per_channel(params, self.params_per_channel)          # (B, C, K, H, W)
        mu = p[:, :, 0]                                             # (B, C, H, W)
        if self.learn_sigma == "pixel":
            log_sigma = p[:, :, 1]
        else:
            log_sigma = self.log_sigma.view(1, -1, 1, 1)            # (1, C or 1, 1, 1)
        return mu, log_sigma.clamp(self.min_log_sigma, self.max_log_sigma)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self._mean_logsigma(params)
        z = (x - mu) * torch.exp(-log_sigma)
        lp = -0.5 * z.square() - log_sigma - _HALF_LOG_2PI            # (B, C, H, W)
        return lp.flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._mean_logsigma(params)[0]

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        mu, log_sigma = self._mean_logsigma(params)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + log_sigma.exp() * eps

    def sigma(self) -> torch.Tensor:
        """The current σ (global or per channel); meaningless for ``pixel``."""
        return self.log_sigma.detach().clamp(self.min_log_sigma, self.max_log_sigma).exp()


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def build_likelihood(name: str, channels: int, **kwargs) -> Likelihood:
    """Registry lookup; ``kwargs`` go to the class (Bernoulli takes none)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    if name == "bernoulli":
        return Bernoulli()
    return LIKELIHOODS[name](channels, **kwargs)
