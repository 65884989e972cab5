"""Console progress: a live rich bar on an interactive terminal, plain log lines elsewhere
(CI, pipes, multirun). The bar shares rich's global console with the RichHandler that
vaerun's Hydra logging config installs, so log lines print above the bar, never through it."""
from __future__ import annotations

import logging
import time
from typing import Optional

log = logging.getLogger("vaerun")


def use_bar(mode: str, launcher: Optional[str] = "basic") -> bool:
    """``auto``: a bar only on an interactive console and under the basic (sequential) launcher."""
    if mode == "bar":
        return True
    if mode == "log":
        return False
    from rich.console import Console

    from rich import get_console

    console: Console = get_console()
    return console.is_interactive and launcher in (None, "basic")


def duration(seconds: float) -> str:
    """45s, 2m05s, 1h07m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Reporter:
    """Shows training progress; every call is cheap (values arrive already as Python floats).

    Each train record (a log line off a terminal, the bar on one) shows the time left: the
    remaining steps at the training pace so far (validation excluded) plus the remaining
    validations at their measured mean cost; before the first validation has been timed, it names
    how many are still to come."""

    def __init__(self, total_steps: int, bar: bool, start: int = 0, eval_every: int = 0):
        self.total, self.bar, self.start, self.eval_every = total_steps, bar, start, eval_every
        self._progress = self._task = None
        self._t0 = time.monotonic()
        self._val_seconds, self._vals = 0.0, 0

    def validations_left(self, step: int) -> int:
        """Validations still to run once ``step`` is logged (its own included: a step's train line
        comes before its validation): every ``eval_every`` steps and at the last step."""
        if not self.eval_every or step > self.total:
            return 0
        e = self.eval_every
        return self.total // e - (step - 1) // e + (self.total % e > 0)

    def time_left(self, step: int, now: float) -> str:
        done = step - self.start
        if done <= 0:
            return ""
        train = (now - self._t0 - self._val_seconds) / done * (self.total - step)
        vals = self.validations_left(step)
        if not vals:
            return f"{duration(train)} left"
        if self._vals:
            return f"{duration(train + vals * self._val_seconds / self._vals)} left"
        return f"{duration(train)} left + {vals} validation{'s' if vals > 1 else ''}"

    def __enter__(self) -> "Reporter":
        if self.bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]:.2f}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.2f} recon {task.fields[recon]:.2f} "
                           "KL {task.fields[kl]:.2f} AU {task.fields[au]} β {task.fields[beta]:.3f} "
                           "{task.fields[speed]:,.0f} ex/s"),
                TimeElapsedColumn(), TextColumn("{task.fields[left]}"), refresh_per_second=4)
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, epoch=0.0, loss=float("nan"),
                                                 recon=float("nan"), kl=float("nan"), beta=0.0, speed=0.0, au="-",
                                                 left="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def train(self, rec: dict) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=rec["step"], epoch=rec["epoch"], loss=rec["loss"],
                                  recon=rec["recon"], kl=rec["kl"], beta=rec["beta"], speed=rec["examples_per_sec"],
                                  left=self.time_left(rec["step"], time.monotonic()))  # validations included
        else:
            left = self.time_left(rec["step"], time.monotonic())
            log.info("step %d/%d (epoch %.2f) | loss %.3f | recon %.3f | kl %.3f | β %.3f | lr %.2e | %s ex/s%s",
                     rec["step"], self.total, rec["epoch"], rec["loss"], rec["recon"], rec["kl"], rec["beta"],
                     rec["lr"], f"{rec['examples_per_sec']:,.0f}", f" | {left}" if left else "")

    def val(self, rec: dict, best: bool, seconds: float = 0.0) -> None:
        """``seconds``: what the validation took (the loop times it), for the time left."""
        self._val_seconds, self._vals = self._val_seconds + seconds, self._vals + 1
        d = len(rec["kl_per_dim"])
        if self._progress is not None:
            self._progress.update(self._task, au=f"{rec['active_units']}/{d}")
        iw = ""
        if "nll_iw" in rec:
            iw = f" | nll_iw(K={rec['iw_samples']}) {rec['nll_iw']:.3f}"
            if rec.get("iw_n", rec["n"]) < rec["n"] and "iw_elbo" in rec:  # a subset: its own −elbo beside it
                iw += f" on {rec['iw_n']} ex (−elbo {-rec['iw_elbo']:.3f} there)"
        ceiling = f" (≤ log {rec['mi_n']} = {rec['mi_ceiling']:.2f})" if "mi_ceiling" in rec else ""
        log.info("val @ step %d | elbo %.3f | recon %.3f | kl %.3f | active units %d/%d | mi %.3f%s%s%s",
                 rec["step"], rec["elbo"], rec["recon"], rec["kl"], rec["active_units"], d, rec["mi"], ceiling, iw,
                 " | best so far" if best else "")


def console_handler(level: int = logging.INFO) -> logging.Handler:
    """Hydra's console log handler (see conf/hydra/job_logging/vaerun.yaml): rich's handler on a
    terminal, so log lines and the live bar share one console; plain timestamped lines on stdout
    otherwise (CI, pipes, files), never wrapped at 80 columns."""
    import sys

    from rich import get_console

    if get_console().is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    return handler
