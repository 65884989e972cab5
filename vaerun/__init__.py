"""vaerun: a Hydra-driven experiment runner for variational autoencoders.

Nothing heavy happens at import; ``vaerun.train`` and friends import torch when used.
"""
__version__ = "0.1.0"
