"""`vaerun plan`: what a `vaerun train` command line will do, before it trains anything.

The same ``train.build`` as training builds the data, the model, the β schedule, the optimizer
and its learning-rate scheduler, so every number is the run's own: its length, when it validates,
checkpoints and draws sample grids, β, the learning rate and the capacity C at the steps where
they turn, and the step-0 audit of the loss terms on the run's first training batch, with its
warnings. Nothing is trained and nothing is written except the figure asked for (and a dataset
that training would download too).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import torch

ROWS = 24            # turning points shown in the table at most (every one is in the JSON)
SCAN_POINTS = 1_000_000  # a schedule is scanned at every step up to this many steps, then on a stride


def lr_at(scheduler, step: int) -> Optional[float]:
    """The learning rate the scheduler gives optimizer step ``step`` (0-based), from its own
    function of the step; None for ``plateau``, which the validation losses decide during the run.
    (NaN rollbacks, which halve the rate, cannot be planned.)"""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](step)
    if isinstance(scheduler, torch.optim.lr_scheduler.StepLR):
        return scheduler.base_lrs[0] * scheduler.gamma ** (step // scheduler.step_size)
    return None


def turning_points(values: list[float], steps: list[int]) -> set[int]:
    """The steps where a series turns: the start and end of a ramp, and around a jump (a change
    more than 4x the changes beside it: a cyclical β falling back, a learning-rate stage) the last
    step before it and the first after it (``values`` at ``steps``, ascending)."""
    d = [b - a for a, b in zip(values, values[1:])]           # d[i]: from steps[i] to steps[i + 1]
    moving = [False] + [x != 0 for x in d]                   # moving[i]: changed on arriving at steps[i]
    out = {steps[i] for i in range(len(values) - 1) if moving[i] != moving[i + 1]}
    for i, x in enumerate(d):
        side = max(abs(d[i - 1]) if i > 0 else 0.0, abs(d[i + 1]) if i + 1 < len(d) else 0.0)
        if x != 0 and abs(x) > 4 * side:
            out |= {steps[i], steps[i + 1]}
    return out


def plan(cfg, parts) -> dict:
    """The run's plan from its typed config and its built :class:`~vaerun.train.Parts`: length,
    events, and β / learning rate / capacity at every turning point (1-based step numbers, as the
    training log counts them: step n trains at the schedule's value for index n − 1)."""
    total, per_epoch = parts.total_steps, parts.steps_per_epoch
    base = parts.optimizer.param_groups[0]["lr"] if parts.lr_scheduler is None else parts.lr_scheduler.base_lrs[0]
    series: dict[str, Callable[[int], Optional[float]]] = {"beta": parts.schedule}
    if parts.lr_scheduler is not None and lr_at(parts.lr_scheduler, 0) is not None:
        series["lr"] = lambda i: lr_at(parts.lr_scheduler, i)
    if parts.capacity is not None:
        series["capacity"] = parts.capacity
    stride = max(1, math.ceil(total / SCAN_POINTS))
    scan = sorted({*range(0, total, stride), total - 1})
    turns: set[int] = set()
    for f in series.values():
        turns |= turning_points([f(i) for i in scan], scan)
    every = lambda n: sorted({*range(n, total + 1, n), total})  # noqa: E731  (steps as the loop counts them)
    validations = every(cfg.eval_every)
    rows = sorted(turns | {0, total - 1})
    if len(rows) > ROWS:  # many cycles or stages: evenly among them, first and last kept
        rows = sorted({rows[round(k * (len(rows) - 1) / (ROWS - 1))] for k in range(ROWS)})
    else:  # room left: the validation passes (what the val lines will have trained at), evenly if many
        room = [v - 1 for v in validations if v - 1 not in rows]
        if len(room) > ROWS - len(rows):
            room = [room[round(k * (len(room) - 1) / max(ROWS - len(rows) - 1, 1))] for k in range(ROWS - len(rows))]
        rows = sorted(set(rows) | set(room))

    def row(i: int) -> dict:
        r = {"step": i + 1, "epoch": round((i + 1) / per_epoch, 3), "beta": parts.schedule(i),
             "lr": series["lr"](i) if "lr" in series else base}
        if parts.capacity is not None:
            r["capacity"] = parts.capacity(i)
        return r

    from vaerun.loop import at_target_beta

    at_target = [v for v in validations if v < total and at_target_beta(parts.schedule(v - 1), cfg)]  # the last ends it
    data = parts.data
    return {
        "data": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                 "shape": list(data.shape), "binarize": data.binarize},
        "model": {"name": cfg.model.name.value, "parameters": sum(p.numel() for p in parts.model.parameters()),
                  "latent_dim": cfg.model.latent_dim, "likelihood": cfg.likelihood.name.value},
        "steps": total, "steps_per_epoch": per_epoch, "epochs": round(total / per_epoch, 3),
        "batch_size": cfg.batch_size, "max_steps": cfg.max_steps,
        "validations": validations, "sample_grids": every(cfg.sample_every),
        "checkpoints_every": cfg.checkpoint_every, "log_every": cfg.log_every, "early_stop": cfg.early_stop,
        "collapse_stop": cfg.collapse_stop,
        # the first step at which collapse_stop could end the run (None: too few validations at the target β)
        "collapse_stop_earliest": at_target[cfg.collapse_stop - 1] if 0 < cfg.collapse_stop <= len(at_target) else None,
        "schedule": {"name": cfg.schedule.name.value, **_fields(parts.schedule)},
        "free_bits": cfg.free_bits,
        "optimizer": {"name": cfg.optimizer.name.value, "lr": base, "lr_scheduler": cfg.optimizer.lr_scheduler.value,
                      "grad_clip": cfg.optimizer.grad_clip, "ema": cfg.optimizer.ema},
        "capacity": None if parts.capacity is None else _fields(parts.capacity),
        "aggressive": cfg.aggressive.enabled,
        "final_beta": parts.schedule(total - 1),
        "rows": [row(i) for i in rows],
        "turning_points": [i + 1 for i in sorted(turns)],
    }


def _fields(obj) -> dict:
    import dataclasses

    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def audit_lines(cfg, parts) -> tuple[dict, list[str]]:
    """The step-0 audit training would make (loop.step0_audit), and the log lines it prints."""
    from vaerun.loop import step0_audit

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(("warning: " if record.levelno >= logging.WARNING else "") + record.getMessage())

    log = logging.getLogger("vaerun")
    keep, propagate, level = Keep(), log.propagate, log.level
    log.addHandler(keep)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        rec = step0_audit(parts, cfg)
    finally:
        log.removeHandler(keep)
        log.propagate, log.level = propagate, level
    return rec, lines


def figure(p: dict, parts):
    """β, the learning rate and (when on) the capacity over the planned run, with the validation
    steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vaerun.plots import style_axes

    total, turns = p["steps"], p["turning_points"]
    steps = sorted({*range(1, total + 1, max(1, total // 2000)), total,
                    *(turns if len(turns) <= 4000 else ())})
    panels = [("β", [parts.schedule(s - 1) for s in steps])]
    if p["optimizer"]["lr_scheduler"] not in ("none", "plateau"):
        panels.append(("learning rate", [lr_at(parts.lr_scheduler, s - 1) for s in steps]))
    if parts.capacity is not None:
        panels.append(("capacity C [nats]", [parts.capacity(s - 1) for s in steps]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 0.6, 3.2), squeeze=False)
    axes = axes[0]
    for ax, (title, values) in zip(axes, panels):
        ax.plot(steps, values, lw=1.2)
        for v in p["validations"]:
            ax.axvline(v, color="tab:orange", alpha=0.6, lw=0.9, ls=":", zorder=0)
        if title == "learning rate" and 10 * min(values) < max(values) < 1e4 * min(values):  # a decay over decades
            ax.set_yscale("log")
    style_axes(axes, [t for t, _ in panels])
    fig.suptitle(f"plan: {p['steps']:,} steps ({p['epochs']:g} epochs of {p['steps_per_epoch']:,}); "
                 f"dotted: the {len(p['validations'])} validation passes", fontsize=10)
    fig.tight_layout()
    return fig
