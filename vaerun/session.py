"""A training session's lifecycle: summary status from start to end, signals, resume.

``train(cfg, run, config)`` is what the CLI runs and what tests call: it returns the summary
that it also writes to ``summary.json``, whose status is written at the start (``running``) and
at the end whatever happens (``completed``, ``failed`` with the error, ``interrupted``).
"""
from __future__ import annotations

import copy
import logging
import time

from vaerun.config import TrainConfig
from vaerun.errors import Interrupted
from vaerun.loop import GracefulStop, Trainer
from vaerun.train import build

log = logging.getLogger("vaerun")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def train(cfg: TrainConfig, run, config: dict, *, bar: bool = False, resume: bool = False) -> dict:
    """Builds, trains and writes a complete run folder; with ``resume`` continues the run in
    ``run`` from its checkpoints/last.pt. ``config`` is the resolved config as plain containers."""
    from vaerun.confcheck import RESUME_LENGTH
    from vaerun.progress import Reporter
    from vaerun.runs import provenance

    t0 = time.time()
    if resume:
        summary = run.read_summary()
        summary.setdefault("resumed", []).append({"at": _now(), "from_status": summary.get("status")})
        before = run.read_config()
        length = {k: (before.get(k), config.get(k)) for k in RESUME_LENGTH if before.get(k) != config.get(k)}
        if length:  # resumed with a new length: the config says so from now on
            summary["resumed"][-1]["length"] = {k: {"from": a, "to": b} for k, (a, b) in length.items()}
            run.write_config(config)
        summary.update(status="running", error=None, **provenance())
        base_wall = summary.get("wall_time_s") or 0.0
    else:
        summary = {"status": "running", "started": _now(), "run_dir": str(run.path), "seed": cfg.seed, **provenance()}
        base_wall = 0.0
        run.write_config(config)
    run.write_summary(summary)

    def finish(status: str, error=None) -> None:
        summary.update(status=status, ended=_now(), wall_time_s=round(base_wall + time.time() - t0, 3))
        if error is not None:
            summary["error"] = error
        _write_curves(run)
        run.write_summary(summary)

    writer = None
    try:
        with GracefulStop(on_force=lambda signum: finish("interrupted", f"stopped at once by signal {signum}")) as stop:
            parts = build(cfg)
            summary.update(device=str(parts.device), num_params=sum(p.numel() for p in parts.model.parameters()),
                           total_steps=parts.total_steps, steps_per_epoch=parts.steps_per_epoch,
                           train_examples=len(parts.data.train), data_shape=list(parts.data.shape),
                           denormals=parts.denormals)
            log.info("%s: %d train / %d val examples of shape %s | %s model, %d parameters | %d steps on %s | %s",
                     parts.data.name, len(parts.data.train), len(parts.data.val), "x".join(map(str, parts.data.shape)),
                     cfg.model.name.value, summary["num_params"], parts.total_steps, parts.device, run.path)
            trainer = Trainer(cfg, parts, run, config, None, None, t0)
            if resume:
                trainer.resume()
            writer = run.tb_writer(purge_step=trainer.state.step + 1 if resume else None) if cfg.tensorboard else None
            trainer.writer = writer
            reporter = Reporter(parts.total_steps, bar, start=trainer.state.step, eval_every=cfg.eval_every)
            with reporter as trainer.reporter:
                result = trainer.fit(stop)
            summary.update(**result)
            try:
                summary["diagnosis"] = _diagnose(run, config, parts, cfg.seed)
            except Exception as err:  # the model is trained and saved: reading it never fails the run
                summary["diagnosis"] = {"overall": "unknown", "error": f"{type(err).__name__}: {err}"}
                log.warning("the end-of-training diagnosis failed (%s: %s); the run is complete (retry with: "
                            "vaerun diagnose %s)", type(err).__name__, err, run.path)
            try:
                _pictures(cfg, run, parts)
            except Exception as err:  # nor does drawing it
                summary["pictures_error"] = f"{type(err).__name__}: {err}"
                log.warning("end-of-training pictures failed (%s: %s); the run is complete, its checkpoints and "
                            "metrics are saved (retry with: vaerun traverse %s; vaerun latents %s)",
                            type(err).__name__, err, run.path, run.path)
        finish("completed")
    except Interrupted as err:
        finish("interrupted", f"{err}; resume with: vaerun train resume={run.path}")
        raise
    except KeyboardInterrupt:
        finish("interrupted", f"KeyboardInterrupt; resume with: vaerun train resume={run.path}")
        raise
    except BaseException as err:
        finish("failed", f"{type(err).__name__}: {err}")
        raise
    finally:
        if writer is not None:
            writer.close()
    fv, bv = summary["final_val"], summary["best_val"]
    log.info("done in %.1fs: val elbo %.3f nats (recon %.3f, kl %.3f) | best %.3f at step %d | %s",
             summary["wall_time_s"], fv["elbo"], fv["recon"], fv["kl"], bv["elbo"], bv["step"], run.path)
    return summary


def _diagnose(run, config: dict, parts, seed: int) -> dict:
    """Runs `vaerun diagnose` on the finished model; returns the verdicts for summary.json."""
    from vaerun.diagnose import diagnose_folder, summary_entry, z_dependence

    with parts.evaluated():  # the weights the validation records were computed with
        zdep = z_dependence(parts.model, parts.data, seed=seed)
    report = diagnose_folder(run, config, zdep)
    log.info("diagnosis: %s — %s (details: vaerun diagnose %s)", report["overall"], report["headline"], run.path)
    return summary_entry(report)


def _pictures(cfg: TrainConfig, run, parts) -> None:
    """Traversal and latent map from the best checkpoint into pictures/ (config: pictures.*)."""
    from vaerun.pictures import end_of_training
    from vaerun.runs import model_weights

    pc = cfg.pictures
    traverse = pc.traverse
    if traverse is None:  # auto: a pixel-by-pixel decoder on the CPU would take minutes
        traverse = not (cfg.model.name.value == "autoregressive" and parts.device.type == "cpu")
    if not (traverse or pc.latents):
        return
    t = time.time()
    best = run.load_checkpoint("best", map_location=parts.device)
    model = copy.deepcopy(parts.model)  # the trained model stays as it is
    model.load_state_dict(model_weights(best))
    written = end_of_training(run, model, parts.data, traverse=traverse, latents=pc.latents,
                              steps=pc.traverse_steps, span=pc.traverse_range, max_dims=pc.max_dims,
                              threshold=cfg.diagnostics.collapse_threshold, label_names=parts.data.label_names,
                              seed=cfg.seed)
    log.info("pictures (best checkpoint, step %d): %s in %.1fs", best["step"],
             ", ".join(str(p.relative_to(run.path)) for p in written.values()), time.time() - t)


def _write_curves(run) -> None:
    records = run.read_metrics()
    if any(r.get("split") == "train" for r in records):
        import matplotlib.pyplot as plt

        from vaerun.plots import curves_figure

        fig = curves_figure(records)
        run.save_figure(fig)
        plt.close(fig)
