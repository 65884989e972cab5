"""vaerun: a Hydra-driven experiment runner for variational autoencoders.

Nothing heavy happens at import; ``vaerun.train`` and friends import torch when used.
"""
__version__ = "0.1.0"


def load_run(path, device: str = "cpu"):
    """Opens a run folder: config, summary, metrics and the model rebuilt from its checkpoint
    (see vaerun.api.Run). Imports torch on first use."""
    from vaerun.api import load_run as _load_run

    return _load_run(path, device)
