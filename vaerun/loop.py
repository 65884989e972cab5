"""The training loop around train_step: evaluation, grids, checkpoints, resume, signals and the
non-finite policy. Its whole state lives in :class:`LoopState` plus the RNGs, so a checkpoint at
any step continues bit for bit (CPU): resume and NaN rollback both go through :func:`restore`."""
from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch

from vaerun.checks import CollapseWatch, audit, term_grad_norms, unfinished_schedule
from vaerun.config import TrainConfig
from vaerun.data import Data
from vaerun.errors import Interrupted, NonFiniteError
from vaerun.models import VAE
from vaerun.objectives import Terms
from vaerun.optim import is_per_step, match_param_layouts
from vaerun.runs import load_model_weights
from vaerun.train import Accumulator, Parts, evaluate, seeded_rng, train_step

log = logging.getLogger("vaerun")


@dataclass
class LoopState:
    step: int = 0                  # optimizer steps taken
    epoch: int = 0                 # index of the current pass over the training split
    batch: int = 0                 # batches consumed in the current pass
    best_elbo: float = -math.inf
    best_val: Optional[dict] = None
    final_val: Optional[dict] = None
    lr_scale: float = 1.0          # product of the rollback halvings
    rollbacks: int = 0
    skipped: int = 0               # steps dropped as non-finite (skip policy)
    aggressive: bool = False       # aggressive inference-network training still on
    aggressive_mi: float = -math.inf  # validation MI at the previous epoch's end (aggressive training)
    inner_steps: int = 0           # encoder-only updates taken by aggressive training
    since_best: int = 0            # validations since the best one (early_stop)
    stopped_early: bool = False    # early_stop (or collapse_stop) ended the run
    collapsed_for: int = 0         # validations in a row at the target β with every dim collapsed (collapse_stop)
    stop_reason: Optional[str] = None  # what ended the run before its length: "early_stop" or "collapse_stop"


@dataclass
class Rngs:
    order: torch.Generator         # the data order (one permutation per epoch)
    binarize: torch.Generator      # dynamic binarization
    inner: torch.Generator         # aggressive training's extra batches (indices and binarization)
    epoch_start: torch.Tensor = field(default=None)  # ``order``'s state at the current epoch's start

    @classmethod
    def create(cls, seed: int, device: torch.device) -> "Rngs":
        return cls(torch.Generator(device=device).manual_seed(seed),
                   torch.Generator(device=device).manual_seed(seed + 1),
                   torch.Generator(device=device).manual_seed(seed + 2))


# ---------------------------------------------------------------- checkpoints
def checkpoint_state(parts: Parts, state: LoopState, rngs: Rngs, acc: Accumulator, config: dict) -> dict:
    """Everything needed to continue: plain containers and tensors only (weights_only loading)."""
    rng = {"torch": torch.get_rng_state(), "order": rngs.epoch_start, "binarize": rngs.binarize.get_state(),
           "inner": rngs.inner.get_state(), "python": random.getstate()}
    if parts.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "lr_scheduler": parts.lr_scheduler.state_dict() if parts.lr_scheduler is not None else None,
            "step": state.step, "epoch": state.step / parts.steps_per_epoch, "best_elbo": state.best_elbo,
            "loop": asdict(state), "accumulator": acc.state_dict(), "rng": rng, "config": config,
            **({"ema_model": parts.ema.model_state(parts.model)} if parts.ema is not None else {})}


def restore(parts: Parts, run, rngs: Rngs, acc: Accumulator) -> LoopState:
    """Puts model, optimizer, scheduler, RNGs and the accumulator back as they were at the run
    folder's checkpoints/last.pt."""
    ckpt = run.load_checkpoint("last")
    load_model_weights(parts.model, ckpt["model"], run.checkpoint_file("last"))
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    match_param_layouts(parts.optimizer)  # a checkpoint written with another memory layout
    if parts.ema is not None:  # a checkpoint from before the average existed cannot be resumed with one
        parts.ema.load_model_state(ckpt["ema_model"])
    if parts.lr_scheduler is not None and ckpt["lr_scheduler"] is not None:
        parts.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    rng = ckpt["rng"]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and parts.device.type == "cuda":
        torch.cuda.set_rng_state_all(rng["cuda"])
    rngs.order.set_state(rng["order"])
    rngs.binarize.set_state(rng["binarize"])
    if "inner" in rng:
        rngs.inner.set_state(rng["inner"])
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    acc.load_state_dict(ckpt["accumulator"])  # host-side sums
    return LoopState(**ckpt["loop"])


def scale_lr(parts: Parts, factor: float) -> None:
    """Multiplies the learning rate now and for the rest of the run (schedulers included)."""
    for group in parts.optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    if hasattr(parts.lr_scheduler, "base_lrs"):
        parts.lr_scheduler.base_lrs = [b * factor for b in parts.lr_scheduler.base_lrs]


# ---------------------------------------------------------------- signals
class GracefulStop:
    """SIGINT/SIGTERM set ``requested``; the loop then checkpoints and stops. A second signal
    calls ``on_force`` (best effort) and exits at once with 128 + signum."""

    def __init__(self, on_force: Callable[[int], None]):
        self.requested: Optional[int] = None
        self.on_force, self._old = on_force, {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            try:
                self.on_force(signum)
            finally:
                os._exit(128 + signum)
        self.requested = signum
        log.warning("%s received: saving a checkpoint and stopping (send it again to stop at once)",
                    signal.Signals(signum).name)

    def __enter__(self) -> "GracefulStop":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): keep the defaults
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------- non-finite forensics
def forensics(model: VAE, terms: Terms, loss: torch.Tensor, grad_norm: torch.Tensor, step: int, lr: float) -> dict:
    """What went non-finite at ``step``: the terms, the posterior's log-variance range and the
    gradient norm of each module (two name levels, e.g. ``encoder.body``)."""
    bad = [name for name, v in (("recon", terms.recon), ("kl", terms.kl_per_dim), ("loss", loss))
           if not bool(torch.isfinite(v).all())] or ["gradients"]
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            key = ".".join(name.split(".")[:2])
            sq[key] = sq.get(key, 0.0) + float(p.grad.detach().double().square().sum())
    lv = terms.logvar.detach()
    return {"step": step, "split": "event", "event": "non_finite", "terms": bad,
            "logvar_min": float(lv.min()), "logvar_max": float(lv.max()),
            "mu_abs_max": float(terms.mu.detach().abs().max()), "grad_norm": float(grad_norm),
            "grad_norms": {k: math.sqrt(v) if math.isfinite(v) else v for k, v in sq.items()}, "lr": lr,
            "time": time.time()}


def _log_tb(writer, split: str, rec: dict) -> None:
    if writer is None:
        return
    for key in ("loss", "recon", "kl", "elbo", "beta", "lr", "grad_norm", "examples_per_sec"):
        if rec.get(key) is not None:
            writer.add_scalar(f"{split}/{key}", rec[key], rec["step"])
    if split == "val":
        for d, v in enumerate(rec["kl_per_dim"]):
            writer.add_scalar(f"val_kl_per_dim/z{d}", v, rec["step"])


def save_grids(run, model: VAE, data: Data, step: int, num_samples: int, seed: int) -> dict:
    """Prior samples (the same z at every step, so grids show progress) and val reconstructions.
    Uses its own generator: the training RNG streams are untouched."""
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed + 15485863)
    model.eval()
    samples = model.sample(num_samples, generator=gen)                        # (N, C, H, W)
    row = min(8, len(data.val))
    n = min(4 * row, len(data.val)) // row * row                              # whole rows only
    x = data.prepare(data.val.images[:n], gen)                                # (≤32, C, H, W)
    recon = model.reconstruct(x)
    model.train()
    pairs = torch.stack([x, recon]).unflatten(1, (-1, min(row, x.shape[0])))  # (2, rows, row, C, H, W)
    pairs = pairs.transpose(0, 1).flatten(0, 2)                               # input row, recon row, ...
    return {"samples": run.save_grid("samples", step, samples, nrow=math.ceil(math.sqrt(num_samples))),
            "recon": run.save_grid("recon", step, pairs, nrow=min(row, x.shape[0]))}


# ---------------------------------------------------------------- the loop
def at_target_beta(beta: float, cfg: TrainConfig) -> bool:
    """Whether a step trained at β ``beta`` trained at the run's target β (not in a warm-up or a
    cycle's ramp): only such validations count for collapse_stop (and `vaerun plan` says where)."""
    return not unfinished_schedule(beta, cfg.beta, cfg.schedule.beta_start)


def step0_audit(parts: Parts, cfg: TrainConfig) -> dict:
    """The audit record (checks.audit) of a run before its first step: what training writes first
    and `vaerun plan` shows."""
    total = parts.total_steps
    return audit(parts.model, parts.data, cfg.batch_size, parts.schedule(0), cfg.beta, cfg.free_bits, cfg.seed,
                 final_beta=parts.schedule(total - 1), total_steps=total)


class Trainer:
    """Runs ``parts`` for ``cfg`` into ``run``: train steps, logging, evaluation, grids,
    checkpoints; resumes from and rolls back to checkpoints."""

    def __init__(self, cfg: TrainConfig, parts: Parts, run, config: dict, reporter, writer=None,
                 t0: Optional[float] = None):
        self.cfg, self.parts, self.run, self.config = cfg, parts, run, config
        self.reporter, self.writer = reporter, writer
        self.state, self.acc, self.rngs = LoopState(), Accumulator(), Rngs.create(cfg.seed, parts.device)
        self.t0 = t0 if t0 is not None else time.time()
        self.t_log, self.seen, self.seen_total, self.train_time, self.consecutive_skips = time.time(), 0, 0, 0.0, 0
        dg = cfg.diagnostics
        from vaerun.diagnose import collapse_remedies

        self.watch = CollapseWatch(dg.collapse_threshold, int(dg.early_fraction * parts.total_steps),
                                   collapse_remedies(config, parts.total_steps))
        self.state.aggressive = cfg.aggressive.enabled  # a resume replaces it with the checkpoint's

    def resume(self) -> None:
        """Continues from the run's checkpoints/last.pt."""
        self.state = restore(self.parts, self.run, self.rngs, self.acc)
        dropped = self.run.truncate_metrics(self.state.step)
        log.info("resumed at step %d of %d (dropped %d metrics records logged after that checkpoint)",
                 self.state.step, self.parts.total_steps, dropped)
        if self.state.stopped_early:
            reason = self.state.stop_reason or "early_stop"  # checkpoints from before collapse_stop: early_stop
            log.info("the run stopped early at step %d (%s=%d): nothing more to train", self.state.step, reason,
                     getattr(self.cfg, reason))

    def save(self, best: bool = False) -> None:
        state = checkpoint_state(self.parts, self.state, self.rngs, self.acc, self.config)
        self.run.save_checkpoint(state, "last")
        if best:
            self.run.save_checkpoint(state, "best")

    def fit(self, stop: GracefulStop) -> dict:
        """Trains to total_steps; returns {'final_val', 'best_val', 'steps', 'examples_per_sec'}."""
        if self.state.step == 0 and self.state.batch == 0:
            self.run.append_metrics(step0_audit(self.parts, self.cfg))
            self.rngs.epoch_start = self.rngs.order.get_state()
            self.save()  # step 0: resume and rollback always have a starting point
        while self._more_to_train():
            self.rngs.epoch_start = self.rngs.order.get_state()
            rolled_back = False
            for xb in self.parts.data.train_epoch(self.cfg.batch_size, self.rngs.order, skip=self.state.batch):
                self.state.batch += 1
                if not self._step(xb):
                    rolled_back = True
                    break
                if stop.requested is not None:
                    self.save()
                    raise Interrupted(stop.requested)
                if not self._more_to_train():
                    break
            if not rolled_back and self._more_to_train():
                self.state.epoch, self.state.batch = self.state.epoch + 1, 0
                if self.state.aggressive:
                    self._aggressive_check()
        s = self.state
        return {"final_val": s.final_val, "best_val": s.best_val, "steps": s.step, "skipped_steps": s.skipped,
                "rollbacks": s.rollbacks, "lr_scale": s.lr_scale,
                "stopped_early": None if not s.stopped_early else
                {"step": s.step, "best_step": s.best_val["step"], "reason": s.stop_reason or "early_stop"},
                "examples_per_sec": self.seen_total / self.train_time if self.train_time > 0 else None}

    def _more_to_train(self) -> bool:
        """Steps left to take, and early_stop or collapse_stop has not ended the run."""
        return self.state.step < self.parts.total_steps and not self.state.stopped_early

    def _step(self, xb: torch.Tensor) -> bool:
        """One batch. False when a non-finite step rolled the run back to the last checkpoint."""
        cfg, p = self.cfg, self.parts
        x = p.data.prepare(xb, self.rngs.binarize)
        beta = p.schedule(self.state.step)
        if self.state.aggressive:
            self._aggressive_inner(beta)
        logs = (self.state.step + 1) % cfg.log_every == 0 or self.state.step + 1 == p.total_steps  # this step logs
        loss, terms, gnorm, ok = train_step(p.model, p.optimizer, x, beta, cfg.free_bits, cfg.optimizer.grad_clip,
                                            p.capacity_at(self.state.step),
                                            update="decoder" if self.state.aggressive else "all", forward=p.forward,
                                            fused=p.fused, need_norm=logs, unit_input=True)
        if not ok:
            return self._non_finite(loss, terms, gnorm)
        self.consecutive_skips = 0
        if p.ema is not None:
            p.ema.update()
        self.acc.add(loss, *terms.batch_means())
        self.state.step += 1
        self.seen += x.shape[0]
        lr = p.optimizer.param_groups[0]["lr"] if logs else None  # the rate this step trained with, logged beside its β
        if is_per_step(p.lr_scheduler):
            p.lr_scheduler.step()
        step, last = self.state.step, self.state.step == p.total_steps
        self.reporter.advance(step)
        if logs:
            self._log_train(beta, gnorm, lr)
        if step % cfg.eval_every == 0 or last:
            self._evaluate(beta)
            last = last or self.state.stopped_early  # early_stop ended the run: its grids as at the last step
        elif step % cfg.checkpoint_every == 0:
            self.save()
        if step % cfg.sample_every == 0 or last:
            self._grids()
        return True

    def _aggressive_inner(self, beta: float) -> None:
        """He et al. 2019, Algorithm 1: encoder-only updates on fresh random batches until the
        summed loss of a window of ``check_every`` updates stops falling (at most ``max_inner``);
        the step that follows then updates only the decoder."""
        cfg, p, ag = self.cfg, self.parts, self.cfg.aggressive
        images = p.data.train.images
        previous, window, k = math.inf, torch.zeros((), device=p.device), 0
        for k in range(1, ag.max_inner + 1):
            idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=self.rngs.inner, device=p.device)
            x = p.data.prepare(images[idx], self.rngs.inner)
            loss, _, _, ok = train_step(p.model, p.optimizer, x, beta, cfg.free_bits, cfg.optimizer.grad_clip,
                                        p.capacity_at(self.state.step), update="encoder", forward=p.forward,
                                        fused=p.fused, unit_input=True)
            if not ok:  # a non-finite inner step is never applied; leave the rest to the outer step's policy
                break
            window = window + loss
            if k % ag.check_every == 0:
                current = float(window)
                if current > previous:
                    break
                previous, window = current, torch.zeros((), device=p.device)
        self.state.inner_steps += k

    def _aggressive_check(self) -> None:
        """At an epoch's end: aggressive training stops once the validation MI stops rising."""
        from vaerun.metrics import mutual_information

        p, dg, s = self.parts, self.cfg.diagnostics, self.state
        t = time.time()
        with torch.no_grad(), seeded_rng(self.cfg.seed + 271, p.device):
            p.model.eval()
            x = p.data.prepare(p.data.val.images[:dg.mi_examples], torch.Generator(p.device).manual_seed(3))
            mu, logvar = p.model.encode(x)
            mi = mutual_information(mu, logvar)
            p.model.train()
        if mi <= s.aggressive_mi:
            s.aggressive = False
            rec = {"step": s.step, "split": "event", "event": "aggressive_off", "mi": mi,
                   "previous_mi": s.aggressive_mi, "inner_steps": s.inner_steps}
            self.run.append_metrics(rec)
            log.info("aggressive training off at step %d: validation MI %.3f did not rise above %.3f "
                     "(%d encoder-only updates so far)", s.step, mi, s.aggressive_mi, s.inner_steps)
        s.aggressive_mi = mi
        self.t_log += time.time() - t

    def _log_train(self, beta: float, gnorm: torch.Tensor, lr: float) -> None:
        now = time.time()
        self.train_time, self.seen_total = self.train_time + now - self.t_log, self.seen_total + self.seen
        s = self.state
        rec = {"step": s.step, "epoch": round(s.step / self.parts.steps_per_epoch, 4), "split": "train",
               **self.acc.mean(), "beta": beta, "lr": lr,
               "grad_norm": gnorm.item(), "examples_per_sec": self.seen / max(now - self.t_log, 1e-9),
               "time": now - self.t0}
        rec["elbo"] = -(rec["recon"] + rec["kl"])
        if self.cfg.aggressive.enabled:
            rec.update(aggressive=s.aggressive, inner_steps=s.inner_steps)
        cap = self.parts.capacity_at(s.step - 1)
        if cap is not None:
            rec["capacity"] = cap[1]  # C (nats) the KL is pulled towards at the last step
        self.run.append_metrics(rec)
        self.reporter.train(rec)
        _log_tb(self.writer, "train", rec)
        self.t_log, self.seen = time.time(), 0

    def _evaluate(self, beta: float) -> None:
        t, s, p, dg = time.time(), self.state, self.parts, self.cfg.diagnostics
        with p.evaluated():
            cap = p.capacity_at(s.step - 1)  # the objective the last step trained on
            v = evaluate(p.model, p.data, "val", self.cfg.eval_batch_size, beta=beta, free_bits=self.cfg.free_bits,
                         capacity=cap, seed=self.cfg.seed, au_threshold=dg.au_threshold, mi_examples=dg.mi_examples,
                         iw_samples=dg.iw_samples, iw_examples=dg.iw_examples)
        if dg.grad_norms:
            x = p.data.prepare(p.data.val.images[:self.cfg.batch_size], torch.Generator(p.device).manual_seed(1))
            v.update(term_grad_norms(p.model, x, beta, self.cfg.free_bits, cap))
        v.update(step=s.step, epoch=round(s.step / p.steps_per_epoch, 4), split="val", beta=beta, time=t - self.t0)
        self.watch.check(s.step, v["kl_per_dim"])
        is_best = v["elbo"] > s.best_elbo
        self.run.append_metrics(v)
        self.reporter.val(v, is_best, time.time() - t)
        _log_tb(self.writer, "val", v)
        if p.lr_scheduler is not None and not is_per_step(p.lr_scheduler):
            p.lr_scheduler.step(v["loss"])
        if is_best:
            s.best_elbo, s.best_val = v["elbo"], dict(v)
        s.since_best = 0 if is_best else s.since_best + 1
        s.final_val = v
        if at_target_beta(beta, self.cfg):  # validations in a warm-up or a cycle's ramp neither count nor reset
            collapsed = all(k < dg.collapse_threshold for k in v["kl_per_dim"])
            s.collapsed_for = s.collapsed_for + 1 if collapsed else 0
        if s.step < p.total_steps:
            if self.cfg.collapse_stop and s.collapsed_for >= self.cfg.collapse_stop:
                self._stop_collapsed(v)
            elif self.cfg.early_stop and s.since_best >= self.cfg.early_stop:
                self._stop_early()
        self.save(best=is_best)  # after a stop: last.pt remembers it
        self.t_log += time.time() - t  # evaluation time is not training time

    def _stop_early(self) -> None:
        """early_stop validations in a row without a better ELBO: the run ends here (the checkpoint
        written next says so, so a resume does not train on)."""
        s = self.state
        s.stopped_early, s.stop_reason = True, "early_stop"
        self.run.append_metrics({"step": s.step, "split": "event", "event": "early_stop", "patience": self.cfg.early_stop,
                                 "best_step": s.best_val["step"], "best_elbo": s.best_elbo,
                                 "final_elbo": s.final_val["elbo"]})
        log.info("early stop at step %d of %d: no better validation ELBO in %d validations (best %.3f at step %d, "
                 "kept in checkpoints/best.pt)", s.step, self.parts.total_steps, self.cfg.early_stop, s.best_elbo,
                 s.best_val["step"])

    def _stop_collapsed(self, v: dict) -> None:
        """collapse_stop validations in a row at the target β with every latent dim under the
        collapse threshold: the rest of the run would train a decoder that ignores z (a sweep's
        collapsed jobs give their cores back). The checkpoint written next says so."""
        s, dg = self.state, self.cfg.diagnostics
        s.stopped_early, s.stop_reason = True, "collapse_stop"
        self.run.append_metrics({"step": s.step, "split": "event", "event": "collapse_stop",
                                 "patience": self.cfg.collapse_stop, "kl": v["kl"], "beta": self.cfg.beta,
                                 "threshold": dg.collapse_threshold})
        remedies = self.watch.remedies
        log.warning("collapse stop at step %d of %d: every latent dim below %g nats of KL (%.4g in all) at %d "
                    "validations in a row at β=%g: full posterior collapse, so the rest of the run would train a "
                    "decoder that ignores z.%s", s.step, self.parts.total_steps, dg.collapse_threshold, v["kl"],
                    s.collapsed_for, self.cfg.beta,
                    f" Next time try {' or '.join(remedies)}." if remedies else "")

    def _grids(self) -> None:
        t = time.time()
        with self.parts.evaluated():
            grids = save_grids(self.run, self.parts.model, self.parts.data, self.state.step, self.cfg.num_samples,
                               self.cfg.seed)
        if self.writer is not None:
            for kind, grid in grids.items():
                self.writer.add_image(kind, grid, self.state.step)
        self.t_log += time.time() - t

    def _non_finite(self, loss, terms, gnorm) -> bool:
        """Applies cfg.on_nan to a step whose loss or gradients were not finite (it was not taken)."""
        cfg, s, p = self.cfg, self.state, self.parts
        rec = forensics(p.model, terms, loss, gnorm, s.step + 1, p.optimizer.param_groups[0]["lr"])
        rec.update(action=cfg.on_nan.value, time=time.time() - self.t0)
        self.run.append_metrics(rec)
        log.warning("non-finite %s at step %d (log-variance in [%.3g, %.3g], gradient norms %s, lr %.3g): %s",
                    "/".join(rec["terms"]), rec["step"], rec["logvar_min"], rec["logvar_max"],
                    {k: round(v, 3) for k, v in rec["grad_norms"].items()}, rec["lr"], cfg.on_nan.value)
        p.optimizer.zero_grad(set_to_none=True)
        fix = "lower optimizer.lr, set optimizer.grad_clip (e.g. 1.0), or try on_nan=rollback"
        if cfg.on_nan.value == "stop":
            raise NonFiniteError(f"non-finite {'/'.join(rec['terms'])} at step {rec['step']} (on_nan=stop).\n  fix: {fix}")
        if cfg.on_nan.value == "skip":
            s.skipped, self.consecutive_skips = s.skipped + 1, self.consecutive_skips + 1
            if self.consecutive_skips > cfg.nan_max_skips:
                raise NonFiniteError(f"{self.consecutive_skips} non-finite steps in a row at step {rec['step']} "
                                     f"(on_nan=skip, nan_max_skips={cfg.nan_max_skips}).\n  fix: {fix}")
            return True
        if s.rollbacks >= cfg.nan_retries:
            raise NonFiniteError(f"still non-finite at step {rec['step']} after {s.rollbacks} rollbacks "
                                 f"(nan_retries={cfg.nan_retries}; lr now {p.optimizer.param_groups[0]['lr']:.3g}).\n"
                                 f"  fix: {fix.replace(', or try on_nan=rollback', '')}")
        scale, rollbacks, skipped = s.lr_scale * 0.5, s.rollbacks + 1, s.skipped
        self.state = restore(p, self.run, self.rngs, self.acc)
        scale_lr(p, scale / self.state.lr_scale)
        self.state.lr_scale, self.state.rollbacks, self.state.skipped = scale, rollbacks, skipped
        self.run.truncate_metrics(self.state.step)
        log.warning("rolled back to step %d and halved the learning rate to %.3g (rollback %d of at most %d)",
                    self.state.step, p.optimizer.param_groups[0]["lr"], rollbacks, cfg.nan_retries)
        return False
