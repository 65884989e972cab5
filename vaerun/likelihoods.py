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


def level_bins(x: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The bin of each 8-bit level x = v/255: [x − ½/255, x + ½/255], the two edge bins reaching
    out to the support's ends ``low`` and ``high`` (e.g. ±inf), so that the 256 bins partition it
    and a density's bin masses sum to 1 (as the discretized logistic's edge bins take its tails)."""
    half = 0.5 / 255
    lower = torch.where(x <= half, torch.full_like(x, low), x - half)
    upper = torch.where(x >= 1 - half, torch.full_like(x, high), x + half)
    return lower, upper


class Likelihood(nn.Module):
    """Base class; subclasses may own learned parameters (e.g. a global σ)."""

    params_per_channel: int = 1
    continuous: bool = False  # a density on [0, 1] (its log_prob is not a code length), not a mass
    unit_gradient: bool = False  # |d log_prob / d params| ≤ 1 per entry for every x in [0, 1] (models/fused.py)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # (B,) nats
        raise NotImplementedError

    def log_mass(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log P(x|z) of 8-bit data x = v/255 as a probability mass on the 256 levels, (B,) nats,
        summed over dimensions: what bits/dim is an honest code length of. A mass likelihood's
        own ``log_prob``; a density integrates over each level's bin (:func:`level_bins`)."""
        return self.log_prob(params, x)

    def log_prob_grad(self, params: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log_prob (B,), d log_prob_b / d params (B, C*K, H, W)), without a graph kept: for a
        backward written out by hand (models/fused.py). Autograd here; subclasses with a closed
        form override it."""
        with torch.enable_grad():
            p = params.detach().requires_grad_()
            lp = self.log_prob(p, x)
            grad, = torch.autograd.grad(lp.sum(), p)
        return lp.detach(), grad

    def mean(self, params: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        raise NotImplementedError

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """p(x|z) = Π Bernoulli(x_i; sigmoid(logit_i)). On grey levels this is a cross-entropy, not a
    likelihood of the data: binarize the data for an honest NLL (vaerun warns)."""

    params_per_channel = 1
    unit_gradient = True  # on x in [0, 1], |d log p / d η| = |x − σ(η)| ≤ 1 per entry

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x log σ(η) + (1 − x) log(1 − σ(η)) = xη − softplus(η), summed over pixels: a product, one
        softplus and a subtraction, where binary_cross_entropy_with_logits' composite makes about
        six passes (log-sigmoid with its buffer, a fill, subtractions, a product). The same values
        to float rounding; side by side when it came in: 13 % more importance samples per second
        for the MNIST MLP, written-out steps 3 % shorter at batch 128 and 1024, autograd no slower."""
        return (x * params).sub_(F.softplus(params)).flatten(1).sum(1)  # (B,)

    def log_prob_grad(self, params: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """d/dη [x log σ(η) + (1 − x) log(1 − σ(η))] = x − σ(η)."""
        return self.log_prob(params, x), x - torch.sigmoid(params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params), generator=generator)


class Gaussian(Likelihood):
    """p(x|z) = Π Normal(x_i; μ_i, σ²), σ fixed, learned (global or per channel), or predicted
    per pixel by the decoder. log σ is clamped to [min_log_sigma, max_log_sigma]."""

    continuous = True

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

    def log_mass(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log ∫ over each level's bin of N(μ, σ²): log(Φ(b) − Φ(a)) with a, b the bin's edges
        in units of σ, the edge bins taking the tails; computed on the side of the mean where
        the difference does not cancel (Φ(b) − Φ(a) = Φ(−a) − Φ(−b))."""
        mu, log_sigma = self._mean_logsigma(params)
        lower, upper = level_bins(x, -math.inf, math.inf)
        inv = torch.exp(-log_sigma)
        a, b = (lower - mu) * inv, (upper - mu) * inv                   # (B, C, H, W), a < b
        flip = a > 0                                                     # both edges above the mean
        a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
        log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
        lp = log_b + torch.log(-torch.expm1((log_a - log_b).clamp(max=-1e-12)))
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


class ContinuousBernoulli(Likelihood):
    """p(x|λ) = C(λ) λ^x (1−λ)^(1−x) on x ∈ [0, 1] (Loaiza-Ganem & Cunningham 2019): the
    Bernoulli's kernel made a proper density on grey levels by its normalising constant. With the
    decoder's logit η (λ = sigmoid(η)): C = η / tanh(η/2) (2 at η = 0), mean 1/(1 − e^−η) − 1/η,
    CDF (e^{ηx} − 1)/(e^η − 1). Near η = 0 the closed forms cancel, so Taylor series take over. A
    density on [0, 1]: its code length for 8-bit data is :meth:`log_mass`, like the Gaussian's."""

    params_per_channel = 1
    continuous = True
    _NEAR = 1e-2  # |η| below this: Taylor series (error ~η⁶)

    @classmethod
    def log_norm(cls, eta: torch.Tensor) -> torch.Tensor:
        """log C(λ) for λ = sigmoid(η)."""
        near = eta.abs() < cls._NEAR
        safe = torch.where(near, torch.ones_like(eta), eta)
        far = torch.log(safe.abs()) - torch.log(torch.tanh(safe / 2).abs())
        t = eta.square()
        return torch.where(near, math.log(2.0) + torch.log1p(t / 12 - t.square() / 720), far)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lp = x * params - F.softplus(params) + self.log_norm(params)      # (B, C, H, W)
        return lp.flatten(1).sum(1)

    def log_mass(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log ∫ over each level's bin [a, b] ⊂ [0, 1] of the density: with the CDF above,
        (e^{ηb} − e^{ηa}) / (e^η − 1). For η > 0 its log is η(b − 1) + log(1 − e^{−η(b−a)}) −
        log(1 − e^{−η}); η < 0 is the same on the mirrored bin (x → 1 − x, η → −η). |η| is kept
        at least 1e-6 (the mass's error there is below 1e-6 relative)."""
        lower, upper = level_bins(x, 0.0, 1.0)
        pos = params >= 0
        eta = params.abs().clamp(min=1e-6)
        b = torch.where(pos, upper, 1 - lower)                           # the bin's upper edge, mirrored for η < 0
        width = upper - lower
        lp = eta * (b - 1) + torch.log(-torch.expm1(-eta * width)) - torch.log(-torch.expm1(-eta))
        return lp.flatten(1).sum(1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        near = params.abs() < self._NEAR
        safe = torch.where(near, torch.ones_like(params), params)
        far = -1 / torch.expm1(-safe) - 1 / safe
        return torch.where(near, 0.5 + params / 12 - params ** 3 / 720, far)

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Inverse CDF, stable for large |η|: x = 1 + log(u + (1 − u)e^−η)/η for η > 0,
        log1p(u·(e^η − 1))/η for η < 0, u near η = 0."""
        u = torch.rand(params.shape, generator=generator, device=params.device, dtype=params.dtype)
        near = params.abs() < 1e-4
        safe = torch.where(near, torch.ones_like(params), params)
        pos = 1 + torch.log(u + (1 - u) * torch.exp(-safe.clamp(min=0))) / safe
        neg = torch.log1p(u * torch.expm1(safe.clamp(max=0))) / safe
        return torch.where(near, u, torch.where(safe > 0, pos, neg)).clamp(0, 1)


class DiscretizedLogistic(Likelihood):
    """A mixture of ``mixtures`` logistics per channel, discretized to the 256 levels of 8-bit
    images (PixelCNN++, Salimans et al. 2017; VDVAE): P(x) = Σ_k π_k [F((x' + ½w − μ_k)/s_k) −
    F((x' − ½w − μ_k)/s_k)] with x' = 2x − 1 ∈ [−1, 1], bin width w = 2/255, F the logistic CDF,
    and the two edge bins taking the tails. A probability mass, so its nats are an honest discrete
    NLL and bits/dim need no conversion. Parameters per channel: K mixture logits, K means,
    K log-scales (channel-major like every likelihood here); for K = 1 only the mean and the
    log-scale (a lone mixture logit has no effect and no gradient: it would cost the decoder a
    third of its output layer for nothing)."""

    continuous = False

    def __init__(self, channels: int, mixtures: int = 1, min_log_scale: float = -7.0):
        super().__init__()
        if mixtures < 1:
            raise ValueError(f"mixtures must be >= 1, not {mixtures}")
        self.mixtures, self.min_log_scale = mixtures, min_log_scale
        self.params_per_channel = 2 if mixtures == 1 else 3 * mixtures

    def _split(self, params: torch.Tensor):
        """(mixture logits or None for K = 1, means, log-scales), each (B, C, K, H, W)."""
        p = _per_channel(params, self.params_per_channel)               # (B, C, 3K or 2, H, W)
        k = self.mixtures
        logit_pi = p[:, :, :k] if k > 1 else None
        rest = p[:, :, k:] if k > 1 else p
        return logit_pi, torch.tanh(rest[:, :, :k]), rest[:, :, k:].clamp(min=self.min_log_scale)

    @staticmethod
    def _standardised(xs: torch.Tensor, mu: torch.Tensor, log_s: torch.Tensor):
        """(t+, t−, m, 1/s): the bin's upper and lower edge and its centre x' in units of the
        scale, t± = (x' − μ ± 1/255)/s, m = (x' − μ)/s."""
        centred, inv_s = xs - mu, torch.exp(-log_s)
        return inv_s * (centred + 1 / 255), inv_s * (centred - 1 / 255), inv_s * centred, inv_s

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logit_pi, mu, log_s = self._split(params)
        xs = (2 * x - 1).unsqueeze(2)                                   # (B, C, 1, H, W)
        plus, minus, mid, _ = self._standardised(xs, mu, log_s)
        log_cdf_plus = plus - F.softplus(plus)                          # log F(plus)
        log_one_minus_cdf_min = -F.softplus(minus)                      # log (1 − F(minus))
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        log_pdf_mid = mid - log_s - 2 * F.softplus(mid) - math.log(127.5)
        log_delta = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
        log_bin = torch.where(xs < -0.999, log_cdf_plus, torch.where(xs > 0.999, log_one_minus_cdf_min, log_delta))
        if logit_pi is None:                                            # one logistic: its bin
            return log_bin.flatten(1).sum(1)
        lp = torch.logsumexp(log_bin + F.log_softmax(logit_pi, dim=2), dim=2)   # (B, C, H, W)
        return lp.flatten(1).sum(1)

    def log_prob_grad(self, params: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One logistic (K = 1) in closed form, differentiated as autograd differentiates
        :meth:`log_prob` (softplus's linear branch above 20, no gradient at or below the floor, only the
        chosen branch of each ``where``), in 0.6 of autograd's time at batch 128 (2.2 vs 3.6 ms on
        2 CPU cores; the MNIST grey-level MLP's training loop 1.18x faster, `make bench` section
        logistic); a mixture goes through autograd. With a = the mean's raw output, b = the log-scale's, μ = tanh a,
        ℓ = max(b, floor), 1/s = exp(−ℓ), t± = (x' − μ ± 1/255)/s and m = (x' − μ)/s:
        edge bins log σ(t+) (x = 0) and −softplus(t−) (x = 1), inner bins log(σ(t+) − σ(t−)), or
        where that difference is below 1e-5 the density at the centre, m − ℓ − 2 softplus(m) −
        log 127.5. Then ∂/∂μ = −(g+ + g− + gm)/s, ∂/∂ℓ = −(t+ g+ + t− g− + m gm) − [centre]."""
        if self.mixtures > 1:
            return super().log_prob_grad(params, x)
        _, mu, log_s = self._split(params)                              # (B, C, 1, H, W) each
        xs = (2 * x - 1).unsqueeze(2)
        plus, minus, mid, inv_s = self._standardised(xs, mu, log_s)
        sp_plus, sp_minus, sp_mid = F.softplus(plus), F.softplus(minus), F.softplus(mid)
        s_plus, s_minus, s_mid = torch.sigmoid(plus), torch.sigmoid(minus), torch.sigmoid(mid)
        cdf_delta = s_plus - s_minus
        if params.dtype == torch.float64:  # softplus's backward is 1 above 20; σ(t) is 1 there in float32 anyway
            s_plus, s_minus, s_mid = (s.masked_fill(t > 20, 1.0) for s, t in ((s_plus, plus), (s_minus, minus),
                                                                              (s_mid, mid)))
        low, high = (xs < -0.999).to(x.dtype), (xs > 0.999).to(x.dtype)    # the edge bins: x = 0, x = 1
        inner = 1 - low - high
        by_delta = (cdf_delta > 1e-5).to(x.dtype).mul_(inner)
        at_centre = inner - by_delta
        delta = cdf_delta.clamp_(min=1e-12)
        # each branch where it applies, 0 elsewhere (every branch is finite everywhere): the sum is
        # the chosen branch exactly, as log_prob's torch.where gives it
        lp = (plus - sp_plus).mul_(low).sub_(sp_minus * high).add_(torch.log(delta).mul_(by_delta)) \
            .add_((mid - log_s - 2 * sp_mid - math.log(127.5)).mul_(at_centre))
        by_delta = by_delta / delta
        one_minus_plus = 1 - s_plus
        g_plus = (one_minus_plus * low).add_(s_plus * one_minus_plus * by_delta)
        g_minus = (s_minus * high).add_(s_minus * (1 - s_minus) * by_delta).neg_()
        g_mid = (1 - 2 * s_mid).mul_(at_centre)
        p = _per_channel(params, 2)                                     # (B, C, 2, H, W): raw mean, log-scale
        grad = torch.empty_like(p)
        torch.mul((g_plus + g_minus + g_mid).mul_(inv_s), mu * mu - 1, out=grad[:, :, :1])  # ∂/∂a via tanh'
        g_log_s = (plus * g_plus).add_(minus * g_minus).add_(mid * g_mid).add_(at_centre).neg_()
        torch.mul(g_log_s, p[:, :, 1:] > self.min_log_scale, out=grad[:, :, 1:])  # no gradient at or below the floor, as autograd's clamp
        return lp.flatten(1).sum(1), grad.view_as(params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mixture's mean with each logistic clamped to [−1, 1] (the edge bins take the tails):
        E[clamp(X, −1, 1)] = −1 + s·(softplus((μ + 1)/s) − softplus((μ − 1)/s)), mapped to [0, 1]."""
        logit_pi, mu, log_s = self._split(params)
        s = log_s.exp()
        clamped = -1 + s * (F.softplus((mu + 1) / s) - F.softplus((mu - 1) / s))    # (B, C, K, H, W)
        if logit_pi is None:
            return (clamped.squeeze(2) + 1) / 2
        return ((torch.softmax(logit_pi, dim=2) * clamped).sum(2) + 1) / 2

    def sample(self, params: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        logit_pi, mu, log_s = self._split(params)
        b, c, k, h, w = mu.shape
        if logit_pi is None:
            m, s = mu.squeeze(2), log_s.squeeze(2).exp()
        else:
            probs = torch.softmax(logit_pi, dim=2).permute(0, 1, 3, 4, 2).reshape(-1, k)
            pick = torch.multinomial(probs, 1, generator=generator).view(b, c, h, w, 1).permute(0, 1, 4, 2, 3)
            m, s = mu.gather(2, pick).squeeze(2), log_s.gather(2, pick).squeeze(2).exp()
        u = torch.rand(m.shape, generator=generator, device=m.device, dtype=m.dtype).clamp(1e-5, 1 - 1e-5)
        xs = (m + s * (torch.log(u) - torch.log1p(-u))).clamp(-1, 1)     # logistic inverse CDF
        return torch.round((xs + 1) / 2 * 255) / 255                     # onto the 256 levels


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian, "continuous_bernoulli": ContinuousBernoulli,
               "logistic": DiscretizedLogistic}


def build_likelihood(name: str, channels: int, **kwargs) -> Likelihood:
    """Registry lookup; each class takes only the ``kwargs`` it uses (sigma/learn_sigma/... for
    the Gaussian, mixtures for the logistic)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    if name in ("bernoulli", "continuous_bernoulli"):
        return LIKELIHOODS[name]()
    if name == "logistic":
        return DiscretizedLogistic(channels, mixtures=kwargs.get("mixtures", 1))
    kwargs.pop("mixtures", None)
    return Gaussian(channels, **kwargs)
