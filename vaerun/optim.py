"""Optimizers and learning-rate schedulers from typed arguments (registries, no config objects)."""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator, Optional

import torch
import torch.optim.optimizer as torch_optimizer

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
LR_SCHEDULERS = ("none", "cosine", "step", "plateau", "burda")


def burda_stage(epoch: float, scale: float = 1.0, stages: int = 8, growth: float = 3.0) -> int:
    """The stage i of Burda et al. 2015's schedule at a (fractional) epoch: stage i lasts
    growth^i·scale epochs (the paper: growth 3, scale 1); after the last stage the last one
    continues. growth 1 gives eight equal stages: a geometric decay from lr to lr/10."""
    end = 0.0
    for i in range(stages):
        end += growth ** i * scale
        if epoch < end:
            return i
    return stages - 1


def burda_epochs(scale: float = 1.0, stages: int = 8, growth: float = 3.0) -> float:
    """Epochs the whole schedule takes: Σ growth^i·scale (3,280 at the paper's growth 3, scale 1)."""
    return sum(growth ** i for i in range(stages)) * scale


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str, *, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    momentum: float = 0.0, fused: bool = True) -> torch.optim.Optimizer:
    """``fused``: Adam and AdamW update every parameter in one fused kernel where torch has one
    (CPU and CUDA): the same update, about 20% less step time for an MNIST MLP at batch 128 on
    2 CPU cores (benchmarks/bench.py); falls back to the default implementation elsewhere."""
    params = list(params)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        if fused:
            try:
                return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
            except (RuntimeError, ValueError, TypeError):  # a device or dtype without the fused kernel
                pass
        return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, eps=eps, weight_decay=weight_decay, momentum=momentum)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; for a fused Adam or AdamW, its kernel called directly.

    ``torch.optim``'s ``step`` wraps the one fused kernel in Python machinery (hooks, profiler
    records, grouping by device and dtype, state checks) that costs about 0.5 ms per call on the
    2-core test machine: 6-8 % of an MNIST MLP step (benchmarks/bench.py). This makes the same
    kernel call with the same arguments on the optimizer's own state, so parameters, moments,
    step counts and ``state_dict()`` are bit for bit those of ``optimizer.step()``
    (tests/test_optim.py checks it, lr schedules, weight decay and a reload included). Anything
    else goes through ``optimizer.step()``: other optimizers, subclasses, hooks, amsgrad,
    maximize, a tensor lr, a parameter without a gradient (aggressive training's partial
    updates) or without state yet (the first step creates it), mixed devices or dtypes."""
    calls = _fused_adam_calls(optimizer)
    if calls is None:
        optimizer.step()
        return
    with torch.no_grad():
        for kernel, lists, kwargs in calls:
            torch._foreach_add_(lists[-1], 1)
            kernel(*lists, **kwargs)


def _fused_adam_calls(optimizer: torch.optim.Optimizer):
    """The kernel calls :func:`optimizer_step` makes, or None where ``optimizer.step()`` must run."""
    decoupled = {torch.optim.Adam: False, torch.optim.AdamW: True}.get(type(optimizer))
    kernels = (getattr(torch, "_fused_adam_", None), getattr(torch, "_fused_adamw_", None))
    hooks = (getattr(optimizer, "_optimizer_step_pre_hooks", None), getattr(optimizer, "_optimizer_step_post_hooks", None),
             getattr(torch_optimizer, "_global_optimizer_pre_hooks", None),
             getattr(torch_optimizer, "_global_optimizer_post_hooks", None))
    if decoupled is None or None in kernels or None in hooks or any(hooks):
        return None
    calls, state = [], optimizer.state
    for group in optimizer.param_groups:
        if (not group.get("fused") or group.get("amsgrad") or group.get("maximize") or group.get("differentiable")
                or group.get("capturable") or isinstance(group["lr"], torch.Tensor)):
            return None
        params = group["params"]
        if not params:
            continue
        grads, avgs, sqs, steps = [], [], [], []
        device, dtype = params[0].device, params[0].dtype
        for p in params:
            s = state.get(p)
            if (p.grad is None or not s or p.grad.is_sparse or p.device != device or p.dtype != dtype
                    or p.grad.dtype != dtype):
                return None
            grads.append(p.grad)
            avgs.append(s["exp_avg"])
            sqs.append(s["exp_avg_sq"])
            steps.append(s["step"])
        beta1, beta2 = group["betas"]
        kernel = kernels[1] if group.get("decoupled_weight_decay", decoupled) else kernels[0]
        calls.append((kernel, (params, grads, avgs, sqs, [], steps),
                      dict(amsgrad=False, lr=group["lr"], beta1=float(beta1), beta2=float(beta2),
                           weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                           grad_scale=None, found_inf=None)))
    return calls


def match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Gives every per-parameter state tensor (Adam's moments) its parameter's memory layout.
    The fused Adam kernel walks parameter, gradient and moments by raw memory position, so a
    moment loaded from a checkpoint in another layout (NCHW moments for channels-last weights,
    see :func:`vaerun.models.place`) would be paired with the wrong elements, silently. Values are
    unchanged; call it after ``optimizer.load_state_dict``."""
    for p, state in optimizer.state.items():
        for key, v in state.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                state[key] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its per-call profiler record."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def build_lr_scheduler(optimizer: torch.optim.Optimizer, name: str, *, total_steps: int, step_size: int = 2000,
                       gamma: float = 0.5, patience: int = 2, lr_min: float = 0.0, steps_per_epoch: int = 1,
                       stage_scale: float = 1.0, stage_growth: float = 3.0):
    """cosine, step and burda are stepped once per optimizer step; plateau once per validation
    pass (on the validation loss). Returns None for ``none``."""
    if name == "none":
        return None
    if name == "burda":  # lr·10^(−i/7) during stage i (Burda et al. 2015, section 5)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 10 ** (-burda_stage(step / steps_per_epoch, stage_scale, growth=stage_growth) / 7))
    if name == "cosine":
        base = optimizer.param_groups[0]["lr"]

        def factor(step: int) -> float:  # a pure function of the step (cosine to lr_min)
            t = min(step / max(total_steps, 1), 1.0)
            return (lr_min + (base - lr_min) * 0.5 * (1 + math.cos(math.pi * t))) / base

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=gamma, patience=patience, min_lr=lr_min)
    raise ValueError(f"unknown lr_scheduler {name!r}; choose one of {', '.join(LR_SCHEDULERS)}")


def is_per_step(scheduler: Optional[object]) -> bool:
    return scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


class WeightAverage:
    """An exponential moving average of a model's parameters (Polyak averaging; NVAE and VDVAE
    evaluate with one): after every training step avg ← decay·avg + (1 − decay)·θ, one fused
    ``_foreach_lerp_`` over all parameters. Starts at the initial weights; with decay 0.999 the
    start is forgotten after a few thousand steps. Buffers are not averaged (the models have none
    that training changes)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, _ in model.named_parameters()]
        # detached views of the model's own parameters: optimizers and loads write them in place
        self.params = [p.detach() for _, p in model.named_parameters()]
        self.avg = [p.clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.avg, self.params, 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; afterwards its own again, bit for bit."""
        own = [p.clone() for p in self.params]
        torch._foreach_copy_(self.params, self.avg)
        try:
            yield
        finally:
            torch._foreach_copy_(self.params, own)

    def model_state(self, model: torch.nn.Module) -> dict:
        """``model.state_dict()`` with the averaged parameters: what evaluation loads."""
        state = dict(model.state_dict())
        state.update({n: a.clone() for n, a in zip(self.names, self.avg)})
        return state

    def load_model_state(self, state: dict) -> None:
        torch._foreach_copy_(self.avg, [state[n].to(a.device) for n, a in zip(self.names, self.avg)])
