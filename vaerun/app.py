"""Hydra entry points. Heavy imports happen inside the task, so `vaerun --help` and tab
completion stay fast; the config schemas are registered by the callers, not at import."""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

log = logging.getLogger("vaerun")


def _train_task(cfg: DictConfig) -> float:
    """One training job (one run folder). Returns −ELBO at the end, the objective a sweeper
    would minimise. User-facing errors end a single run with a message, not a traceback."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from vaerun.errors import VaerunError
    from vaerun.progress import use_bar
    from vaerun.runs import RunFolder
    from vaerun.train import train

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        typed = OmegaConf.to_object(cfg)
        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        bar = use_bar(typed.progress.value, hc.runtime.choices.get("hydra/launcher"))
        summary = train(typed, RunFolder(hc.runtime.output_dir), resolved, bar=bar and not multirun)
    except VaerunError as err:
        log.error("%s", err)
        if multirun:
            raise
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("interrupted: the run folder %s is marked 'interrupted'", hc.runtime.output_dir)
        sys.exit(130)
    return -summary["final_val"]["elbo"]


train_main = hydra.main(version_base="1.3", config_path="pkg://vaerun.conf", config_name="train")(_train_task)


def train_entry() -> None:
    """`vaerun-train`: the train command as its own console script (for launchers that re-exec argv[0])."""
    from vaerun.config import register_configs

    register_configs()
    train_main()
