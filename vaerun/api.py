"""Python API: continue from any run folder in a notebook, no Hydra needed.

    >>> import vaerun
    >>> run = vaerun.load_run("outputs/2026-11-27/00-15-03-091695")
    >>> run.summary["final_val"]["elbo"]
    >>> vae = run.model()                      # the VAE from checkpoints/best.pt, in eval mode
    >>> x = run.data().val.images[:8]          # uint8 (8, C, H, W)
    >>> mu, logvar = run.encode(x)             # scaled/binarized like in training
    >>> images = run.sample(16)                # (16, C, H, W) in [0, 1]
    >>> run.evaluate()["elbo"]                 # == run.summary["best_val"]["elbo"]
"""
from __future__ import annotations

import os
from functools import cached_property
from typing import Optional

import torch

from vaerun.runs import RunFolder, load_model_weights, model_weights


class Run:
    """One run folder: its config, summary and metrics, and its model rebuilt from a checkpoint."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu"):
        self.folder = RunFolder(path)
        if not self.folder.config_file.exists():
            from vaerun.errors import VaerunError
            from vaerun.runs import not_a_run

            raise VaerunError(not_a_run(path, "{}"))
        self.path, self.device = self.folder.path, torch.device(device)
        self._models: dict[str, torch.nn.Module] = {}
        self._data = None
        self.denormals: Optional[str] = None  # the denormal mode a CLI command opened it under (flush_denormals)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.summary.get('status')!r})"

    @cached_property
    def config(self) -> dict:
        """The resolved config as plain containers (config.yaml)."""
        return self.folder.read_config()

    @cached_property
    def cfg(self):
        """The config as vaerun's typed dataclasses. Keys this vaerun does not know (a run of
        another version, or one given a ``+key`` before that was refused) are left out, with a
        warning: they never reached the code that trained the run."""
        import logging

        from omegaconf import OmegaConf

        from vaerun.config import TrainConfig

        import dataclasses
        import typing

        dropped: list[str] = []

        def known(node: dict, cls, prefix: str) -> dict:
            hints = typing.get_type_hints(cls)
            out = {}
            for k, v in node.items():
                if k not in hints:
                    dropped.append(prefix + k)
                elif isinstance(v, dict) and dataclasses.is_dataclass(hints[k]):
                    out[k] = known(v, hints[k], f"{prefix}{k}.")
                else:
                    out[k] = v
            return out

        config = known(self.config, TrainConfig, "")
        if dropped:
            logging.getLogger("vaerun").warning("%s: config.yaml has keys this vaerun does not know, left out: %s",
                                                self.path, ", ".join(dropped))
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), config))

    @property
    def summary(self) -> dict:
        return self.folder.read_summary()

    @property
    def metrics(self) -> list[dict]:
        """Every record of metrics.jsonl, in order."""
        return self.folder.read_metrics()

    def data(self):
        """The run's dataset (same seed, same splits), on the run's device."""
        if self._data is None:
            from vaerun.train import build_data

            self._data = build_data(self.cfg).to(self.device)
        return self._data

    def model(self, checkpoint: str = "best") -> torch.nn.Module:
        """The VAE rebuilt from ``checkpoints/<checkpoint>.pt`` (best or last), in eval mode."""
        if checkpoint not in self._models:
            from vaerun.models import place
            from vaerun.train import build_model

            state = self.folder.load_checkpoint(checkpoint, map_location=self.device)
            shape = tuple(self.summary.get("data_shape") or self.data().shape)
            vae = place(build_model(self.cfg, shape), self.device)
            load_model_weights(vae, model_weights(state), self.folder.checkpoint_file(checkpoint))
            self._models[checkpoint] = vae.eval()
        return self._models[checkpoint]

    def prepare(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """uint8 images -> model input, as in training (scaling, dynamic binarization)."""
        if images.dtype != torch.uint8:
            return images.to(self.device)
        return self.data().prepare(images.to(self.device), generator)

    def evaluate(self, split: str = "val", checkpoint: str = "best", iw_samples: int = 0,
                 seed: Optional[int] = None, batch_size: Optional[int] = None, on_batch=None) -> dict:
        """The run's evaluation of a checkpoint on a split (ELBO terms, KL per dim, active units,
        MI, and nll_iw when ``iw_samples`` > 0), as training computed it: with the run's seed the
        val ELBO of ``best`` equals summary["best_val"]["elbo"], whatever ``batch_size`` (default
        the run's eval_batch_size; another one changes only float rounding). ``loss`` here is at
        β = 1 without free bits or capacity. ``on_batch(n_done, n_total)`` reports progress."""
        from vaerun.train import evaluate

        cfg = self.cfg
        return evaluate(self.model(checkpoint), self.data(), split, batch_size or cfg.eval_batch_size,
                        seed=cfg.seed if seed is None else seed, au_threshold=cfg.diagnostics.au_threshold,
                        mi_examples=cfg.diagnostics.mi_examples, iw_samples=iw_samples, on_batch=on_batch)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, checkpoint: str = "best") -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of q(z|x), each (B, D); uint8 images are prepared as in training."""
        return self.model(checkpoint).encode(self.prepare(images))

    @torch.no_grad()
    def decode(self, z: torch.Tensor, checkpoint: str = "best", seed: Optional[int] = None) -> torch.Tensor:
        """Images for latent codes z (B, D): likelihood means (a pixel-by-pixel sample for the
        autoregressive decoder, drawn with ``seed``)."""
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        return self.model(checkpoint).generate(z.to(self.device), generator=gen)

    @torch.no_grad()
    def sample(self, n: int = 64, checkpoint: str = "best", seed: Optional[int] = None, z: str = "prior",
               components: int = 10) -> torch.Tensor:
        """n samples (n, C, H, W) in the likelihood's mean space, z from the prior or, with
        ``z="gaussian"|"gmm"``, from a density fitted to the training images' codes (as
        `vaerun sample --z`; :meth:`latent_density` gives the density and its fit in nats)."""
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        if z == "prior":
            return self.model(checkpoint).sample(n, generator=gen)
        density, _ = self.latent_density(z, checkpoint, components, seed=seed or 0)
        return self.model(checkpoint).generate(density.sample(n, generator=gen).to(self.device), generator=gen)

    def latent_density(self, kind: str = "gmm", checkpoint: str = "best", components: int = 10,
                       examples: int = 10000, seed: int = 0):
        """(priors.Mixture, fit): the density ``kind`` (prior, gaussian, gmm) fitted to the codes of
        the first ``examples`` training images, with ``fit`` the mean log density of held-out
        validation codes under it and under the prior (nats) and the gain; see vaerun/priors.py."""
        from vaerun.priors import fit_to_codes

        return fit_to_codes(self.model(checkpoint), self.data(), kind, components, examples, seed, self.cfg.seed)


def load_run(path: str | os.PathLike, device: str = "cpu") -> Run:
    """Opens a run folder (see :class:`Run`)."""
    return Run(path, device)


def train_run(*overrides: str, out_dir: Optional[str | os.PathLike] = None, progress: bool = False) -> Run:
    """Trains one run as ``vaerun train <overrides>`` would and returns it opened: the same config
    check (a :class:`~vaerun.errors.VaerunError` with the CLI's message), the same timestamped run
    folder under ``out_dir`` (default: the config's ``out_dir``, ``outputs``) with the same files
    (``.hydra/`` holds only ``overrides.yaml``), log lines on the ``vaerun`` logger (printed, and
    written to the folder's ``train.log``). Sweeps and ``resume=`` are the CLI's: a loop over
    calls is a sweep here. ``progress``: a live bar instead of log lines (a terminal only)."""
    import datetime
    import logging
    from pathlib import Path

    from omegaconf import OmegaConf

    from vaerun.confcheck import check, compose_config
    from vaerun.errors import VaerunError
    from vaerun.progress import console_handler
    from vaerun.session import train

    given = [*overrides, *([f"out_dir={out_dir}"] if out_dir is not None else [])]
    problem = check(given)
    if problem:
        raise VaerunError(problem)
    cfg = compose_config(given)
    if cfg.resume:
        raise VaerunError(f"resume={cfg.resume}: resuming is the command line's job.\n"
                          f"  fix: vaerun train resume={cfg.resume}")
    now = datetime.datetime.now()
    folder = RunFolder(Path(cfg.out_dir) / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f"))
    folder.path.mkdir(parents=True)
    folder.write_overrides(given)
    log = logging.getLogger("vaerun")
    handlers = [logging.FileHandler(folder.path / "train.log")]
    handlers[0].setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    if not logging.getLogger().handlers and not log.handlers:  # nothing prints vaerun's lines yet
        handlers.append(console_handler())
    level = log.level
    log.setLevel(logging.INFO)
    for h in handlers:
        log.addHandler(h)
    try:
        typed = OmegaConf.to_object(cfg)
        train(typed, folder, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), bar=progress)
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(level)
    return Run(folder.path)
