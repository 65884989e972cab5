"""build(cfg) -> Parts; train_step; evaluate; train(...) -> summary.

The only module that reads the config object: it turns the typed config into typed arguments
for the components, then runs the loop. Losses are nats per example (see objectives.py).
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from vaerun.config import TrainConfig, validate
from vaerun.data import Data, load_data
from vaerun.errors import ConfigError
from vaerun.likelihoods import Bernoulli, build_likelihood
from vaerun.models import VAE, build_vae, place
from vaerun.models.fused import fused_pass
from vaerun.objectives import Terms, elbo_terms, training_loss
from vaerun.optim import WeightAverage, build_lr_scheduler, build_optimizer, optimizer_step, zero_grad
from vaerun.schedules import Capacity, build_schedule

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
    capacity: Optional[Capacity] = None  # capacity annealing, when on
    forward: Optional[Callable[[torch.Tensor], Terms]] = None  # the training step's x -> Terms (see make_forward)
    fused: Optional[Callable] = None  # the MLP's written-out pass (models/fused.py; fused_mlp), used instead of forward
    ema: Optional[WeightAverage] = None  # optimizer.ema: the averaged weights evaluation and checkpoints use
    denormals: str = "off"  # what flush_denormals made of this process's threads (see flush_denormals)

    def evaluated(self):
        """A context in which the model holds the weights evaluation uses (the average, when on)."""
        return self.ema.applied() if self.ema is not None else contextlib.nullcontext()

    def capacity_at(self, step: int) -> Optional[tuple[float, float]]:
        """(γ, C(step)) for training_loss, or None when capacity annealing is off."""
        return None if self.capacity is None else (self.capacity.gamma, self.capacity(step))


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


def flush_denormals(on: bool) -> str:
    """CPU arithmetic with denormal floats (|x| < 1.2e-38) flushed to zero (FTZ/DAZ), as
    TensorFlow and XLA set it on the CPU; what this process's threads do now: ``all threads``,
    ``this thread only``, ``unsupported`` (no such mode on this CPU), ``off``, or ``off on this
    thread only`` (worker threads started while it was on keep flushing).

    Why: Adam's first moment of a weight whose gradient is exactly 0 (a dead ReLU unit's weights,
    a border pixel's) decays by β1 per step through the denormal range, and x86 cores compute on
    denormals about 100x slower. Training the MNIST MLP, 60,000-80,000 of its 1.3 M moments were
    denormal after one epoch; the fused Adam kernel took 5x longer with a sixth of them denormal,
    and training ran 1.2x faster flushed (docs/performance.md, section denormals). Flushed, such a
    value is 0; no reported number changes beyond rounding (tests/test_denormals.py).

    torch's worker threads inherit the mode from the thread that starts them, so it reaches the
    whole CPU thread pool only when set before the first parallel operation (a fresh ``vaerun
    train`` process); a probe (a product over 2^17 denormals, spread over the pool) tells."""
    if not on:
        torch.set_flush_denormal(False)
        return "off" if _flushed_fraction() == 0.0 else "off on this thread only"  # workers started flushing
    if not torch.set_flush_denormal(True):
        return "unsupported"
    return "all threads" if _flushed_fraction() == 1.0 else "this thread only"


def _flushed_fraction() -> float:
    """The share of 2^17 denormals that a product spread over torch's thread pool turns into 0."""
    denormal = torch.full((1 << 17,), 1 << 22, dtype=torch.int32).view(torch.float32)  # 5.9e-39, set as bits
    return float((denormal * 1.0).view(torch.int32).eq(0).float().mean())


def autocast_dtype(precision: str) -> Optional[torch.dtype]:
    """The dtype the networks run in under ``precision`` (autocast), or None for float32 arithmetic."""
    return torch.bfloat16 if precision == "bf16" else None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX), where oneDNN's bf16 kernels are fast."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(bool(p()) for p in probes if p is not None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


def build_data(cfg: TrainConfig) -> Data:
    """The dataset of ``cfg`` as CPU uint8 tensors (see data.load_data). A likelihood that does not
    suit the data is the step-0 audit's to report (checks.audit), once."""
    d = cfg.dataset
    return load_data(d.name.value, root=d.root, path=d.path, download=d.download, image_size=d.image_size,
                     channels=d.channels, num_examples=d.num_examples, val_size=d.val_size, test_size=d.test_size,
                     subset=d.subset, binarize=d.binarize.value, seed=cfg.seed, on_bad_image=d.on_bad_image.value)


def build_model(cfg: TrainConfig, data_shape: tuple[int, int, int]) -> VAE:
    """The VAE of ``cfg`` for data of ``data_shape`` (C, H, W), on the CPU."""
    m, lk = cfg.model, cfg.likelihood
    likelihood = build_likelihood(lk.name.value, data_shape[0], sigma=lk.sigma, learn_sigma=lk.learn_sigma.value,
                                  min_log_sigma=lk.min_log_sigma, max_log_sigma=lk.max_log_sigma,
                                  mixtures=lk.mixtures)
    try:
        return build_vae(m.name.value, data_shape, likelihood, latent_dim=m.latent_dim, hidden=list(m.hidden),
                         channels=list(m.channels), kernel=m.kernel, activation=m.activation.value, init=m.init.value,
                         ar_layers=m.ar_layers, ar_kernel=m.ar_kernel, ar_width=m.ar_width,
                         ar_cond_channels=m.ar_cond_channels, ar_cond=m.ar_cond.value)
    except ValueError as err:
        raise ConfigError("model.channels", list(m.channels), f"{err} (dataset.image_size={data_shape[-1]})",
                          "use fewer stages (e.g. model.channels=[32,64]), a smaller model.kernel, or a "
                          "larger dataset.image_size") from err


def build(cfg: TrainConfig) -> Parts:
    """Validates the config, then builds data -> likelihood -> model -> schedule -> optimizer."""
    validate(cfg)
    denormals = flush_denormals(cfg.flush_denormals)
    if denormals == "this thread only":
        log.info("flush_denormals: denormal floats are flushed on this thread only, not on torch's worker threads, "
                 "which started before (training may run slower); call torch.set_flush_denormal(True) before any "
                 "torch work, or train in a fresh process (vaerun train)")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device.value)
    s, o = cfg.schedule, cfg.optimizer
    data = build_data(cfg)
    model = place(build_model(cfg, data.shape), device)
    data = data.to(device)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    schedule = build_schedule(s.name.value, beta=cfg.beta, beta_start=s.beta_start, warmup_steps=s.warmup_steps,
                              delay_steps=s.delay_steps, cycles=s.cycles, ratio=s.ratio, total_steps=total)
    optimizer = build_optimizer(model.parameters(), o.name.value, lr=o.lr, weight_decay=o.weight_decay,
                                betas=tuple(o.betas), eps=o.eps, momentum=o.momentum, fused=o.fused)
    lr_scheduler = build_lr_scheduler(optimizer, o.lr_scheduler.value, total_steps=total, step_size=o.lr_step_size,
                                      gamma=o.lr_gamma, patience=o.lr_patience, lr_min=o.lr_min,
                                      steps_per_epoch=steps_per_epoch, stage_scale=o.lr_stage_scale,
                                      stage_growth=o.lr_stage_growth)
    cap = cfg.capacity
    capacity = Capacity(cap.c_max, cap.steps, cap.delay_steps, cap.gamma) if cap.gamma > 0 else None
    if cfg.precision.value == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("precision=bf16 on a CPU without bf16 instructions (AVX512-BF16, AMX): autocast to bfloat16 is "
                    "then several times slower than float32 (8x for the MNIST MLP on a 2-core AMD EPYC); it is meant "
                    "for GPUs and bf16 CPUs. Use precision=fp32 here.")
    if cfg.compile and cfg.compile_mode.name != "default" and device.type != "cuda":
        log.warning("compile_mode=%s on %s: its CUDA graphs need a CUDA device, so this compiles as "
                    "compile_mode=default would (the first steps still pay the compilation)",
                    cfg.compile_mode.name, device.type)
    fused = fused_pass(model, autocast_dtype(cfg.precision.value)) if cfg.fused_mlp and not cfg.compile else None
    if device.type == "cuda" and not cfg.compile and fused is None:  # the MLP's written-out pass beats graphs there
        log.info("training on CUDA eagerly: small models' steps wait on kernel launches there; "
                 "compile=true compile_mode=reduce_overhead replays them as CUDA graphs (1.7x faster for "
                 "vaerun's conv model, 3.4x for the autoregressive one on an H200: docs/performance_gpu.md)")
    forward = make_forward(model, device, precision=cfg.precision.value, compile=cfg.compile,
                           mode=cfg.compile_mode.value)
    ema = WeightAverage(model, o.ema) if o.ema > 0 else None
    return Parts(data, model, optimizer, lr_scheduler, schedule, device, steps_per_epoch, total, capacity, forward,
                 fused, ema, denormals)


def make_forward(model: VAE, device: torch.device, *, precision: str = "fp32", compile: bool = False,
                 mode: str = "default") -> Callable[[torch.Tensor], Terms]:
    """The training step's forward pass, x -> :class:`Terms`, in the chosen arithmetic.

    ``precision``: ``fp32``; ``tf32`` (float32 matrix products may use TensorFloat-32: CUDA
    Ampere and later); ``bf16`` (encoder and decoder under bfloat16 autocast; μ, log σ², the
    reparameterization, the likelihood's log-probability and the KL in float32, so the terms are
    nats computed in float32 from bf16 network outputs). ``compile``: the pass goes through
    ``torch.compile`` (Inductor; the backward is compiled with it). Random draws then use eager
    PyTorch's generator (``fallback_random``), so a compiled run draws the same ε as an eager one
    on the same seed and differs from it only by floating-point rounding. The model itself is not
    wrapped: checkpoints and state dicts are the same either way. Evaluation never uses this.
    ``mode``: torch.compile's mode; ``reduce-overhead`` and ``max-autotune`` replay the compiled
    forward and backward as CUDA graphs, which removes the per-kernel launch cost that bounds a
    small model's step on a GPU. Each call marks a new step for the graphs, so a step's outputs
    are read before the next call overwrites them (the training step consumes them at once)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    autocast = autocast_dtype(precision)

    def forward(x: torch.Tensor) -> Terms:
        return elbo_terms(model, x, autocast)
    if not compile:
        return forward
    import logging

    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    if device.type != "cuda":  # a CUDA build of torch on a CPU machine warns it found no CUDA runtime: noise here
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    compiled = torch.compile(lambda x: astuple(forward(x)), dynamic=False, mode=mode)
    if mode == "default" or device.type != "cuda":
        return lambda x: Terms(*compiled(x))

    def graphed(x: torch.Tensor) -> Terms:
        torch.compiler.cudagraph_mark_step_begin()
        return Terms(*compiled(x))
    return graphed


def astuple(t: Terms) -> tuple[torch.Tensor, ...]:
    return t.recon, t.kl_per_dim, t.mu, t.logvar


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Runs the block on torch's global RNG seeded with ``seed`` (CPU, and ``device`` when it is
    CUDA), then puts the previous state back: the block's draws are reproducible and the
    caller's random stream does not move."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


BOUND_LIMIT = 1e15  # gradient entries at most this: a finite float32 norm too, for under 3e8 parameters


def total_grad_norm(params) -> torch.Tensor:
    """The global L2 norm of the gradients, as a 0-d tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train_step(model: VAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, beta: float, free_bits: float,
               grad_clip: float, capacity: Optional[tuple[float, float]] = None, update: str = "all",
               forward: Optional[Callable[[torch.Tensor], Terms]] = None, fused: Optional[Callable] = None,
               need_norm: bool = True, unit_input: bool = False):
    """One optimizer step on batch x. Returns (loss, terms, grad_norm, ok): the global gradient
    norm before clipping, and whether loss and gradients were finite. A non-finite step is never
    taken (the one host sync per step buys that guarantee). ``update``: ``all``, ``encoder``
    (only the encoder's parameters move) or ``decoder`` (everything but the encoder): the
    others' gradients are dropped, so the optimizer skips them (aggressive training).
    ``forward``: x -> Terms for this model (:func:`make_forward`); plain float32 eager by default.
    ``fused``: the model's written-out pass (:func:`vaerun.models.fused.fused_pass`), which
    computes the loss and writes the gradients itself; used instead of ``forward`` and autograd.
    ``need_norm=False``: the caller does not use this step's gradient norm (the loop logs it
    every ``log_every`` steps); where the written-out pass bounds its gradients
    (``gradient_bound``, read with the loss), without clipping or a partial update, a bound at most
    :data:`BOUND_LIMIT` then proves them finite without reading them and ``grad_norm`` is None
    (the decision the norm would give); any other bound falls back to the norm. ``unit_input``:
    x lies in [0, 1] (``Data.prepare``'s batches), which the bound may use instead of reading x."""
    zero_grad(optimizer)
    if fused is not None:
        loss, terms = fused(x, beta, free_bits, capacity, unit_input=unit_input)
    else:
        terms = forward(x) if forward is not None else elbo_terms(model, x)
        loss = training_loss(terms, beta, free_bits, capacity)
        loss.backward()
    norms = getattr(fused, "factor_norms", None) if not need_norm and grad_clip <= 0 and update == "all" else None
    grad_norm, ok = None, False
    if norms is not None:  # the host sync; a bound that is too large or not finite falls back to the norm
        lv, *nv = torch.stack([loss.detach(), *norms()]).tolist()
        ok = math.isfinite(lv) and fused.bound_of(nv) <= BOUND_LIMIT
    if not ok:
        params = [q for group in optimizer.param_groups for q in group["params"]]  # what the step moves
        if grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:  # the norm only (for the log and the finiteness guard), without clipping's extra pass
            grad_norm = total_grad_norm(params)
        ok = math.isfinite(float(loss.detach() + grad_norm))  # half the time of bool(torch.isfinite(...))
    if ok:
        if update != "all":
            frozen = (model.encoder.parameters() if update == "decoder" else
                      (q for name, q in model.named_parameters() if not name.startswith("encoder.")))
            for q in frozen:
                q.grad = None
        optimizer_step(optimizer)
    return loss.detach(), terms, grad_norm, ok


IW_BLOCK = 100  # examples per importance-weighted block: each block's draws are seeded by its first index


@torch.inference_mode()
def evaluate(model: VAE, data: Data, split: str, batch_size: int, *, beta: float = 1.0, free_bits: float = 0.0,
             capacity: Optional[tuple[float, float]] = None, seed: int = 0, au_threshold: float = 0.01,
             mi_examples: int = 1000, iw_samples: int = 0, iw_examples: Optional[int] = None,
             on_batch: Optional[Callable[[int, int], None]] = None) -> dict:
    """Validation metrics over a whole split, always at β = 1 (docs/metrics.md).

    recon, kl, elbo, kl_per_dim: means per example, nats. active_units and au_variance from the
    posterior means of every example; mi over the first ``mi_examples`` (``mi_n`` of them, with
    its ceiling log mi_n and its noise ``mi_noise``); nll_iw (K = iw_samples) over the first
    ``iw_examples`` (all when None), with iw_elbo, the ELBO over those same examples.
    bpd is a code length: −elbo in bits per dimension for a mass (the Bernoulli on binary data,
    the logistic), and for a density (Gaussian, continuous Bernoulli) the ELBO with p(x|z) taken
    as the mass of each 8-bit level's bin (``elbo_mass``), beside ``bpd_density``, the density's
    −elbo/(D ln 2) + 8, which is not one. The Bernoulli on grey levels has no code length:
    ``bpd_xent`` instead. bpd_iw and nll_iw_mass likewise from the IW bound.
    ``loss`` is the objective training minimises (β, free bits, ``capacity`` = (γ, C)), with the
    split's means in place of a batch's.

    Deterministic given the model and ``seed``, and the same for every ``batch_size``: dynamic
    binarization, the ELBO's ε and the MI's z are drawn for the whole split at once, and the IW
    samples per block of IW_BLOCK examples, from generators seeded here (the global RNG is
    restored after), so a checkpoint gives the same numbers later (``vaerun eval``) and
    evaluation never moves the training run's random stream."""
    device, was_training = data.train.images.device, model.training
    try:
        with seeded_rng(seed + 1299709, device):
            return _evaluate(model, data, split, batch_size, beta=beta, free_bits=free_bits, capacity=capacity,
                             seed=seed, au_threshold=au_threshold, mi_examples=mi_examples, iw_samples=iw_samples,
                             iw_examples=iw_examples, on_batch=on_batch)
    finally:
        model.train(was_training)  # back to the mode it came in (a loaded run's model stays in eval)


def _evaluate(model: VAE, data: Data, split: str, batch_size: int, *, beta: float, free_bits: float,
              capacity: Optional[tuple[float, float]], seed: int, au_threshold: float, mi_examples: int,
              iw_samples: int, iw_examples: Optional[int], on_batch: Optional[Callable[[int, int], None]]) -> dict:
    from vaerun.metrics import (active_units, aggregate_posterior_gap, aggregate_posterior_gap_full, mi_noise, mig,
                                mutual_information)

    model.eval()
    device = data.train.images.device
    images = data.split(split).images
    n = len(images)
    noise = data.binarization_noise(images.shape, torch.Generator(device=device).manual_seed(seed + 104729))
    eps = torch.randn((n, model.latent_dim), generator=torch.Generator(device=device).manual_seed(seed + 7907),
                      device=device)
    density = model.likelihood.continuous          # a density on [0, 1]: its code length is its bins' mass
    xent = isinstance(model.likelihood, Bernoulli) and not data.is_binary()  # a cross-entropy, no code length

    def prepared(lo: int, hi: int) -> torch.Tensor:
        return data.prepare(images[lo:hi], noise=None if noise is None else noise[lo:hi])

    recon, kl, mass, mus, logvars = [], [], [], [], []   # per example: (b,), (b, D), (b,), (b, D), (b, D)
    for lo in range(0, n, batch_size):
        t = elbo_terms(model, prepared(lo, lo + batch_size), pieces=True, eps=eps[lo:lo + batch_size], mass=density)
        recon.append(t.recon.double())
        kl.append(t.kl_per_dim.double())
        mus.append(t.mu)
        logvars.append(t.logvar)
        if density:
            mass.append(t.recon_mass.double())
        if on_batch is not None and iw_samples <= 0:
            on_batch(min(lo + batch_size, n), n)
    recon, kl, mu, logvar = torch.cat(recon), torch.cat(kl), torch.cat(mus), torch.cat(logvars)  # (N,), (N, D) …
    recon_m, kl_d = recon.mean(), kl.mean(0)
    kl_m, dims = float(kl_d.sum()), math.prod(data.shape)
    objective = Terms(recon_m[None], kl_d[None], None, None)   # the split's means, as training_loss reads a batch
    au, au_var = active_units(mu, au_threshold)
    mi_n = min(mi_examples, n)
    out = {"loss": float(training_loss(objective, beta, free_bits, capacity)), "recon": float(recon_m),
           "kl": kl_m, "elbo": -(float(recon_m) + kl_m), "kl_per_dim": kl_d.tolist(), "n": n,
           "active_units": au, "au_variance": au_var,
           "mi": mutual_information(mu[:mi_n], logvar[:mi_n],
                                    generator=torch.Generator(device=device).manual_seed(seed + 6007)),
           "mi_n": mi_n, "mi_ceiling": math.log(mi_n), "mi_noise": mi_noise(mi_n, mu.shape[1]),
           "aggregate_kl": aggregate_posterior_gap(mu, logvar),
           "aggregate_kl_full": aggregate_posterior_gap_full(mu, logvar)}
    out.update(_code_lengths(-out["elbo"], None if not density else float(torch.cat(mass).mean()) + kl_m, dims,
                             density, xent, ""))
    labels = data.split(split).labels
    if labels is not None and labels.ndim == 2 and labels.shape[0] == n:   # ground-truth factors (shapes)
        out.update(mig(mu, labels, data.label_names))
    if iw_samples > 0:
        iw_n = n if iw_examples is None else min(iw_examples, n)
        lw = _iw_estimates(model, prepared, iw_n, iw_samples, seed, device, density, on_batch)
        nll = -float(lw[0].mean() if density else lw.mean())
        out.update(nll_iw=nll, iw_samples=iw_samples, iw_n=iw_n,
                   iw_elbo=-float(recon[:iw_n].mean() + kl[:iw_n].sum(1).mean()))
        if density:
            out["nll_iw_mass"] = -float(lw[1].mean())
        out.update(_code_lengths(nll, out.get("nll_iw_mass"), dims, density, xent, "_iw"))
    return out


def _iw_estimates(model: VAE, prepared: Callable[[int, int], torch.Tensor], iw_n: int, k: int, seed: int,
                  device: torch.device, mass: bool, on_batch: Optional[Callable[[int, int], None]]) -> torch.Tensor:
    """The K-sample log p(x) estimates of the first ``iw_n`` examples, (iw_n,) nats, or (2, iw_n)
    with ``mass`` (the likelihood's own, then the 256-level mass). Blocks of IW_BLOCK examples,
    each on its own stream seeded by its first index: the same at any evaluation batch size, and
    the ELBO's draws are the same with or without them."""
    from vaerun.metrics import iw_log_likelihood

    out = []
    for lo in range(0, iw_n, IW_BLOCK):
        hi = min(lo + IW_BLOCK, iw_n)
        with seeded_rng(seed + 15013 + lo, device):
            out.append(iw_log_likelihood(model, prepared(lo, hi), k, mass=mass))
        if on_batch is not None:
            on_batch(hi, iw_n)
    return torch.cat(out, dim=-1)


def _code_lengths(nll: float, nll_mass: Optional[float], dims: int, density: bool, xent: bool, suffix: str) -> dict:
    """bits/dim entries for one negative log-likelihood (nats per example; see :func:`evaluate`):
    ``bpd`` + suffix when it is a code length, and the labelled figure that is not one."""
    from vaerun.metrics import bits_per_dim

    if density:
        return {f"bpd{suffix}": bits_per_dim(nll_mass, dims),
                f"bpd_density{suffix}": bits_per_dim(nll, dims) + 8.0,   # + log2 256 per dim: not a code length
                **({"elbo_mass": -nll_mass} if not suffix else {})}
    if xent:
        return {f"bpd_xent{suffix}": bits_per_dim(nll, dims)}
    return {f"bpd{suffix}": bits_per_dim(nll, dims)}


class Accumulator:
    """Running sums of the training terms between records, with no host sync and no arithmetic
    per step: each step's batch means (:meth:`Terms.batch_means`, already computed for the loss)
    are kept as they are, and summed on the host, in float64 and in step order, when a record is
    written (:meth:`mean`) or a checkpoint taken (:meth:`state_dict`), so a resumed run sums
    exactly as an uninterrupted one."""

    def __init__(self):
        self.n, self.sums, self.pending = 0, None, []

    def add(self, loss: torch.Tensor, recon: torch.Tensor, kl_per_dim: torch.Tensor) -> None:
        """``loss`` and ``recon`` (), ``kl_per_dim`` (D,): this step's batch means."""
        self.pending.append((loss.detach(), recon.detach(), kl_per_dim.detach()))
        self.n += 1

    def _fold(self) -> list[float]:
        if self.pending:
            loss, recon, kl = (torch.stack(t) for t in zip(*self.pending))                # (n,), (n,), (n, D)
            rows = torch.cat([loss[:, None], recon[:, None], kl], dim=1).tolist()
            sums = self.sums or [0.0] * len(rows[0])
            for row in rows:
                sums = [a + b for a, b in zip(sums, row)]
            self.sums, self.pending = sums, []
        return self.sums

    def state_dict(self) -> dict:
        sums = self._fold()
        return {"n": self.n, "sums": None if sums is None else torch.tensor(sums, dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        sums = state["sums"]
        if isinstance(sums, (list, tuple)):  # checkpoints before 2026-11-28: [loss (), recon (), kl_per_dim (D,)]
            sums = torch.cat([t.reshape(-1).double() for t in sums])
        self.n, self.sums, self.pending = state["n"], None if sums is None else sums.tolist(), []

    def mean(self) -> dict:
        loss, recon, *kl_d = (v / self.n for v in self._fold())
        self.n, self.sums = 0, None
        return {"loss": loss, "recon": recon, "kl": sum(kl_d), "kl_per_dim": kl_d}
