"""β over training as pure functions of an explicit step (no hidden counters).

Each schedule is a frozen dataclass; ``schedule(step)`` returns β at that optimizer step
(0-based). ``beta`` is always the target β, so sweeping the top-level ``beta`` works for every
schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Constant:
    beta: float = 1.0

    def __call__(self, step: int) -> float:
        return self.beta


def _ramp(step: int, start: int, length: int) -> float:
    """0 before ``start``, 1 from ``start + length`` on, linear in between."""
    return min(max((step - start) / length, 0.0), 1.0)


@dataclass(frozen=True)
class Linear:
    """KL warm-up (Bowman et al. 2016): beta_start for delay_steps, then linear to beta over
    warmup_steps, then beta."""

    beta: float = 1.0
    beta_start: float = 0.0
    warmup_steps: int = 1000
    delay_steps: int = 0

    def __call__(self, step: int) -> float:
        return self.beta_start + (self.beta - self.beta_start) * _ramp(step, self.delay_steps, self.warmup_steps)


@dataclass(frozen=True)
class Sigmoid:
    """A logistic warm-up over [delay, delay + warmup], rescaled so that it starts exactly at
    beta_start and ends exactly at beta: s(t) = (σ(12t' − 6) − σ(−6)) / (σ(6) − σ(−6))."""

    beta: float = 1.0
    beta_start: float = 0.0
    warmup_steps: int = 1000
    delay_steps: int = 0

    def __call__(self, step: int) -> float:
        t = _ramp(step, self.delay_steps, self.warmup_steps)
        lo, hi = 1 / (1 + math.exp(6)), 1 / (1 + math.exp(-6))
        s = (1 / (1 + math.exp(-(12 * t - 6))) - lo) / (hi - lo)
        return self.beta_start + (self.beta - self.beta_start) * s


@dataclass(frozen=True)
class Cyclical:
    """Cyclical annealing (Fu et al. 2019, NAACL): the run's total_steps split into ``cycles``
    equal cycles; in each, β rises linearly from beta_start to beta over the first ``ratio`` of
    the cycle and stays at beta for the rest."""

    beta: float = 1.0
    beta_start: float = 0.0
    total_steps: int = 10000
    cycles: int = 4
    ratio: float = 0.5

    def __call__(self, step: int) -> float:
        period = self.total_steps / self.cycles
        tau = (step % period) / period if step < self.total_steps else 1.0  # position in the cycle
        return self.beta_start + (self.beta - self.beta_start) * min(tau / self.ratio, 1.0)


@dataclass(frozen=True)
class Capacity:
    """The capacity C(step) of capacity annealing (Burgess et al. 2018): 0 for delay_steps, then
    linear to c_max over steps, then c_max; ``gamma`` weighs |KL − C| in the loss."""

    c_max: float = 25.0
    steps: int = 10000
    delay_steps: int = 0
    gamma: float = 1.0

    def __call__(self, step: int) -> float:
        return self.c_max * _ramp(step, self.delay_steps, self.steps)


SCHEDULES = {"constant": Constant, "linear": Linear, "sigmoid": Sigmoid, "cyclical": Cyclical}


def build_schedule(name: str, *, beta: float, beta_start: float = 0.0, warmup_steps: int = 1000,
                   delay_steps: int = 0, cycles: int = 4, ratio: float = 0.5, total_steps: int = 10000):
    """Registry lookup; each schedule takes only the arguments it uses."""
    if name == "constant":
        return Constant(beta)
    if name in ("linear", "sigmoid"):
        return SCHEDULES[name](beta, beta_start, warmup_steps, delay_steps)
    if name == "cyclical":
        return Cyclical(beta, beta_start, total_steps, cycles, ratio)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
