"""build(cfg) -> Parts; train_step; evaluate; train(...) -> summary.

The only module that reads the config object: it turns the typed config into typed arguments
for the components, then runs the loop. Losses are nats per example (see objectives.py).
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from vaerun.config import TrainConfig, validate
from vaerun.data import Data, load_data
from vaerun.errors import ConfigError
from vaerun.likelihoods import build_likelihood
from vaerun.models import VAE, build_vae
from vaerun.objectives import elbo_terms, kl_penalty, training_loss
from vaerun.optim import build_lr_scheduler, build_optimizer, is_per_step
from vaerun.schedules import build_schedule

log = logging.getLogger("vaerun")


@dataclass
class Parts:
    data: Data
    model: VAE
    optimizer: torch.optim.Optimizer
    lr_scheduler: Optional[object]
    schedule: Callable[[int], float]
    device: torch.device
    steps_per_epoch: int
    total_steps: int


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available[name]:
        raise ConfigError("device", name, f"{name} is not available on this machine", "use device=auto or device=cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


def build(cfg: TrainConfig) -> Parts:
    """Validates the config, then builds data -> likelihood -> model -> schedule -> optimizer."""
    validate(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device.value)
    d, m, lk, s, o = cfg.dataset, cfg.model, cfg.likelihood, cfg.schedule, cfg.optimizer
    data = load_data(d.name.value, root=d.root, path=d.path, download=d.download, image_size=d.image_size,
                     channels=d.channels, num_examples=d.num_examples, val_size=d.val_size, test_size=d.test_size,
                     subset=d.subset, binarize=d.binarize.value, seed=cfg.seed)
    if lk.name.value == "bernoulli" and not data.is_binary():
        log.warning("Bernoulli likelihood on non-binary data (%s has grey levels): recon is then a cross-entropy, "
                    "not a log-likelihood of the data. For honest nats use dataset.binarize=dynamic, or "
                    "likelihood=gaussian.", data.name)
    likelihood = build_likelihood(lk.name.value, data.shape[0], sigma=lk.sigma, learn_sigma=lk.learn_sigma.value,
                                  min_log_sigma=lk.min_log_sigma, max_log_sigma=lk.max_log_sigma)
    try:
        model = build_vae(m.name.value, data.shape, likelihood, latent_dim=m.latent_dim, hidden=list(m.hidden),
                          channels=list(m.channels), kernel=m.kernel, activation=m.activation.value,
                          init=m.init.value)
    except ValueError as err:
        raise ConfigError("model.channels", list(m.channels), f"{err} (dataset.image_size={data.shape[-1]})",
                          "use fewer stages (e.g. model.channels=[32,64]), a smaller model.kernel, or a "
                          "larger dataset.image_size") from err
    model.to(device)
    data = data.to(device)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    schedule = build_schedule(s.name.value, beta=cfg.beta, beta_start=s.beta_start, warmup_steps=s.warmup_steps,
                              delay_steps=s.delay_steps, cycles=s.cycles, ratio=s.ratio, total_steps=total)
    optimizer = build_optimizer(model.parameters(), o.name.value, lr=o.lr, weight_decay=o.weight_decay,
                                betas=tuple(o.betas), eps=o.eps, momentum=o.momentum)
    lr_scheduler = build_lr_scheduler(optimizer, o.lr_scheduler.value, total_steps=total, step_size=o.lr_step_size,
                                      gamma=o.lr_gamma, patience=o.lr_patience, lr_min=o.lr_min)
    return Parts(data, model, optimizer, lr_scheduler, schedule, device, steps_per_epoch, total)


def train_step(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, beta: float, free_bits: float,
               grad_clip: float, measure_grad: bool = False):
    """One optimizer step on batch x. Returns (loss, terms, grad_norm or None), all on the device."""
    terms = elbo_terms(model, x)
    loss = training_loss(terms, beta, free_bits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = None
    if grad_clip > 0 or measure_grad:  # the norm before clipping; inf max_norm only measures
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    return loss.detach(), terms, grad_norm


@torch.inference_mode()
def evaluate(model: VAE, data: Data, split: str, batch_size: int, *, beta: float = 1.0, free_bits: float = 0.0,
             seed: int = 0) -> dict:
    """Mean per-example recon, KL, ELBO (at β = 1) and KL per dimension over a whole split.
    ``loss`` is the β-weighted training objective at the given β, for comparison only.
    Dynamic binarization uses a fixed seed, so every evaluation sees the same draw."""
    model.eval()
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed + 104729)
    n, recon, kl_dim, penalty = 0, 0.0, 0.0, 0.0
    for x in data.batches(split, batch_size, gen):
        t = elbo_terms(model, x)
        b = x.shape[0]
        n += b
        recon = recon + t.recon.double().sum()
        kl_dim = kl_dim + t.kl_per_dim.double().sum(0)
        penalty = penalty + b * kl_penalty(t.kl_per_dim, free_bits).double()
    model.train()
    recon_m, kl_d = (recon / n).item(), (kl_dim / n).tolist()
    kl_m = sum(kl_d)
    return {"loss": recon_m + beta * (penalty / n).item(), "recon": recon_m, "kl": kl_m, "elbo": -(recon_m + kl_m),
            "kl_per_dim": kl_d, "n": n}


class Accumulator:
    """Running sums of training terms on the device: no host sync until ``mean`` is called."""

    def __init__(self):
        self.n, self.sums = 0, None

    def add(self, loss: torch.Tensor, recon: torch.Tensor, kl_per_dim: torch.Tensor) -> None:
        vals = (loss.detach(), recon.detach().mean(), kl_per_dim.detach().mean(0))
        self.sums = vals if self.sums is None else tuple(a + b for a, b in zip(self.sums, vals))
        self.n += 1

    def mean(self) -> dict:
        loss, recon, kl_dim = (v / self.n for v in self.sums)
        kl_d = kl_dim.tolist()
        self.n, self.sums = 0, None
        return {"loss": loss.item(), "recon": recon.item(), "kl": sum(kl_d), "kl_per_dim": kl_d}


# ---------------------------------------------------------------- the loop
def checkpoint_state(parts: Parts, step: int, best_elbo: float, data_gen: torch.Generator, config: dict) -> dict:
    """Everything needed to continue: plain containers and tensors only (weights_only loading)."""
    rng = {"torch": torch.get_rng_state(), "data": data_gen.get_state(), "python": random.getstate()}
    if parts.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "lr_scheduler": parts.lr_scheduler.state_dict() if parts.lr_scheduler is not None else None,
            "step": step, "epoch": step / parts.steps_per_epoch, "best_elbo": best_elbo, "rng": rng,
            "config": config}


def save_grids(run, model: VAE, data: Data, step: int, num_samples: int, seed: int) -> dict:
    """Prior samples (the same z at every step, so grids show progress) and val reconstructions."""
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed + 15485863)
    model.eval()
    samples = model.sample(num_samples, generator=gen)                        # (N, C, H, W)
    row = 8
    x = data.prepare(data.val.images[:4 * row], gen)                          # (≤32, C, H, W)
    recon = model.reconstruct(x)
    model.train()
    pairs = torch.stack([x, recon]).unflatten(1, (-1, min(row, x.shape[0])))  # (2, rows, row, C, H, W)
    pairs = pairs.transpose(0, 1).flatten(0, 2)                               # input row, recon row, ...
    return {"samples": run.save_grid("samples", step, samples, nrow=math.ceil(math.sqrt(num_samples))),
            "recon": run.save_grid("recon", step, pairs, nrow=min(row, x.shape[0]))}


def _log_tb(writer, split: str, rec: dict) -> None:
    if writer is None:
        return
    for key in ("loss", "recon", "kl", "elbo", "beta", "lr", "grad_norm", "examples_per_sec"):
        if rec.get(key) is not None:
            writer.add_scalar(f"{split}/{key}", rec[key], rec["step"])
    if split == "val":
        for d, v in enumerate(rec["kl_per_dim"]):
            writer.add_scalar(f"val_kl_per_dim/z{d}", v, rec["step"])


def fit(cfg: TrainConfig, parts: Parts, run, config: dict, reporter, writer=None, t0: Optional[float] = None) -> dict:
    """The training loop. Returns {'final_val', 'best_val', 'steps', 'examples_per_sec'}."""
    t0 = t0 if t0 is not None else time.time()
    model, opt, sched, data = parts.model, parts.optimizer, parts.lr_scheduler, parts.data
    data_gen = torch.Generator(device=parts.device).manual_seed(cfg.seed)
    acc, step, best, best_val, final_val = Accumulator(), 0, -math.inf, None, None
    t_log, seen, seen_total, train_time = time.time(), 0, 0, 0.0
    model.train()
    while step < parts.total_steps:
        for x in data.batches("train", cfg.batch_size, data_gen, shuffle=True):
            beta = parts.schedule(step)
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == parts.total_steps
            loss, terms, gnorm = train_step(model, opt, x, beta, cfg.free_bits, cfg.optimizer.grad_clip, log_now)
            acc.add(loss, terms.recon, terms.kl_per_dim)
            step, seen = step + 1, seen + x.shape[0]
            if is_per_step(sched):
                sched.step()
            reporter.advance(step)
            if log_now:
                now = time.time()
                train_time += now - t_log
                seen_total += seen
                rec = {"step": step, "epoch": round(step / parts.steps_per_epoch, 4), "split": "train",
                       **acc.mean(), "beta": beta, "lr": opt.param_groups[0]["lr"],
                       "grad_norm": None if gnorm is None else gnorm.item(),
                       "examples_per_sec": seen / max(now - t_log, 1e-9), "time": now - t0}
                rec["elbo"] = -(rec["recon"] + rec["kl"])
                run.append_metrics(rec)
                reporter.train(rec)
                _log_tb(writer, "train", rec)
                t_log, seen = time.time(), 0
            last = step == parts.total_steps
            if step % cfg.eval_every == 0 or last:
                t_eval = time.time()
                final_val = evaluate(model, data, "val", cfg.eval_batch_size, beta=beta, free_bits=cfg.free_bits,
                                     seed=cfg.seed)
                final_val.update(step=step, epoch=round(step / parts.steps_per_epoch, 4), split="val", beta=beta,
                                 time=time.time() - t0)
                is_best = final_val["elbo"] > best
                run.append_metrics(final_val)
                reporter.val(final_val, is_best)
                _log_tb(writer, "val", final_val)
                if sched is not None and not is_per_step(sched):
                    sched.step(final_val["loss"])
                if is_best:
                    best, best_val = final_val["elbo"], dict(final_val)
                state = checkpoint_state(parts, step, best, data_gen, config)
                run.save_checkpoint(state, "last")
                if is_best:
                    run.save_checkpoint(state, "best")
                t_log += time.time() - t_eval  # evaluation time is not training time
            if step % cfg.sample_every == 0 or last:
                t_grid = time.time()
                grids = save_grids(run, model, data, step, cfg.num_samples, cfg.seed)
                if writer is not None:
                    for kind, grid in grids.items():
                        writer.add_image(kind, grid, step)
                t_log += time.time() - t_grid
            if last:
                break
    return {"final_val": final_val, "best_val": best_val, "steps": step,
            "examples_per_sec": seen_total / train_time if train_time > 0 else None}


def train(cfg: TrainConfig, run, config: dict, *, bar: bool = False) -> dict:
    """Builds, trains and writes a complete run folder. ``config`` is the resolved config as plain
    containers (stored in config.yaml and in every checkpoint). summary.json's status is written
    at the start ("running") and at the end, whatever happens ("completed"/"failed"/"interrupted")."""
    from vaerun.plots import curves_figure
    from vaerun.progress import Reporter
    from vaerun.runs import provenance

    t0 = time.time()
    summary: dict = {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": str(run.path),
                     "seed": cfg.seed, **provenance()}
    run.write_config(config)
    run.write_summary(summary)
    writer = None
    try:
        parts = build(cfg)
        n_params = sum(p.numel() for p in parts.model.parameters())
        summary.update(device=str(parts.device), num_params=n_params, total_steps=parts.total_steps,
                       steps_per_epoch=parts.steps_per_epoch, train_examples=len(parts.data.train),
                       data_shape=list(parts.data.shape))
        log.info("%s: %d train / %d val examples of shape %s | %s model, %d parameters | %d steps on %s | %s",
                 parts.data.name, len(parts.data.train), len(parts.data.val), "x".join(map(str, parts.data.shape)),
                 cfg.model.name.value, n_params, parts.total_steps, parts.device, run.path)
        writer = run.tb_writer() if cfg.tensorboard else None
        with Reporter(parts.total_steps, bar) as reporter:
            result = fit(cfg, parts, run, config, reporter, writer, t0)
        summary.update(status="completed", **result)
    except KeyboardInterrupt:
        summary.update(status="interrupted", error="interrupted by the user (KeyboardInterrupt)")
        raise
    except BaseException as err:
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if writer is not None:
            writer.close()
        summary.update(ended=time.strftime("%Y-%m-%dT%H:%M:%S"), wall_time_s=round(time.time() - t0, 3))
        records = run.read_metrics()
        if records:
            import matplotlib.pyplot as plt

            fig = curves_figure(records)
            run.save_figure(fig)
            plt.close(fig)
        run.write_summary(summary)
    fv = summary["final_val"]
    log.info("done in %.1fs: val elbo %.3f nats (recon %.3f, kl %.3f) | best %.3f at step %d | %s",
             summary["wall_time_s"], fv["elbo"], fv["recon"], fv["kl"], summary["best_val"]["elbo"],
             summary["best_val"]["step"], run.path)
    return summary
