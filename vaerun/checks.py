"""Checks made while training: the step-0 audit of the loss terms and data, how hard each loss
term pulls on the encoder, and the one-time early KL-vanishing warning."""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch

from vaerun.data import Data
from vaerun.likelihoods import Bernoulli, ContinuousBernoulli, DiscretizedLogistic, Gaussian
from vaerun.models.vae import VAE
from vaerun.objectives import elbo_terms, kl_penalty, training_loss

log = logging.getLogger("vaerun")


@torch.no_grad()
def audit(model: VAE, data: Data, batch_size: int, beta0: float, beta: float, free_bits: float, seed: int,
          final_beta: Optional[float] = None, total_steps: Optional[int] = None) -> dict:
    """Each loss term on one training batch before the first step, in nats and nats per dimension,
    the effective β (and ``final_beta``, the schedule's β at the last of ``total_steps`` steps:
    a warm-up longer than the run never reaches ``beta``), and whether the likelihood suits the
    data. Returns a metrics record."""
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed + 31337)
    x = data.prepare(data.train.images[:batch_size], gen)                      # (B, C, H, W)
    model.eval()
    t = elbo_terms(model, x)
    model.train()
    dims, latent = x[0].numel(), t.kl_per_dim.shape[1]
    recon, kl = t.recon.mean().item(), t.kl.mean().item()
    binary = data.is_binary()
    notes = []
    lik = model.likelihood
    if isinstance(lik, Bernoulli) and not binary:
        notes.append(f"Bernoulli likelihood on grey levels ({data.name}): recon is a cross-entropy, not a "
                     "log-likelihood of the data (fix: dataset.binarize=dynamic for honest nats on binary "
                     "images, or a likelihood for grey levels: likelihood=logistic, continuous_bernoulli or gaussian)")
    sharpens = ("σ shrinks to exp(likelihood.min_log_sigma)" if isinstance(lik, Gaussian) and lik.learn_sigma != "none"
                else "λ runs to 0 or 1" if isinstance(lik, ContinuousBernoulli) else None)
    # on binary data the fix is the Bernoulli, or for binarized grey levels the grey levels themselves
    to_binary = "likelihood=bernoulli" + (", or dataset.binarize=none to model the grey levels"
                                          if data.binarize != "none" else "")
    if binary and sharpens:
        notes.append(f"density on binary data ({type(lik).__name__} on {data.name}): on pixels that are all 0 or 1 a "
                     f"density grows without bound as the model sharpens ({sharpens}), so the ELBO climbs "
                     f"past 0 and its nats are not comparable with a likelihood's (fix: {to_binary})")
    if binary and isinstance(lik, DiscretizedLogistic):
        notes.append(f"256-level likelihood on binary data (discretized logistic on {data.name}): it spreads its "
                     f"mass over the 256 grey levels where the data take two, and reaches them only with its "
                     f"mean pressed against ±1 and a small scale, so it trains far worse than a Bernoulli "
                     f"(docs/guide.md, likelihood) (fix: {to_binary})")
    saturated = data.saturated_share()
    if not binary and lik.continuous and saturated > 0.5:
        notes.append(f"density on pixels piled at 0 and 255 ({type(lik).__name__} on {data.name}: "
                     f"{100 * saturated:.1f} % of the training pixels): at those two levels a density can grow "
                     f"without bound as the model sharpens, so its nats and bits/dim (bpd_density) can flatter "
                     f"it without limit; only bpd, the mass of each level's bin, is a code length (fix: "
                     f"likelihood=logistic, a mass on the 256 levels)")
    if isinstance(lik, Gaussian) and lik.learn_sigma == "none":
        sigma, spread = float(lik.sigma().max()), float(x.std())
        if sigma > 0.5 * spread:
            notes.append(f"fixed Gaussian σ={sigma:.3g} is wide against the data's spread (std {spread:.3g}): "
                         f"reconstruction is weak against KL and samples will be blurry "
                         f"(fix: likelihood.learn_sigma=global or a smaller likelihood.sigma)")
    if final_beta is not None and total_steps and unfinished_schedule(final_beta, beta, beta0):
        notes.append(f"β warm-up longer than the run: the last of its {total_steps} steps trains at β={final_beta:.3g}, "
                     f"not beta={beta:g}, so the model never trains at its target objective "
                     f"(fix: schedule.warmup_steps={max(1, total_steps // 5)}, or a longer run)")
    if batch_size > len(data.train):
        notes.append(f"batch_size={batch_size} is more than the {len(data.train)} training examples: every step takes "
                     f"all of them at once (one step per epoch{f', {total_steps} steps in all' if total_steps else ''})"
                     f" (fix: batch_size={min(128, len(data.train))}, or batch_size={len(data.train)} to say "
                     f"full-batch training)")
    if kl / latent > 50:
        notes.append(f"initial KL is {kl / latent:.0f} nats per latent dim: the initialisation makes the "
                     f"posterior far from the prior (fix: model.init=xavier or a lower optimizer.lr)")
    rec = {"step": 0, "split": "audit", "recon": recon, "recon_per_data_dim": recon / dims, "kl": kl,
           "kl_per_latent_dim": kl / latent, "beta_start": beta0, "beta": beta, "free_bits": free_bits,
           "free_bits_floor": free_bits * latent, "weighted_kl": beta0 * kl_penalty(t.kl_per_dim, free_bits).item(),
           "data_min": float(x.min()), "data_max": float(x.max()), "data_mean": float(x.mean()), "binary": binary,
           "saturated_share": saturated,
           "likelihood": type(lik).__name__.lower(), "notes": notes}
    if final_beta is not None:
        rec["final_beta"] = final_beta
    log.info("step-0 audit: recon %.2f nats (%.4f per data dim) | KL %.2f nats (%.3f per latent dim) | β %.3g -> %.3g "
             "| free bits %.3g nats/dim | data in [%.3g, %.3g]%s", recon, recon / dims, kl, kl / latent, beta0, beta,
             free_bits, rec["data_min"], rec["data_max"], ", binary" if binary else "")
    for note in notes:
        log.warning("audit: %s", note)
    return rec


def unfinished_schedule(final_beta: float, beta: float, beta_start: float) -> bool:
    """True when a β schedule ends more than 1 % (of its range) away from its target ``beta``."""
    return abs(final_beta - beta) > 0.01 * max(abs(beta), abs(beta_start), 1e-12)


def term_grad_norms(model: VAE, x: torch.Tensor, beta: float, free_bits: float,
                    capacity: Optional[tuple[float, float]] = None) -> dict:
    """How hard each term of the objective pulls on the encoder on batch x: ‖∂recon/∂φ‖ and the
    norm of the rest of :func:`training_loss`'s gradient (β·KL with free bits, or β·γ|KL − C|
    with ``capacity`` = (γ, C))."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    t = elbo_terms(model, x)
    recon = t.recon.mean()
    g_rec = torch.autograd.grad(recon, params, retain_graph=True, allow_unused=True)
    g_kl = torch.autograd.grad(training_loss(t, beta, free_bits, capacity) - recon, params, allow_unused=True)

    def norm(grads) -> float:
        return math.sqrt(sum(float(g.double().square().sum()) for g in grads if g is not None))

    return {"grad_norm_recon_enc": norm(g_rec), "grad_norm_kl_enc": norm(g_kl)}


class CollapseWatch:
    """Warns once when latent dims fall below ``threshold`` nats of KL early in training."""

    def __init__(self, threshold: float, early_steps: int, remedies: Sequence[str] = ()):
        self.threshold, self.early_steps, self.warned = threshold, early_steps, False
        self.remedies = list(remedies)  # fitted to the run (diagnose.collapse_remedies): none of its own settings

    def check(self, step: int, kl_per_dim: list[float]) -> None:
        low = [d for d, k in enumerate(kl_per_dim) if k < self.threshold]
        if self.warned or step > self.early_steps or not low:
            return
        self.warned = True
        log.warning("KL vanishing early: %d of %d latent dims carry < %g nats at step %d (dims %s): posterior "
                    "collapse is starting.%s `vaerun diagnose` explains more after the run.",
                    len(low), len(kl_per_dim), self.threshold, step, low[:10],
                    f" Next time try {' or '.join(self.remedies)};" if self.remedies else "")
