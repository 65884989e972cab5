"""Hydra entry points. Heavy imports happen inside the task, so `vaerun --help` and tab
completion stay fast; the config schemas are registered by the callers, not at import."""
from __future__ import annotations

import logging
import sys
from typing import Optional

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

log = logging.getLogger("vaerun")


class SweepJobFailed(CompactHydraException):
    """A sweep job stopped on a user-facing error: Hydra prints this message without a traceback."""


def _train_task(cfg: DictConfig) -> float:
    """One training job (one run folder). Returns −ELBO at the end, the objective a sweeper
    would minimise. User-facing errors end a single run with a message, not a traceback."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from vaerun.confcheck import override_key
    from vaerun.errors import Interrupted, VaerunError
    from vaerun.progress import use_bar
    from vaerun.runs import RunFolder
    from vaerun.session import train

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    launcher = hc.runtime.choices.get("hydra/launcher")
    run = RunFolder(cfg.resume or hc.runtime.output_dir)
    # A sweep job whose folder already holds a checkpoint was requeued (SLURM preemption or time
    # limit, or the sweep was started again): it continues from there.
    requeued = multirun and not cfg.resume and run.checkpoint_file("last").exists() and run.config_file.exists() \
        and run.read_summary().get("status") != "completed"
    if requeued:
        log.info("%s holds a checkpoint from an earlier attempt of this job: resuming it", run.path)
    if launcher not in (None, "basic"):
        _share_cores(hc)
    try:
        if not cfg.resume and not requeued and run.is_run():
            done = _existing_run(run, multirun, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
            if done is not None:
                return done
        resume = bool(cfg.resume) or requeued
        given = {override_key(o) for o in hc.overrides.task} if cfg.resume else set()
        typed, resolved = _resumed_config(cfg, run, given) if resume else (
            OmegaConf.to_object(cfg), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
        bar = use_bar(typed.progress.value, launcher)
        summary = train(typed, run, resolved, bar=bar and not multirun, resume=resume)
    except VaerunError as err:
        log.error("%s", err)
        if multirun:  # the job fails (the sweep goes on, then exits non-zero) with a message, not a traceback
            raise SweepJobFailed(f"sweep job {hc.job.num} ({hc.job.override_dirname or 'no overrides'}) failed: "
                                 f"{str(err).splitlines()[0]} (every job's status is in its summary.json)") from None
        sys.exit(2)
    except Interrupted as err:
        log.error("%s: checkpoint saved; %s is marked 'interrupted'. Continue with: vaerun train resume=%s",
                  err, run.path, run.path)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted: %s is marked 'interrupted'. Continue with: vaerun train resume=%s", run.path, run.path)
        sys.exit(130)
    return -summary["final_val"]["elbo"]


def _existing_run(run, multirun: bool, config: dict) -> Optional[float]:
    """A new job whose folder already holds a run (a sweep started again in the same
    hydra.sweep.dir, or hydra.run.dir pointed at an old run). A completed sweep job with the same
    config is kept, not trained again: returns its objective. A sweep job that failed before its
    first checkpoint is retried in place (its stale metrics removed): returns None. Anything else
    would mix two runs in one folder: a VaerunError that names the folder and the fix."""
    from vaerun.errors import VaerunError
    from vaerun.report import differing_keys, flatten

    summary = run.read_summary()
    status = summary.get("status", "unknown")
    if multirun and status == "completed" and run.config_file.exists():
        old, new = flatten(run.read_config()), flatten(config)
        differ = differing_keys([{"config": old}, {"config": new}])  # the keys compare would show
        if not differ:
            final = summary.get("final_val") or {}
            log.info("%s already holds this job's completed run: kept, not trained again (delete the folder to "
                     "train it anew)", run.path)
            return -final["elbo"] if "elbo" in final else float("nan")
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:5]) + (", ..." if len(differ) > 5 else "")
        raise VaerunError(f"{run.path} already holds a completed run of this sweep job with a different config "
                          f"({shown}); refusing to mix two runs in one folder.\n"
                          f"  fix: start the sweep in a new hydra.sweep.dir (the default makes a new one each time), "
                          f"or delete that folder")
    if multirun and not run.checkpoint_file("last").exists():
        log.info("%s holds an attempt of this job that stopped before its first checkpoint (%s): starting it again",
                 run.path, status)
        run.metrics_file.unlink(missing_ok=True)
        return None
    fix = "" if status == "completed" else f"continue it with resume={run.path}, or "
    raise VaerunError(f"{run.path} already holds a run (status {status}); refusing to mix two runs in one folder.\n"
                      f"  fix: {fix}train into a new folder (leave hydra.run.dir at its timestamped default)")


def _share_cores(hc) -> None:
    """Parallel local jobs (joblib) split the CPU cores instead of oversubscribing them."""
    import os

    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return
    n_jobs = int(hc.launcher.get("n_jobs", 1) or 1) if "n_jobs" in hc.launcher else 1
    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs < 1 else n_jobs
    torch.set_num_threads(max(1, cores // n_jobs))


def _resumed_config(cfg: DictConfig, run, given: set):
    """The run's own resolved config (config.yaml), typed; `progress` and `device` may change, and
    its length where ``given`` (the keys set on the command line) holds `epochs` or `max_steps`."""
    from omegaconf import OmegaConf

    from vaerun.config import TrainConfig
    from vaerun.confcheck import RESUME_LENGTH, resumed_length
    from vaerun.errors import CheckpointError

    if not run.config_file.exists():
        from vaerun.runs import not_a_run

        raise CheckpointError(f"resume={not_a_run(run.path, 'resume={}')}")
    saved = run.read_config()
    saved.update(progress=OmegaConf.to_container(cfg, enum_to_str=True)["progress"],
                 device=OmegaConf.to_container(cfg, enum_to_str=True)["device"], resume=None)
    if given & set(RESUME_LENGTH):
        saved.update(resumed_length(saved, given, cfg.epochs, cfg.max_steps))
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), saved))
    return typed, saved


train_main = hydra.main(version_base="1.3", config_path="pkg://vaerun.conf", config_name="train")(_train_task)


def train_entry() -> None:
    """`vaerun-train`: the train command as its own console script (for launchers that re-exec argv[0])."""
    from vaerun.config import register_configs

    register_configs()
    train_main()
