"""vaerun: a Hydra-driven experiment runner for variational autoencoders.

Nothing heavy happens at import; ``vaerun.train_run`` and ``vaerun.load_run`` import torch when
used.
"""
from vaerun.version import __version__  # noqa: F401  (re-exported)


def load_run(path, device: str = "cpu"):
    """Opens a run folder: config, summary, metrics and the model rebuilt from its checkpoint
    (see vaerun.api.Run). Imports torch on first use."""
    from vaerun.api import load_run as _load_run

    return _load_run(path, device)


def train_run(*overrides: str, out_dir=None, progress: bool = False):
    """Trains as ``vaerun train <overrides>`` does, from Python (a notebook): the same config
    check, the same run folder (under ``out_dir``, default the config's ``outputs``), and returns
    it opened (vaerun.api.Run). ``vaerun.train_run("model=conv", "epochs=2")``."""
    from vaerun.api import train_run as _train_run

    return _train_run(*overrides, out_dir=out_dir, progress=progress)
