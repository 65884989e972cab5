"""`vaerun diagnose`: a verdict for each failure the source document describes, with its evidence
in numbers, a one-line explanation and next steps as overrides (shown as whole commands: `command`).

Reads the run folder's metrics (through runs.py) and, for the tests that need it, the model.
"""
from __future__ import annotations

import math
import re
import shlex
import statistics
from typing import Optional, Sequence

import torch

from vaerun.checks import unfinished_schedule
from vaerun.data import Data
from vaerun.models.vae import VAE

ORDER = {"ok": 0, "warning": 1, "problem": 2}


def verdict(name: str, status: str, text: str, evidence: dict, why: str, steps: list[str] = ()) -> dict:
    return {"name": name, "status": status, "verdict": text, "evidence": evidence, "explanation": why,
            "next_steps": list(steps)}


@torch.no_grad()
def z_dependence(model: VAE, data: Data, n: int = 500, seed: int = 0) -> dict:
    """Does the decoder use z? Mean recon (nats) of validation images with z from q(z|x), with z
    shuffled across the batch, and with z from the prior. If shuffling barely hurts, z is ignored.
    Every draw comes from one generator seeded by ``seed``: training's diagnosis and `vaerun
    diagnose` give the same numbers."""
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed + 271828)
    x = data.prepare(data.val.images[:n], gen)
    model.eval()
    mu, logvar = model.encode(x)

    def normal():
        return torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)

    z = mu + torch.exp(0.5 * logvar) * normal()
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)

    def recon(zz):
        return -model.likelihood.log_prob(model.decode_pieces(zz, x), x).mean().item()

    out = {"recon_posterior": recon(z), "recon_shuffled": recon(z[perm]), "recon_prior": recon(normal())}
    out["shuffle_penalty"] = out["recon_shuffled"] - out["recon_posterior"]
    return out


NEAR_TOTAL_NATS = 1.0  # a code with less than one nat in all tells apart fewer than ~3 inputs


def _warmup_remedy(config: dict, total: int) -> list[str]:
    """A KL warm-up fitted to what the run already did: twice the run's own warm-up when it had one
    and that still fits in half the run (else none: its warm-up is already long), or a linear one
    over a fifth of the run, at least 1000 steps, never past half of it."""
    sched = config.get("schedule") or {}
    if sched.get("name") in ("linear", "sigmoid"):
        longer = 2 * int(sched.get("warmup_steps") or 0)
        return [f"schedule.warmup_steps={longer}"] if 0 < longer <= total // 2 else []
    return [f"schedule=linear schedule.warmup_steps={max(1, min(max(1000, total // 5), total // 2))}"]


def _free_bits_floor(config: dict, least: float = 0.25) -> float:
    """Free bits to suggest: ``least`` nats per dim, or twice the run's own floor when higher."""
    return max(least, 2 * float(config.get("free_bits") or 0.0))


def _weaker_decoder(config: dict) -> list[str]:
    """For an autoregressive decoder, the literature's remedy for a code it ignores: z as a spatial
    map (a global vector is the easier one to ignore), then fewer layers and a smaller kernel than
    the run's own (a shorter reach into the pixels before). Nothing for other decoders, whose
    collapse the KL weight (β, warm-up, free bits) explains."""
    m = config.get("model") or {}
    if m.get("name") != "autoregressive":
        return []
    steps = ["model.ar_cond=spatial"] if m.get("ar_cond") == "global" else []
    layers, kernel = int(m.get("ar_layers") or 6), int(m.get("ar_kernel") or 5)
    weaker = [f"model.ar_layers={layers // 2}"] if layers > 1 else []
    weaker += ["model.ar_kernel=3"] if kernel > 3 else []
    return steps + ([" ".join(weaker)] if weaker else [])


def collapse_remedies(config: dict, total: int, decoder: bool = True) -> list[str]:
    """What a run whose KL vanishes could try, fitted to its own settings: β = 1 when it trains at
    more, a (longer) KL warm-up, free bits above its own floor, and (``decoder``) a weaker
    autoregressive decoder."""
    return [*(["beta=1"] if (config.get("beta") or 1.0) > 1 else []), *_warmup_remedy(config, total),
            f"free_bits={_free_bits_floor(config):g}", *(_weaker_decoder(config) if decoder else [])]


def _collapse(val: dict, zdep: Optional[dict], thr: float, total: int, config: dict) -> dict:
    kl = val["kl_per_dim"]
    dead = [d for d, k in enumerate(kl) if k < thr]
    ev = {"kl_total": round(val["kl"], 4), "kl_per_dim": [round(k, 4) for k in kl], "collapsed_dims": dead,
          "active_units": val.get("active_units")}
    ignores = False
    if zdep:
        ev.update({k: round(v, 3) for k, v in zdep.items()})
        ignores = zdep["shuffle_penalty"] < max(1.0, 0.01 * abs(zdep["recon_posterior"]))
    warmup = _warmup_remedy(config, total)
    steps = collapse_remedies(config, total, decoder=False)  # a partial collapse: the KL weight explains it
    if len(dead) == len(kl) or (val.get("active_units") == 0):
        return verdict("posterior_collapse", "problem", "full collapse: no latent dimension carries information", ev,
                       "q(z|x) equals the prior for every x, so z tells the decoder nothing"
                       + (" (and the decoder ignores z: shuffling it costs nothing)" if ignores else ""),
                       collapse_remedies(config, total))
    if val["kl"] < NEAR_TOTAL_NATS:  # z can tell the decoder at most KL nats about x, on average
        fb = _free_bits_floor(config, max(0.25, round(2.0 / len(kl), 2)))
        return verdict("posterior_collapse", "problem",
                       f"near-total collapse: the code carries {val['kl']:.2f} nats in all", ev,
                       f"{len(kl) - len(dead)} of {len(kl)} dims are above {thr} nats, but together they hold less "
                       f"than {NEAR_TOTAL_NATS:g} nat, so z can tell the decoder almost nothing about x"
                       + (" (shuffling z barely changes the reconstruction)" if ignores else ""),
                       [f"free_bits={fb:g}", "aggressive.enabled=true", *_weaker_decoder(config), *warmup])
    if dead:
        au, live = val.get("active_units"), len(kl) - len(dead)
        both = (f"; active units counts {au - live} of them ({au} of {len(kl)}): their posterior means still vary "
                "across inputs by more than diagnostics.au_threshold, yet each carries almost no information"
                if isinstance(au, int) and au > live else "")
        return verdict("posterior_collapse", "warning", f"partial collapse: dims {dead} carry < {thr} nats", ev,
                       "unused dimensions are harmless when the rest suffice, but they mean the code is smaller "
                       "than model.latent_dim" + both, steps)
    if ignores:
        return verdict("posterior_collapse", "warning", "KL is spread over dims, yet the decoder barely uses z", ev,
                       "reconstructions hardly change when z is shuffled: the decoder models x on its own", steps)
    return verdict("posterior_collapse", "ok", f"none: all {len(kl)} dims carry information", ev,
                   "every latent dimension has KL above the threshold and the decoder depends on z")


MI_NOISE_UNITS = 4  # an MI within this many of its noise scale is no evidence of information


def _mi_noise(val: dict, config: dict) -> float:
    """The MI estimate's noise scale for a validation record (:func:`vaerun.metrics.mi_noise`);
    records written before it was recorded: from the run's mi_examples and latent size."""
    from vaerun.metrics import mi_noise

    if val.get("mi_noise") is not None:
        return float(val["mi_noise"])
    n = min(int((config.get("diagnostics") or {}).get("mi_examples") or 1000), int(val.get("n") or 10 ** 9))
    return mi_noise(max(1, n), len(val.get("kl_per_dim") or [0]))


def _lagging(val: dict, config: dict, total: int) -> dict:
    noise = _mi_noise(val, config)
    ev = {"kl": round(val["kl"], 4), "mi": round(val.get("mi", float("nan")), 4), "mi_noise": round(noise, 4)}
    if val["kl"] > 0.5 and val.get("mi", 1.0) < MI_NOISE_UNITS * noise:
        lr = float((config.get("optimizer") or {}).get("lr") or 1e-3)
        steps = [] if (config.get("aggressive") or {}).get("enabled") else ["aggressive.enabled=true"]
        steps += [f"optimizer.lr={min(3e-4, lr / 3):.2g}", *_warmup_remedy(config, total)]
        return verdict("lagging_encoder", "problem", "lagging encoder: KL without mutual information", ev,
                       f"posteriors differ from the prior but not between inputs (He et al. 2019): I(x; z) is "
                       f"within {MI_NOISE_UNITS} noise scales ({MI_NOISE_UNITS * noise:.3g} nats) of 0", steps)
    return verdict("lagging_encoder", "ok", "no sign: mutual information follows KL", ev,
                   f"I(x; z) is more than {MI_NOISE_UNITS} noise scales above 0, or KL is near 0")


def _early_vanishing(vals: list[dict], thr: float, early: int, remedies: Sequence[str]) -> dict:
    """Most dims under the threshold at a validation in the first ``early`` steps. ``remedies``:
    the run's own (collapse_remedies), as the warning during training named them."""
    first = [v for v in vals if v["step"] <= early]
    hit = next((v for v in first if sum(k < thr for k in v["kl_per_dim"]) * 2 >= len(v["kl_per_dim"])), None)
    if hit is None:
        return verdict("early_kl_vanishing", "ok", "no: KL did not vanish early", {"early_steps": early},
                       "in the first evaluations most dimensions kept KL above the threshold")
    d = len(hit["kl_per_dim"])
    low = sum(k < thr for k in hit["kl_per_dim"])
    final_low = sum(k < thr for k in vals[-1]["kl_per_dim"])
    final_kl = vals[-1]["kl"]
    ev = {"step": hit["step"], "collapsed_then": f"{low}/{d}", "collapsed_at_end": f"{final_low}/{d}",
          "kl_at_end": round(final_kl, 4)}
    recovered = final_low < low
    # harmful when the code that survived is (near) empty; when the surviving dims still hold a real
    # code (Burda et al. 2015's VAE keeps 19 of 50 units), more units may still help the likelihood
    empty = final_low == d or final_kl < NEAR_TOTAL_NATS
    why = "the KL pressure won before encoder and decoder learned to communicate"
    if not empty:
        why += (f"; the {d - final_low} dims that stayed active carry {final_kl:.1f} nats, so the code works, but a "
                "KL warm-up or free bits may keep more dims active and improve the likelihood")
    return verdict("early_kl_vanishing", "problem" if empty and not recovered else "warning",
                   f"KL vanished early (step {hit['step']}: {low}/{d} dims)" + (", partly recovered" if recovered else ""),
                   ev, why, list(remedies))


def _imbalance(val: dict, beta: float, thr: float, schedule: Optional[dict] = None) -> dict:
    """Which term wins. ``schedule``: the schedule verdict; when its warm-up did not finish, the
    balance is judged at the β the run ended at, and finishing the warm-up is the remedy (doubling
    the configured β would not touch a run that never trained at it)."""
    agg, kl = val.get("aggregate_kl", 0.0), val["kl"]
    dead = sum(k < thr for k in val["kl_per_dim"])
    ev = {"beta": beta, "aggregate_kl": round(agg, 4), "kl": round(kl, 4), "collapsed_dims": dead}
    full = val.get("aggregate_kl_full")  # with the correlations between dims (runs from before it: absent)
    if full is not None:
        ev["aggregate_kl_full"] = round(full, 4)
    short = schedule is not None and schedule["status"] != "ok"
    trained = schedule["evidence"]["final_beta"] if short else beta
    if short:
        ev["final_beta"] = trained
    if trained > 1 and dead * 2 >= len(val["kl_per_dim"]):
        return verdict("imbalance", "problem", f"KL dominates: β={trained:g} switched off {dead} dims", ev,
                       "the KL weight outweighs what reconstruction gains from using z", [f"beta={max(beta / 4, 1):g}"]
                       if not short else schedule["next_steps"])
    if agg > max(2.0, 0.5 * len(val["kl_per_dim"]), 0.25 * kl):  # ~0.3 nats/dim is usual at β = 1
        why = (f"q(z) averaged over data is {agg:.2f} nats from N(0, I): prior samples land where the "
               "decoder saw no data, so samples look worse than reconstructions (without retraining, "
               "`vaerun sample RUN --z gmm` draws z from a mixture fitted to where the data is)")
        if short and trained < beta:
            return verdict("imbalance", "warning", f"reconstruction dominates: the run ended its warm-up at "
                           f"β={trained:.3g}, short of beta={beta:g}", ev, why + "; the run never trained at "
                           "its β, so finish the warm-up before raising it", schedule["next_steps"])
        return verdict("imbalance", "warning", "reconstruction dominates: the aggregate posterior misses the prior",
                       ev, why, [f"beta={beta * 2:g}", "schedule=constant"])
    return verdict("imbalance", "ok", "balanced: the aggregate posterior's mean and spread match the prior", ev,
                   f"q(z) is {agg:.2f} nats from N(0, I) (moment-matched)" + (
                       f", {full:.2f} counting the correlations between dims" if full is not None and full > agg + 1
                       else "") + "; moments cannot see codes that cluster (by class, say), whose gaps prior samples "
                   "fall into: where they look worse than reconstructions, `vaerun sample RUN --z gmm` draws z "
                   "from a mixture fitted to the codes (docs/studies.md, \"Prior samples\")")


def _spikes(values: list[float], factor: float) -> int:
    """Points above ``factor`` x the median of the previous 10 (after the first 10)."""
    return sum(1 for i in range(10, len(values))
               if math.isfinite(values[i]) and values[i] > factor * statistics.median(values[i - 10:i]) > 0)


def ema_decay_for(steps: int) -> float:
    """A weight-average decay whose window, 1/(1 − decay) steps, is about a twentieth of a run of
    ``steps`` steps (at least 10), rounded to a usual value."""
    window = max(10.0, steps / 20)
    return min((0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999),
               key=lambda d: abs(math.log(1 / (1 - d)) - math.log(window)))


# a final ELBO this far below the best (relative) is a problem even without instability
FALL_NOTICED = 0.02  # a final validation ELBO this far (relative) below the best is a fall worth a verdict
FALL_PROBLEM = 0.10


def _longer(config: dict, steps: int) -> str:
    """The override that runs twice as long: ``max_steps`` when the run set it, else ``epochs``."""
    if config.get("max_steps"):
        return f"max_steps={2 * steps}"
    return f"epochs={2 * int(config.get('epochs') or 1)}"


MAX_SPIKES = 2  # loss and gradient-norm spikes a stable run may show


def _unstable(ev: dict) -> bool:
    """Blow-ups in the optimization check's evidence: non-finite steps, or more than MAX_SPIKES spikes."""
    return ev["non_finite_steps"] > 0 or ev["loss_spikes"] + ev["grad_spikes"] > MAX_SPIKES


def _train_elbo(train: list[dict], step: int, records: int = 2) -> Optional[float]:
    """The training ELBO around ``step``: the mean of the last ``records`` train records logged at
    or before it (each the mean over its logging window's batches, at β = 1)."""
    near = [r["elbo"] for r in train if r["step"] <= step and isinstance(r.get("elbo"), (int, float))][-records:]
    return statistics.fmean(near) if near else None


def _overfitting(train: list[dict], vals: list[dict], config: dict) -> dict:
    """The validation ELBO (``vals``, not empty) falling from its best over two or more validations
    while the training ELBO keeps rising: the model learns its training images, not the data.
    Weights wandering at too high a learning rate make the validation ELBO fall too, but not with a
    training ELBO that rises by at least half as much (that is the optimization check's "noisy end")."""
    best = max(range(len(vals)), key=lambda i: vals[i]["elbo"])  # the first of equals, as training's best.pt
    v_best, v_end = vals[best], vals[-1]
    t_best, t_end = _train_elbo(train, v_best["step"]), _train_elbo(train, v_end["step"])
    ev = {"best_step": v_best["step"], "validations_after_best": len(vals) - 1 - best}
    if None in (t_best, t_end):
        return verdict("overfitting", "ok", "no training record to compare with", ev, "")
    fall, rise = v_best["elbo"] - v_end["elbo"], t_end - t_best
    ev.update(val_elbo_best=round(v_best["elbo"], 3), val_elbo_final=round(v_end["elbo"], 3),
              train_elbo_at_best=round(t_best, 3), train_elbo_final=round(t_end, 3),
              gap_at_best=round(t_best - v_best["elbo"], 3), gap_final=round(t_end - v_end["elbo"], 3))
    ev["memorising"] = (ev["validations_after_best"] >= 2 and fall > FALL_NOTICED * abs(v_best["elbo"])
                        and rise >= 0.5 * fall)
    patience = config.get("early_stop") or 0
    if patience and ev["validations_after_best"] >= patience:  # the run stopped itself: nothing left to advise
        return verdict("overfitting", "ok", f"early_stop ended the run {ev['validations_after_best']} validations after "
                       f"its best (step {v_best['step']})", ev,
                       f"the train − validation ELBO gap went from {ev['gap_at_best']:.2f} to {ev['gap_final']:.2f} "
                       "nats after the best; checkpoints/best.pt holds the best weights")
    if not ev["memorising"]:
        return verdict("overfitting", "ok", "no: the validation ELBO did not fall more than 2 % from its best while "
                       "the training ELBO rose", ev, f"train − validation ELBO gap {ev['gap_final']:.2f} nats at the end")
    data = config.get("dataset", {}) or {}
    steps = (["dataset.binarize=dynamic"] if data.get("binarize") == "static" else []) + \
            (["dataset.subset=null"] if data.get("subset") else []) + \
            ([] if patience else ["early_stop=3"]) + \
            [f"max_steps={v_best['step']}", "optimizer=adamw optimizer.weight_decay=1.0"]
    status = "problem" if fall > FALL_PROBLEM * abs(v_best["elbo"]) else "warning"
    return verdict("overfitting", status, f"overfitting: the validation ELBO fell {fall:.2f} nats from its best "
                   f"(step {v_best['step']}) while the training ELBO rose {rise:.2f}", ev,
                   f"the gap between the training and the validation ELBO grew from {ev['gap_at_best']:.2f} to "
                   f"{ev['gap_final']:.2f} nats over the last {ev['validations_after_best']} validations: the model "
                   "memorises its training images. checkpoints/best.pt keeps the weights of the best validation "
                   "(every vaerun command uses it); more data, or fresh data each step (dynamic binarization), "
                   "helps most; stopping at the best step (early_stop, or max_steps) saves the rest of the run",
                   steps)


def _optimization(train: list[dict], vals: list[dict], events: list[dict], lr: float, ema: float,
                  lr_scheduler: str, longer: str, overfit: bool) -> dict:
    """``overfit``: the overfitting check found the fall of the validation ELBO to be memorising (an
    early-stopped run included), so it is not counted here."""
    loss = [r["loss"] for r in train if isinstance(r.get("loss"), (int, float))]
    gn = [r["grad_norm"] for r in train if isinstance(r.get("grad_norm"), (int, float))]
    elbos = [v["elbo"] for v in vals]
    best = max(elbos) if elbos else float("nan")
    ev = {"non_finite_steps": len(events), "loss_spikes": _spikes(loss, 1.5), "grad_spikes": _spikes(gn, 10.0),
          "lr": lr, "final_elbo": round(elbos[-1], 3) if elbos else None, "best_elbo": round(best, 3)}
    rolled = [e for e in events if e.get("action") == "rollback"]
    if rolled:  # each rollback halved the rate: the run ended at lr / 2^k, and that is where advice starts
        lr = lr * 0.5 ** len(rolled)
        ev["rollbacks"], ev["lr_after_rollbacks"] = len(rolled), lr
    late = elbos[-max(2, len(elbos) // 4):]
    ev["late_gain_nats"] = round(late[-1] - late[0], 3) if len(late) > 1 else 0.0
    issues = []
    if events:
        issues.append(f"{len(events)} non-finite step{'' if len(events) == 1 else 's'}")
    if ev["loss_spikes"] + ev["grad_spikes"] > MAX_SPIKES:
        issues.append(f"{ev['loss_spikes']} loss and {ev['grad_spikes']} gradient spikes")
    fall = (best - elbos[-1]) / abs(best) if elbos and best != 0 else 0.0
    fell = f"final ELBO {elbos[-1]:.2f} fell from the best {best:.2f}" if fall > FALL_NOTICED and not overfit else None
    if fell and (issues or fall > FALL_PROBLEM):
        issues.append(fell)
    if issues:
        return verdict("optimization", "problem", "optimization trouble: " + "; ".join(issues), ev,
                       "signs of a learning rate too high for this model", [f"optimizer.lr={lr / 3:.2g}",
                                                                           "optimizer.grad_clip=1.0"])
    if fell:  # no instability, a fall of 2-10 %: the last weights wander at this learning rate
        remedies = [] if ema > 0 else [f"optimizer.ema={ema_decay_for(vals[-1]['step']):g}"]  # the run's length
        remedies += [] if lr_scheduler != "none" else ["optimizer.lr_scheduler=cosine"]
        return verdict("optimization", "warning", f"noisy end of training: {fell}", ev,
                       "no non-finite steps or spikes, but the last weights are worse than the best "
                       f"({100 * fall:.1f} % of the ELBO): at this learning rate the weights keep moving "
                       "around a good region. The best checkpoint is kept (checkpoints/best.pt); averaging the "
                       "weights (evaluated on the average) or decaying the learning rate ends training in that "
                       "region, a lower learning rate too, but it also learns slower",
                       [*remedies, f"optimizer.lr={lr / 3:.2g}"])
    if elbos and len(late) > 1 and ev["late_gain_nats"] > 0.01 * abs(best):
        return verdict("optimization", "ok", "stable, and still improving at the end", ev,
                       "the ELBO rose by more than 1% over the last quarter: the run stopped early, or the "
                       f"learning rate is low; `vaerun train resume=RUN {longer}` continues this run to that length "
                       "(not under a cyclical β or a cosine learning rate, which are drawn over the run's length)",
                       [longer, *([f"optimizer.lr={min(lr * 3, 3e-3):.2g}"] if lr < 3e-3 else [])])
    if len(elbos) < 3:
        return verdict("optimization", "ok", f"stable: no non-finite steps or spikes; {len(elbos)} validation "
                       f"pass{'es' if len(elbos) != 1 else ''}, too few to tell whether the ELBO settled", ev,
                       "loss and gradient norms stayed in range; validate more often to see the ELBO's trend",
                       [f"eval_every={max(1, (vals[-1]['step'] if vals else 0) // 5)}"])
    if overfit:
        return verdict("optimization", "ok", "stable: no non-finite steps or spikes (the late decline is overfitting)",
                       ev, "loss and gradient norms stayed in range while the training ELBO kept improving")
    return verdict("optimization", "ok", "stable: no non-finite steps, spikes or late decline", ev,
                   "loss and gradient norms stayed in range and the ELBO settled")


def _schedule(train: list[dict], audit: Optional[dict], config: dict) -> dict:
    """A β warm-up the run ended before finishing: training never reached its target objective."""
    sched, beta = config.get("schedule", {}) or {}, config.get("beta", 1.0)
    betas = [r["beta"] for r in train if isinstance(r.get("beta"), (int, float))]
    final = betas[-1] if betas else (audit or {}).get("final_beta")
    steps = max((r["step"] for r in train), default=0)
    ev = {"schedule": sched.get("name"), "beta": beta, "final_beta": None if final is None else round(final, 4),
          "steps": steps}
    if sched.get("name") in ("linear", "sigmoid"):
        ev["warmup_ends_at_step"] = sched.get("delay_steps", 0) + sched.get("warmup_steps", 0)
    if final is not None and unfinished_schedule(final, beta, sched.get("beta_start", 0.0)):
        return verdict("schedule", "warning", f"β warm-up unfinished: the run ended at β={final:.3g}, short of "
                       f"beta={beta:g}", ev, "the model never trained at its target objective: it ended weighted "
                       "towards reconstruction (or towards KL, for a falling β), so its final ELBO, always reported "
                       "at β = 1, is not what the configured β would reach",
                       [f"schedule.warmup_steps={max(1, steps // 5)}"] +
                       ([f"max_steps={math.ceil(1.25 * ev['warmup_ends_at_step'])}"] if "warmup_ends_at_step" in ev else []))
    return verdict("schedule", "ok", "the β schedule reached its target" if final is not None else
                   "no training record yet", ev, f"training ended at β={final:.3g}" if final is not None else "")


def _likelihood(audit: Optional[dict], cfg_lik: dict, cfg_data: dict) -> dict:
    notes = (audit or {}).get("notes", [])
    ev = {"likelihood": cfg_lik.get("name"), "binary_data": (audit or {}).get("binary"),
          "sigma": cfg_lik.get("sigma") if cfg_lik.get("name") == "gaussian" else None}
    bern = [n for n in notes if n.startswith("Bernoulli")]
    wide = [n for n in notes if "wide" in n]
    unbounded = [n for n in notes if n.startswith("density on binary data")]
    levels = [n for n in notes if n.startswith("256-level likelihood on binary data")]
    piled = [n for n in notes if n.startswith("density on pixels piled")]
    # on binary data: the Bernoulli, or (binarized grey levels) the grey levels themselves
    to_binary = ["likelihood=bernoulli"] + (["dataset.binarize=none"] if cfg_data.get("binarize", "none")
                                            not in (None, "none") else [])
    if unbounded:
        return verdict("likelihood", "problem", "a continuous density on binary data: the ELBO is unbounded", ev,
                       "on pixels that are all 0 or 1 a density has no ceiling: the sharper the model, the higher "
                       "the 'likelihood', without limit, so a positive ELBO here means nothing and cannot be "
                       "compared with a Bernoulli run's nats", to_binary)
    if levels:
        return verdict("likelihood", "problem", "a 256-level likelihood on binary data", ev,
                       "the discretized logistic puts its mass on 256 grey levels where the pixels take two, and "
                       "can reach 0 and 1 only at the ends of its range: its nats are honest but far worse "
                       "than a Bernoulli's on the same data", to_binary)
    if piled:
        return verdict("likelihood", "warning", "a continuous density on pixels piled at 0 and 255", ev,
                       f"{100 * (audit or {}).get('saturated_share', 0):.1f} % of the pixels sit exactly on 0 or 255, "
                       "where a density can grow without bound as the model sharpens: its nats can flatter it and only "
                       "bpd (each level's bin mass) is a code length comparable with a mass likelihood's",
                       ["likelihood=logistic"])
    if bern:
        return verdict("likelihood", "problem", "Bernoulli likelihood on grey-level data", ev,
                       "the recon term is a cross-entropy, not a log-likelihood: its nats are not comparable",
                       ["dataset.binarize=dynamic", "likelihood=logistic"])
    if wide:
        return verdict("likelihood", "warning", "blur: a wide fixed-σ Gaussian", ev, wide[0].split(":")[0],
                       ["likelihood.learn_sigma=global", f"likelihood.sigma={(cfg_lik.get('sigma') or 0.1) / 3:.2g}"])
    name = cfg_lik.get("name")
    why = ("binary data with a Bernoulli likelihood" if name == "bernoulli" and ev.get("binary_data") else
           f"a Gaussian whose fixed σ={ev['sigma']:g} is not wide against the data's spread"
           if name == "gaussian" and (cfg_lik.get("learn_sigma") or "none") == "none" and ev.get("sigma") is not None
           else f"{name} likelihood{' (σ learned)' if name == 'gaussian' else ''}: no mismatch with the data found")
    return verdict("likelihood", "ok", "the likelihood suits the data", ev, why)


def diagnose(records: list[dict], config: dict, zdep: Optional[dict] = None, overrides: Sequence[str] = (),
             planned_steps: Optional[int] = None) -> dict:
    """Verdicts from a run's metrics records and resolved config (plus the z test, when given).
    ``overrides``: the run's command line (.hydra/overrides.yaml), kept in the report so that each
    next step can be shown as a whole command (:func:`command`). ``planned_steps``: the run's
    length (summary.json's total_steps), which a stopped or interrupted run did not reach: the
    warm-ups advised are sized to it (default: the last validation's step)."""
    vals = [r for r in records if r.get("split") == "val"]
    train = [r for r in records if r.get("split") == "train"]
    events = [r for r in records if r.get("split") == "event" and r.get("event") == "non_finite"]
    audit = next((r for r in records if r.get("split") == "audit"), None)
    if not vals:
        return {"overall": "unknown", "headline": "no validation record yet: nothing to diagnose", "verdicts": []}
    dg = config.get("diagnostics", {})
    thr = dg.get("collapse_threshold", 0.01)
    total = planned_steps or max(r["step"] for r in vals)  # remedies are sized to the run as planned
    early = int(dg.get("early_fraction", 0.2) * total)
    opt = config.get("optimizer", {}) or {}
    beta, lr = config.get("beta", 1.0), opt.get("lr", 1e-3)
    overfitting = _overfitting(train, vals, config)
    optimization = _optimization(train, vals, events, lr, opt.get("ema", 0.0) or 0.0,
                                 opt.get("lr_scheduler", "none") or "none", _longer(config, total),
                                 overfitting["evidence"].get("memorising", False))
    schedule = _schedule(train, audit, config)
    out = [_collapse(vals[-1], zdep, thr, total, config),
           _lagging(vals[-1], config, total),
           _early_vanishing(vals, thr, early, collapse_remedies(config, total)),
           _imbalance(vals[-1], beta, thr, schedule), optimization, overfitting,
           schedule, _likelihood(audit, config.get("likelihood", {}), config.get("dataset", {}))]
    worst = max(out, key=lambda v: ORDER[v["status"]])
    headline = "healthy: no problem found" if worst["status"] == "ok" else worst["verdict"]
    causes = [v for v in out if v["status"] == worst["status"] != "ok" and (  # root causes lead the headline:
        v is optimization and _unstable(v["evidence"])                    # blow-ups,
        or v["name"] == "likelihood")]                                   # a likelihood that does not suit the data
    if causes:  # they can bring about the collapse or imbalance found beside them
        others = [v["name"] for v in out if v["status"] == worst["status"] and v is not causes[0]
                  and v["name"] != "schedule"]  # a warm-up longer than the run is the config's own doing
        headline = causes[0]["verdict"] + (f" (it may also explain: {', '.join(others)})" if others else "")
    return {"overall": worst["status"], "headline": headline, "step": vals[-1]["step"], "verdicts": out,
            "overrides": list(overrides), "resumable": resumable(config)}


def summary_entry(report: dict) -> dict:
    """What summary.json keeps of a diagnosis (and `vaerun compare` shows): the overall status,
    the headline and each check's status."""
    return {"overall": report["overall"], "headline": report["headline"],
            "checks": {v["name"]: v["status"] for v in report["verdicts"]}}


_SHELL_SAFE = re.compile(r"[\w@%+=:,./\[\]-]+")


def command(step: str, overrides: Sequence[str] = (), resume_from: Optional[str] = None) -> str:
    """The whole `vaerun train` command of a next step: the run's own overrides (``overrides``, as
    Hydra recorded them; those the step sets again are replaced) followed by the step's, so that
    pasting it trains the run's dataset and model again with the one change. Hydra's own keys and
    ``resume`` are left out; values the shell would split are quoted. A step that only makes the
    run longer (``epochs``, ``max_steps``) continues the run itself when ``resume_from`` (its
    folder) is given: the steps it trained are not trained again. A new ``epochs`` also drops the
    run's ``max_steps`` (which would otherwise still set the length)."""
    from vaerun.confcheck import override_key, without_hydra

    new = step.split()
    replaced = {override_key(o) for o in new}
    if resume_from is not None and replaced <= {"epochs", "max_steps"}:
        return " ".join(["vaerun", "train", "resume=" + _shell(str(resume_from)), *new])
    replaced |= {"resume"} | ({"max_steps"} if "epochs" in replaced else set())
    kept = [o for o in without_hydra(list(overrides)) if override_key(o) not in replaced]
    return " ".join(["vaerun", "train", *(_shell(o) for o in kept + new)])


def next_commands(report: dict, run_path) -> list[tuple[str, str]]:
    """(check, whole command) for each next step of each verdict that is not ok, in order: what
    `vaerun diagnose` prints and diagnosis.md lists."""
    resume_from = str(run_path) if report.get("resumable") else None
    return [(v["name"], command(s, report.get("overrides", ()), resume_from))
            for v in report["verdicts"] if v["status"] != "ok" for s in v["next_steps"]]


def _shell(word: str) -> str:
    return word if _SHELL_SAFE.fullmatch(word) else shlex.quote(word)


def resumable(config: dict) -> bool:
    """Whether the run can be continued to a new length (`vaerun train resume=RUN epochs=N`): not
    when its β cycles or its learning rate follows a cosine, both drawn over the run's length."""
    from vaerun.confcheck import drawn_over_length

    return not drawn_over_length(config)


def to_markdown(report: dict, run_path: str) -> str:
    lines = [f"# Diagnosis of `{run_path}`", "", f"**Overall: {report['overall']}** — {report['headline']}", "",
             "| check | status | verdict | evidence |", "| --- | --- | --- | --- |"]
    for v in report["verdicts"]:
        ev = ", ".join(f"{k}={v2}" for k, v2 in v["evidence"].items() if k != "kl_per_dim")
        lines.append(f"| {v['name']} | {v['status']} | {v['verdict']} | {ev} |")
    lines.append("")
    commands = next_commands(report, run_path)
    for v in report["verdicts"]:
        if v["status"] != "ok":
            lines += [f"## {v['name']}: {v['verdict']}", "", v["explanation"] + ".", "", "Try:", ""]
            lines += [f"    {c}" for name, c in commands if name == v["name"]] + [""]
    return "\n".join(lines)


def diagnose_folder(folder, config: dict, zdep: Optional[dict]) -> dict:
    """Diagnoses the run in ``folder`` (runs.RunFolder) from its metrics and command line, and
    writes diagnosis.json and diagnosis.md there: the end of training and `vaerun diagnose`."""
    report = diagnose(folder.read_metrics(), config, zdep, folder.read_overrides(),
                      folder.read_summary().get("total_steps"))
    folder.write_report("diagnosis.json", report)
    folder.write_report("diagnosis.md", to_markdown(report, str(folder.path)))
    return report
