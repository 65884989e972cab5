"""User-facing errors. The CLI prints their message (no traceback) and exits non-zero."""
from __future__ import annotations

from typing import Any


class VaerunError(Exception):
    """An error whose message tells the user what happened and what to do."""


class ConfigError(VaerunError, ValueError):
    """A config problem: the message names the key, the value and the fix."""

    def __init__(self, key: str, value: Any, problem: str, fix: str):
        self.key, self.value, self.problem, self.fix = key, value, problem, fix
        super().__init__(f"{key}={value!s}: {problem}\n  fix: {fix}")


class DataError(VaerunError):
    """A dataset could not be found or read."""


class CheckpointError(VaerunError):
    """A checkpoint is missing, unreadable, foreign or unsafe."""


class NonFiniteError(VaerunError):
    """Training produced non-finite values and the on_nan policy gave up."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved. ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        import signal

        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")
