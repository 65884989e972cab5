"""Diagnosis on small real runs: a collapsed run, a healthy run and a learning-rate blow-up get the
right verdicts; `vaerun eval` and `vaerun diagnose` work from the command line."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from conftest import TINY, VAERUN, compose
from vaerun.runs import RunFolder
from vaerun.session import train

SMALL = ["dataset.num_examples=1200", "dataset.val_size=200", "dataset.test_size=100", "dataset.image_size=16",
         "batch_size=64", "max_steps=400", "eval_every=50", "sample_every=400", "log_every=10", "num_samples=4",
         "model.hidden=[128]", "model.latent_dim=4", "progress=log", "diagnostics.iw_samples=10"]


def run_small(tmp_path, *extra, expect_failure=False) -> tuple[RunFolder, dict]:
    cfg, resolved = compose([*SMALL, *extra])
    run = RunFolder(tmp_path / "run")
    try:
        train(cfg, run, resolved)
    except Exception:
        if not expect_failure:
            raise
    return run, run.read_report("diagnosis.json")


def checks(report: dict) -> dict:
    return {v["name"]: v for v in report["verdicts"]}


def test_a_collapsed_run_is_diagnosed_as_full_collapse(tmp_path):
    run, report = run_small(tmp_path, "schedule=constant", "beta=30")
    c = checks(report)["posterior_collapse"]
    assert report["overall"] == "problem" and c["status"] == "problem" and "full collapse" in c["verdict"]
    assert c["evidence"]["active_units"] == 0 and len(c["evidence"]["collapsed_dims"]) == 4
    # the decoder ignores z: shuffling it changes the reconstruction by noise only (on these 200
    # images about 1 nat of 76 even at β = 100, KL 0.001 nats; a healthy run's is above 10)
    assert abs(c["evidence"]["shuffle_penalty"]) < 0.03 * c["evidence"]["recon_posterior"]
    assert any("beta=1" in s for s in c["next_steps"])
    assert checks(report)["imbalance"]["status"] == "problem"            # KL dominates at β = 30
    assert run.read_summary()["diagnosis"]["checks"]["posterior_collapse"] == "problem"


def test_a_healthy_run_is_diagnosed_healthy(tmp_path):
    run, report = run_small(tmp_path, "schedule.warmup_steps=100")
    assert report["overall"] == "ok", json.dumps(report, indent=1)
    assert checks(report)["posterior_collapse"]["evidence"]["shuffle_penalty"] > 10
    assert run.read_summary()["diagnosis"]["overall"] == "ok"


def test_a_learning_rate_blow_up_is_optimization_trouble(tmp_path, monkeypatch):
    from vaerun import loop

    real = loop.Trainer._step

    def step_with_blow_up(self, xb):  # at step 200 the learning rate jumps 3000x
        if self.state.step == 200:
            loop.scale_lr(self.parts, 3000.0)
        return real(self, xb)

    monkeypatch.setattr(loop.Trainer, "_step", step_with_blow_up)
    run, _ = run_small(tmp_path, "on_nan=skip", "nan_max_skips=400", expect_failure=True)
    from vaerun.diagnose import diagnose

    report = diagnose(run.read_metrics(), run.read_config())
    opt = checks(report)["optimization"]
    assert opt["status"] == "problem" and "optimization trouble" in opt["verdict"]
    assert any(s.startswith("optimizer.lr=") for s in opt["next_steps"])


def test_likelihood_mismatch_is_reported(tmp_path):
    from vaerun.diagnose import diagnose

    audit = {"split": "audit", "notes": ["Bernoulli likelihood on grey levels: recon is a cross-entropy"]}
    val = {"split": "val", "step": 10, "kl": 5.0, "kl_per_dim": [2.5, 2.5], "elbo": -90.0, "mi": 2.0,
           "active_units": 2, "aggregate_kl": 0.1}
    report = diagnose([audit, val], {"likelihood": {"name": "bernoulli"}})
    assert checks(report)["likelihood"]["status"] == "problem"
    assert checks(report)["likelihood"]["next_steps"] == ["dataset.binarize=dynamic", "likelihood=logistic"]


def test_a_256_level_likelihood_on_binary_data_is_a_problem(tmp_path):
    """The discretized logistic (the grey-level datasets' default) on binary data trained the default
    shapes run to an ELBO of -504.9 nats against the Bernoulli's -58.7: the audit names it, with
    the binarization to undo when the data were binarized, and the diagnosis calls it a problem."""
    from conftest import make_image_folder
    from vaerun.checks import audit
    from vaerun.diagnose import diagnose
    from vaerun.train import build

    for extra, binarized in (([], False), (["dataset=image_folder", "dataset.binarize=static", "dataset.val_size=5",
                                           "dataset.test_size=5", f"dataset.path={make_image_folder(tmp_path, n=30)}"],
                                          True)):
        cfg, resolved = compose([*TINY, "likelihood=logistic", *extra])
        parts = build(cfg)
        rec = audit(parts.model, parts.data, 32, 0.0, 1.0, 0.0, 0)
        notes = [n for n in rec["notes"] if n.startswith("256-level likelihood on binary data")]
        assert rec["binary"] and len(notes) == 1 and "fix: likelihood=bernoulli" in notes[0]
        assert ("dataset.binarize=none" in notes[0]) == binarized
        val = {"split": "val", "step": 10, "kl": 5.0, "kl_per_dim": [2.5, 2.5], "elbo": -90.0, "mi": 2.0,
               "active_units": 2, "aggregate_kl": 0.1}
        lik = checks(diagnose([rec, val], resolved))["likelihood"]
        assert lik["status"] == "problem" and "256-level" in lik["verdict"]
        assert lik["next_steps"] == ["likelihood=bernoulli"] + (["dataset.binarize=none"] if binarized else [])
    cfg, _ = compose([*TINY, "likelihood=bernoulli"])                     # the Bernoulli on the same data: no note
    parts = build(cfg)
    assert not audit(parts.model, parts.data, 32, 0.0, 1.0, 0.0, 0)["notes"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    proc = subprocess.run([VAERUN, "train", *TINY, f"out_dir={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "diagnosis:" in proc.stdout
    return next(out.rglob("summary.json")).parent


def test_eval_command_writes_eval_json(tiny_run):
    out = subprocess.run([VAERUN, "eval", str(tiny_run), "--iw-samples", "20", "--split", "test"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "nll_iw" in out.stdout and "K=20" in out.stdout
    res = json.loads((tiny_run / "eval.json").read_text())["test/best/K=20"]
    assert res["iw_samples"] == 20 and res["iw_n"] == res["n"] == 40   # every test example, K as asked
    assert res["nll_iw"] <= -res["elbo"] + 1.0                         # tighter than the ELBO (up to noise)
    assert res["denormals"] in ("all threads", "unsupported")         # flushed as in training, every thread


def test_diagnose_command_prints_and_writes(tiny_run):
    out = subprocess.run([VAERUN, "diagnose", str(tiny_run)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "posterior_collapse" in out.stdout and "optimization" in out.stdout
    assert json.loads((tiny_run / "diagnosis.json").read_text())["verdicts"]
    assert (tiny_run / "diagnosis.md").read_text().startswith("# Diagnosis")
    report = json.loads((tiny_run / "diagnosis.json").read_text())
    assert report["overrides"] == [str(o) for o in [*TINY, f"out_dir={tiny_run.parent.parent}"]]  # its command line
    steps = [s for v in report["verdicts"] if v["status"] != "ok" for s in v["next_steps"]]
    assert steps, "the tiny run is expected to get advice (its warm-up outlasts it)"
    lines = [x.strip() for x in out.stdout.splitlines()]
    for s in steps:  # each as one unwrapped line: the run's command line with the change, or a resume
        longer = {t.split("=")[0] for t in s.split()} <= {"epochs", "max_steps"}
        start = f"vaerun train resume={tiny_run} " if longer else "vaerun train " + TINY[0]
        assert any(x.startswith(start) and s in x for x in lines), s
    bad = subprocess.run([VAERUN, "diagnose", str(tiny_run / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_next_steps_are_whole_commands_with_the_runs_own_overrides():
    """'vaerun train free_bits=0.25' for an image_folder conv run trained the default shapes MLP:
    the command to paste is the run's own command line with the change."""
    from vaerun.diagnose import command, to_markdown

    run = ["dataset=image_folder", "dataset.path=my images", "model=conv", "max_steps=60", "hydra.run.dir=x",
           "resume=outputs/a", "schedule=cyclical"]
    assert command("free_bits=0.25", run) == ("vaerun train dataset=image_folder 'dataset.path=my images' model=conv "
                                              "max_steps=60 schedule=cyclical free_bits=0.25")
    assert command("max_steps=1250", run).endswith("model=conv schedule=cyclical max_steps=1250")   # replaced
    assert command("schedule=linear schedule.warmup_steps=12", ["+schedule=cyclical", "beta=4"]) == \
        "vaerun train beta=4 schedule=linear schedule.warmup_steps=12"
    assert command("model.hidden=[256,128]") == "vaerun train model.hidden=[256,128]"
    # a longer run continues the run itself where it can (no β cycle or cosine rate drawn over its length)
    assert command("epochs=24", run, resume_from="out/my run") == "vaerun train resume='out/my run' epochs=24"
    assert command("free_bits=0.25", run, resume_from="out/r").startswith("vaerun train dataset=image_folder")
    assert command("epochs=24", ["max_steps=150", "beta=2"]) == "vaerun train beta=2 epochs=24"   # else still 150
    from vaerun.diagnose import resumable

    assert resumable({"schedule": {"name": "linear"}, "optimizer": {"lr_scheduler": "none"}})
    assert not resumable({"schedule": {"name": "cyclical"}}) and not resumable({"optimizer": {"lr_scheduler": "cosine"}})
    report = {"overall": "warning", "headline": "h", "overrides": ["dataset=mnist"], "verdicts": [
        {"name": "schedule", "status": "warning", "verdict": "v", "evidence": {}, "explanation": "e",
         "next_steps": ["max_steps=10"]}]}
    assert "    vaerun train dataset=mnist max_steps=10" in to_markdown(report, "run").splitlines()


def test_the_decoder_dependence_on_z_is_reproducible(tiny_run):
    """Its draws come from its own seeded generator, not the global one: the diagnosis written at
    the end of training and a later `vaerun diagnose` give the same evidence."""
    from vaerun.api import load_run
    from vaerun.diagnose import z_dependence

    run = load_run(tiny_run)
    model, data = run.model("last"), run.data()
    torch.manual_seed(1)
    first = z_dependence(model, data, seed=0)
    torch.manual_seed(2)
    assert z_dependence(model, data, seed=0) == first
    assert z_dependence(model, data, seed=1) != first


def test_a_code_under_one_nat_whose_decoder_ignores_z_is_near_total_collapse():
    """The strong autoregressive decoder's failure (collapse study, ar_beta1): most dims sit a
    little above the per-dim threshold, but the whole code holds a fraction of a nat and
    shuffling z barely changes the reconstruction."""
    from vaerun.diagnose import diagnose

    kl = [0.001, 0.02, 0.03, 0.015, 0.004, 0.06, 0.02, 0.03]
    val = {"step": 100, "split": "val", "kl_per_dim": kl, "kl": sum(kl), "recon": 98.0, "elbo": -98.2,
           "active_units": 6, "mi": 0.2, "aggregate_kl": 0.01}
    zdep = {"recon_posterior": 100.6, "recon_shuffled": 102.1, "recon_prior": 102.2, "shuffle_penalty": 1.5}
    config = {"model": {"name": "autoregressive", "latent_dim": 8}, "beta": 1.0}
    c = checks(diagnose([val], config, zdep))["posterior_collapse"]
    assert c["status"] == "problem" and c["verdict"].startswith("near-total collapse")
    assert any(s.startswith("free_bits=") for s in c["next_steps"]) and "aggressive.enabled=true" in c["next_steps"]
    assert any("model.ar_layers" in s for s in c["next_steps"])
    # the decoder made weaker than the run's own; z as a map first when it was one global vector
    ar = {"model": {"name": "autoregressive", "ar_layers": 8, "ar_kernel": 5, "ar_cond": "global"}, "beta": 1.0}
    steps = checks(diagnose([val], ar, zdep))["posterior_collapse"]["next_steps"]
    assert "model.ar_cond=spatial" in steps and "model.ar_layers=4 model.ar_kernel=3" in steps
    # every next step is overrides only ("a weaker decoder, e.g. model.hidden=[256]" was pasted as a
    # command; the conv model's hidden already was [256]); no architecture step for other decoders
    mlp = checks(diagnose([val], {"model": {"name": "mlp"}, "beta": 1.0}, zdep))["posterior_collapse"]["next_steps"]
    assert mlp and not any(s.startswith("model.") for s in mlp)
    for s in steps + mlp + c["next_steps"]:
        assert all(re.fullmatch(r"[\w.]+=\S+", token) for token in s.split()), s
    # a few nats spread over the informative dims, with some dims dead, stays a partial-collapse warning
    kl3 = [0.001, 0.9, 0.8, 0.7, 0.004, 0.6, 0.5, 0.4]
    used = dict(zdep, recon_shuffled=130.0, recon_prior=131.0, shuffle_penalty=29.4)
    c3 = checks(diagnose([dict(val, kl_per_dim=kl3, kl=sum(kl3))], config, used))["posterior_collapse"]
    assert c3["status"] == "warning" and c3["verdict"].startswith("partial collapse")


def test_early_kl_vanishing_is_a_problem_only_when_the_surviving_code_is_empty():
    """Half the dims below the threshold in the first 20 % of the run is flagged; whether it is a
    problem depends on what the end of the run still carries."""
    from vaerun.diagnose import _early_vanishing

    def rec(step, kl):
        return {"step": step, "split": "val", "kl_per_dim": kl, "kl": sum(kl)}

    healthy = [0.5] * 8
    assert _early_vanishing([rec(100, healthy), rec(1000, healthy)], 0.01, 200, ())["status"] == "ok"
    # dead early (step 100 <= 200) and not recovered, but 3 dims still carry 24 nats: a warning
    half = [0.001] * 5 + [8.0] * 3
    w = _early_vanishing([rec(100, half), rec(1000, half)], 0.01, 200, ())
    assert w["status"] == "warning" and w["verdict"] == "KL vanished early (step 100: 5/8 dims)"
    assert "3 dims that stayed active carry 24.0 nats" in w["explanation"]
    assert w["evidence"] == {"step": 100, "collapsed_then": "5/8", "collapsed_at_end": "5/8", "kl_at_end": 24.005}
    # dead early and the code ends (near) empty: a problem
    empty = [0.001] * 7 + [0.2]
    p = _early_vanishing([rec(100, half), rec(1000, empty)], 0.01, 200, ["free_bits=0.25"])
    assert p["status"] == "problem" and "stayed active" not in p["explanation"]
    assert p["next_steps"] == ["free_bits=0.25"]                    # the run's own remedies (collapse_remedies)
    # partly recovered: a warning that says so
    r = _early_vanishing([rec(100, [0.001] * 6 + [0.3] * 2), rec(1000, half)], 0.01, 200, ())
    assert r["status"] == "warning" and r["verdict"].endswith(", partly recovered")
    # vanishing only after the early window is not this check's business
    assert _early_vanishing([rec(100, healthy), rec(900, half)], 0.01, 200, ())["status"] == "ok"


def test_an_unfinished_warm_up_is_flagged_at_the_start_and_in_the_diagnosis(tmp_path):
    """A linear warm-up of 1000 steps in a 40-step run: the audit warns before the first step, and
    the diagnosis says the run never reached its β, with overrides that would."""
    run, report = run_small(tmp_path, "max_steps=40", "eval_every=20", "schedule=linear",
                            "schedule.warmup_steps=1000")
    audit = next(r for r in run.read_metrics() if r["split"] == "audit")
    assert audit["final_beta"] == pytest.approx(39 / 1000)
    assert any(n.startswith("β warm-up longer than the run") and "schedule.warmup_steps=8" in n for n in audit["notes"])
    s = checks(report)["schedule"]
    assert s["status"] == "warning" and s["verdict"].startswith("β warm-up unfinished")
    assert s["evidence"]["final_beta"] == pytest.approx(0.039, abs=1e-3) and s["evidence"]["warmup_ends_at_step"] == 1000
    assert s["next_steps"] == ["schedule.warmup_steps=8", "max_steps=1250"]
    assert report["overall"] != "ok"


def test_schedule_check_on_records():
    from vaerun.diagnose import diagnose

    val = {"split": "val", "step": 500, "kl": 5.0, "kl_per_dim": [2.5, 2.5], "elbo": -90.0, "mi": 2.0,
           "active_units": 2, "aggregate_kl": 0.1}

    def train(*betas):
        return [{"split": "train", "step": 100 * (i + 1), "loss": 90.0, "beta": b} for i, b in enumerate(betas)]

    linear = {"beta": 1.0, "schedule": {"name": "linear", "beta_start": 0.0, "warmup_steps": 400, "delay_steps": 0}}
    assert checks(diagnose([*train(0.25, 0.5, 0.75, 1.0, 1.0), val], linear))["schedule"]["status"] == "ok"
    cut = checks(diagnose([*train(0.25, 0.5), val], linear))["schedule"]
    assert cut["status"] == "warning" and cut["evidence"]["final_beta"] == 0.5
    falling = {"beta": 1.0, "schedule": {"name": "linear", "beta_start": 8.0, "warmup_steps": 400, "delay_steps": 100}}
    f = checks(diagnose([*train(8.0, 6.0), val], falling))["schedule"]
    assert f["status"] == "warning" and f["next_steps"][-1] == "max_steps=625"
    cyc = {"beta": 4.0, "schedule": {"name": "cyclical", "beta_start": 0.0}}
    assert checks(diagnose([*train(0.0, 4.0), val], cyc))["schedule"]["status"] == "ok"
    # one validation pass cannot show whether the ELBO settled: the optimization check says so
    opt = checks(diagnose([*train(1.0), val], linear))["optimization"]
    assert opt["status"] == "ok" and "1 validation pass, too few" in opt["verdict"]
    assert opt["next_steps"] == ["eval_every=100"]


def test_the_balance_is_judged_at_the_beta_the_run_trained_at(monkeypatch):
    """A Fashion-MNIST run of 300 steps with a 1000-step warm-up ended at β = 0.3 with its aggregate
    posterior 21 nats from the prior: 'reconstruction dominates' offered beta=2 (never trained at
    either) and schedule=constant; it now names the β the run ended at and offers to finish the
    warm-up, the schedule check's steps; `vaerun diagnose` prints each such command once."""
    from vaerun.commands import print_diagnosis
    from vaerun.diagnose import diagnose

    val = {"split": "val", "step": 300, "kl": 75.0, "kl_per_dim": [4.7] * 16, "elbo": 228.0, "mi": 6.9,
           "active_units": 16, "aggregate_kl": 21.0}
    train = [{"split": "train", "step": 100 * (i + 1), "loss": -100.0, "beta": 0.1 * (i + 1) - 0.001}
             for i in range(3)]
    config = {"beta": 1.0, "schedule": {"name": "linear", "beta_start": 0.0, "warmup_steps": 1000}}
    report = diagnose([*train, val], config, overrides=["max_steps=300"])
    imb, sched = checks(report)["imbalance"], checks(report)["schedule"]
    assert imb["status"] == "warning" and "ended its warm-up at β=0.299, short of beta=1" in imb["verdict"]
    assert imb["evidence"]["final_beta"] == 0.299
    assert imb["next_steps"] == sched["next_steps"] == ["schedule.warmup_steps=60", "max_steps=1250"]
    finished = diagnose([*train[:2], {**train[2], "beta": 1.0}, val], config)   # reached its β: raise it
    assert checks(finished)["imbalance"]["next_steps"] == ["beta=2", "schedule=constant"]
    falling = {"beta": 1.0, "schedule": {"name": "linear", "beta_start": 8.0, "warmup_steps": 1000}}
    kl_wins = diagnose([*train[:2], {**train[2], "beta": 6.0}, {**val, "kl_per_dim": [0.001] * 16}], falling)
    assert checks(kl_wins)["imbalance"]["verdict"] == "KL dominates: β=6 switched off 16 dims"
    assert checks(kl_wins)["imbalance"]["next_steps"] == checks(kl_wins)["schedule"]["next_steps"]

    import io

    import rich.console

    import vaerun.commands
    buf = io.StringIO()
    monkeypatch.setattr(vaerun.commands, "_console", lambda: rich.console.Console(file=buf, width=200))
    print_diagnosis(report, "outputs/run")
    lines = [x for x in buf.getvalue().splitlines() if x.startswith("  vaerun train")]
    assert lines == ["  vaerun train max_steps=300 schedule.warmup_steps=60   # imbalance, schedule",
                     "  vaerun train resume=outputs/run max_steps=1250   # imbalance, schedule"]


def test_a_noisy_end_is_a_warning_with_averaging_and_a_real_fall_a_problem():
    """The final ELBO below the best: 2-10 % without non-finite steps or spikes is the weights
    wandering at the end (a warning whose first remedy is a weight average sized to the run), more
    than 10 %, or any fall with instability, is optimization trouble (a problem, lower lr first)."""
    from vaerun.diagnose import diagnose, ema_decay_for

    def records(*elbos, events=0):
        val = [{"split": "val", "step": 400 * (i + 1), "kl": 5.0, "kl_per_dim": [2.5, 2.5], "elbo": e, "mi": 2.0,
                "active_units": 2, "aggregate_kl": 0.1} for i, e in enumerate(elbos)]
        train = [{"split": "train", "step": 40 * (i + 1), "loss": 90.0, "beta": 1.0, "grad_norm": 5.0}
                 for i in range(10 * len(elbos))]
        return [*train, *val, *({"split": "event", "event": "non_finite", "step": 7} for _ in range(events))]

    config = {"beta": 1.0, "optimizer": {"lr": 1e-3, "ema": 0.0, "lr_scheduler": "none"}}
    noisy = checks(diagnose(records(-120.0, -100.0, -97.0, -100.0), config))["optimization"]   # 3.1 % below
    assert noisy["status"] == "warning" and noisy["verdict"].startswith("noisy end of training: final ELBO -100.00")
    assert noisy["next_steps"] == ["optimizer.ema=0.99", "optimizer.lr_scheduler=cosine", "optimizer.lr=0.00033"]
    averaged = {"beta": 1.0, "optimizer": {"lr": 1e-3, "ema": 0.999, "lr_scheduler": "cosine"}}
    assert checks(diagnose(records(-120.0, -100.0, -97.0, -100.0), averaged))["optimization"]["next_steps"] == \
        ["optimizer.lr=0.00033"]                                       # the remedies it already has are not offered
    fell = checks(diagnose(records(-120.0, -100.0, -97.0, -110.0), config))["optimization"]     # 13 % below
    assert fell["status"] == "problem" and "fell from the best -97.00" in fell["verdict"]
    assert fell["next_steps"][0] == "optimizer.lr=0.00033"
    unstable = checks(diagnose(records(-120.0, -100.0, -97.0, -100.0, events=3), config))["optimization"]
    assert unstable["status"] == "problem" and "3 non-finite steps" in unstable["verdict"]
    assert checks(diagnose(records(-120.0, -100.0, -98.5, -99.0), config))["optimization"]["status"] == "ok"
    assert [ema_decay_for(s) for s in (100, 1692, 6000, 100_000)] == [0.9, 0.99, 0.995, 0.9999]


def test_a_run_still_improving_gets_a_concrete_longer_run():
    """"Still improving at the end" offers ready-to-paste overrides: twice the run's own length
    (in max_steps when it set them, else in epochs) and a higher rate only below 3e-3."""
    from vaerun.diagnose import diagnose

    val = [{"split": "val", "step": 100 * (i + 1), "kl": 5.0, "kl_per_dim": [2.5, 2.5], "elbo": -100.0 + 5 * i,
            "mi": 2.0, "active_units": 2, "aggregate_kl": 0.1} for i in range(8)]
    steps = lambda config: checks(diagnose(val, config))["optimization"]["next_steps"]   # noqa: E731
    assert steps({"epochs": 12, "optimizer": {"lr": 1e-3}}) == ["epochs=24", "optimizer.lr=0.003"]
    assert steps({"epochs": 12, "max_steps": 800, "optimizer": {"lr": 3e-3}}) == ["max_steps=1600"]


def test_blow_ups_lead_the_headline_and_the_advice_starts_from_the_rolled_back_rate():
    """A run that rolled back three times (each halving lr 0.5) and then ended collapsed: the
    headline names the blow-ups first (they can cause the collapse), and the learning rate
    advised is a third of the rate the run ended at, 0.0625, not of the configured 0.5."""
    from vaerun.diagnose import diagnose

    kl = [0.001] * 4
    vals = [{"split": "val", "step": 100 * (i + 1), "kl": sum(kl), "kl_per_dim": kl, "elbo": -230.0, "mi": 0.0,
             "active_units": 0, "aggregate_kl": 0.0} for i in range(4)]
    events = [{"split": "event", "event": "non_finite", "step": 3, "action": "rollback"} for _ in range(3)]
    zdep = {"recon_posterior": 229.6, "recon_shuffled": 229.8, "recon_prior": 230.0, "shuffle_penalty": 0.2}
    report = diagnose([*vals, *events], {"optimizer": {"lr": 0.5}, "beta": 1.0}, zdep)
    opt = checks(report)["optimization"]
    assert opt["evidence"]["rollbacks"] == 3 and opt["evidence"]["lr_after_rollbacks"] == 0.0625
    assert opt["next_steps"][0] == "optimizer.lr=0.021"
    assert checks(report)["posterior_collapse"]["status"] == "problem"
    assert report["headline"].startswith("optimization trouble: 3 non-finite steps (it may also explain: "
                                         "posterior_collapse")
    calm = diagnose(vals, {"optimizer": {"lr": 1e-3}, "beta": 1.0}, zdep)   # no blow-up: collapse leads
    assert calm["headline"].startswith("full collapse")


def test_collapse_remedies_fit_what_the_run_already_did():
    """The warm-up and free-bits remedies are never the run's own settings: a run with a linear
    warm-up is offered twice that warm-up (when it fits in half the run), one with free bits twice
    the floor, a run without either the standard ones, sized to the run; the lagging encoder gets
    aggressive training (He et al.) unless the run had it, and a third of its own rate."""
    from vaerun.diagnose import diagnose

    kl = [5.0, 3.0, 0.001, 0.002]   # a partial collapse
    vals = [{"split": "val", "step": 1000 * (i + 1), "kl": sum(kl), "kl_per_dim": kl, "elbo": -100.0, "mi": 0.05,
             "active_units": 2, "aggregate_kl": 0.1} for i in range(10)]

    def steps(check, **config):
        return checks(diagnose(vals, {"beta": 1.0, **config}))[check]["next_steps"]

    assert steps("posterior_collapse", schedule={"name": "constant"}) == [
        "schedule=linear schedule.warmup_steps=2000", "free_bits=0.25"]
    assert steps("posterior_collapse", schedule={"name": "linear", "warmup_steps": 1000}, free_bits=0.25) == [
        "schedule.warmup_steps=2000", "free_bits=0.5"]
    assert steps("posterior_collapse", schedule={"name": "linear", "warmup_steps": 3000}) == ["free_bits=0.25"]
    assert steps("lagging_encoder", schedule={"name": "cyclical"}, optimizer={"lr": 1e-3}) == [
        "aggressive.enabled=true", "optimizer.lr=0.0003", "schedule=linear schedule.warmup_steps=2000"]
    assert steps("lagging_encoder", schedule={"name": "linear", "warmup_steps": 5000}, optimizer={"lr": 3e-4},
                 aggressive={"enabled": True}) == ["optimizer.lr=0.0001"]


def test_a_dim_counted_active_yet_under_the_kl_threshold_is_explained():
    """Active units (posterior-mean variance > 0.01) and the collapse threshold (KL < 0.01 nats)
    can disagree on a dim with KL between 0.005 and 0.01 nats: the verdict says so."""
    from vaerun.diagnose import diagnose

    kl = [5.0, 3.0, 0.008]
    val = {"split": "val", "step": 100, "kl": sum(kl), "kl_per_dim": kl, "elbo": -90.0, "mi": 4.0,
           "active_units": 3, "aggregate_kl": 0.1}
    c = checks(diagnose([val], {"beta": 1.0}))["posterior_collapse"]
    assert c["status"] == "warning" and "active units counts 1 of them (3 of 3)" in c["explanation"]
    c = checks(diagnose([{**val, "active_units": 2}], {"beta": 1.0}))["posterior_collapse"]
    assert "active units counts" not in c["explanation"]


def test_a_wide_sigma_leads_the_headline_over_the_collapse_it_may_cause():
    """Among verdicts of the same status, a likelihood that does not suit the data leads: a wide
    fixed σ weakens reconstruction against KL, which switches dims off; an unfinished warm-up is
    the config's own doing and never listed as explained."""
    from vaerun.diagnose import diagnose

    kl = [5.0, 3.0, 0.001, 0.002]
    val = {"split": "val", "step": 100, "kl": sum(kl), "kl_per_dim": kl, "elbo": -90.0, "mi": 4.0,
           "active_units": 2, "aggregate_kl": 0.1}
    audit = {"split": "audit", "notes": ["fixed Gaussian σ=1 is wide against the data's spread (std 0.394): ..."]}
    train = [{"split": "train", "step": 100, "loss": 90.0, "beta": 0.1, "grad_norm": 5.0}]
    config = {"beta": 1.0, "likelihood": {"name": "gaussian", "sigma": 1.0},
              "schedule": {"name": "linear", "warmup_steps": 1000}}
    report = diagnose([audit, *train, val], config)
    assert checks(report)["schedule"]["status"] == checks(report)["posterior_collapse"]["status"] == "warning"
    assert report["headline"] == "blur: a wide fixed-σ Gaussian (it may also explain: posterior_collapse)"
    plain = diagnose([*train, val], config)                        # no likelihood note: the collapse leads
    assert plain["headline"].startswith("partial collapse")


def test_a_density_on_binary_data_is_called_unbounded(tmp_path):
    """A learned-σ Gaussian on binary shapes once trained to a positive 'ELBO' (+214 nats in 60
    steps) with no word of why: a density on 0/1 pixels has no ceiling."""
    run, report = run_small(tmp_path, "likelihood=gaussian", "likelihood.learn_sigma=pixel", "max_steps=150")
    assert run.read_summary()["final_val"]["elbo"] > 0                   # the symptom: a 'likelihood' above 1
    lik = checks(report)["likelihood"]
    assert lik["status"] == "problem" and "unbounded" in lik["verdict"] and lik["next_steps"] == ["likelihood=bernoulli"]
    assert report["headline"].startswith("a continuous density on binary data")
    audit = next(r for r in run.read_metrics() if r["split"] == "audit")
    assert any(n.startswith("density on binary data (Gaussian on shapes)") and "binarize" not in n for n in audit["notes"])


@pytest.mark.parametrize("overrides, flagged", [
    (["likelihood=continuous_bernoulli"], True),
    (["likelihood=gaussian", "likelihood.learn_sigma=global"], True),
    (["likelihood=gaussian", "likelihood.sigma=0.05"], False),          # fixed σ: bounded
    (["likelihood=logistic"], False),                                    # a probability mass on 256 levels
    (["likelihood=bernoulli"], False),
])
def test_the_audit_flags_densities_that_are_unbounded_on_binary_data(overrides, flagged):
    from vaerun.checks import audit
    from vaerun.train import build

    cfg, _ = compose([*TINY, *overrides])
    parts = build(cfg)
    rec = audit(parts.model, parts.data, 32, 0.0, 1.0, 0.0, 0)
    assert rec["binary"] and any(n.startswith("density on binary data") for n in rec["notes"]) == flagged


def test_the_audit_says_when_a_batch_is_larger_than_the_training_set():
    """batch_size=100000 on 18,000 images trained 12 full-batch steps and nothing said so."""
    from vaerun.checks import audit
    from vaerun.train import build

    cfg, _ = compose(TINY)
    parts = build(cfg)
    n = len(parts.data.train)
    over = [x for x in audit(parts.model, parts.data, n + 1, 0.0, 1.0, 0.0, 0, 1.0, 7)["notes"]
            if x.startswith("batch_size=")]
    assert over == [f"batch_size={n + 1} is more than the {n} training examples: every step takes all of them at "
                    f"once (one step per epoch, 7 steps in all) (fix: batch_size={min(128, n)}, or batch_size={n} "
                    f"to say full-batch training)"]
    assert not [x for x in audit(parts.model, parts.data, n, 0.0, 1.0, 0.0, 0)["notes"] if x.startswith("batch_size")]


def test_a_run_that_memorises_its_training_set_is_overfitting_not_a_learning_rate_problem(tmp_path):
    """150 epochs of 2,000 statically binarized MNIST images: the validation ELBO peaked at step 1000
    and fell 18.6 nats while the training ELBO rose 25.7, and diagnose called it "optimization
    trouble" and advised a lower learning rate and grad_clip=1.0. Here the same on a 16x16 shapes
    training set far too small for the model."""
    run, report = run_small(tmp_path, "dataset.num_examples=300", "dataset.test_size=100", "batch_size=50",
                            "max_steps=600", "model.hidden=[256]", "schedule.warmup_steps=50")
    c = checks(report)
    over, opt = c["overfitting"], c["optimization"]
    assert over["status"] in ("warning", "problem") and over["verdict"].startswith("overfitting: the validation ELBO fell")
    ev = over["evidence"]
    assert ev["validations_after_best"] >= 2 and ev["gap_final"] > ev["gap_at_best"] + 1.0
    assert ev["val_elbo_final"] < ev["val_elbo_best"] and ev["train_elbo_final"] > ev["train_elbo_at_best"]
    assert over["next_steps"][:2] == ["early_stop=3", f"max_steps={ev['best_step']}"]   # shapes: no binarization,
                                                                                          # no subset
    assert opt["status"] == "ok" and "overfitting" in opt["verdict"] and not opt["next_steps"]
    assert report["headline"] == over["verdict"]


def _records(val_elbos, train_elbos, every=100):
    """Validation records every ``every`` steps and two train records before each."""
    recs = []
    for i, (v, t) in enumerate(zip(val_elbos, train_elbos), 1):
        recs += [{"split": "train", "step": i * every - every // 2, "elbo": t, "loss": -t, "grad_norm": 50.0},
                 {"split": "train", "step": i * every, "elbo": t, "loss": -t, "grad_norm": 50.0},
                 {"split": "val", "step": i * every, "elbo": v, "kl": 20.0, "kl_per_dim": [2.0] * 10,
                  "active_units": 10, "mi": 6.0, "aggregate_kl": 0.5}]
    return recs


def test_overfitting_against_a_noisy_end_and_its_remedies():
    from vaerun.diagnose import diagnose

    config = {"dataset": {"binarize": "static", "subset": 2000}, "optimizer": {"lr": 1e-3}}
    vals = [-150, -130, -124, -126, -131, -138]
    rising = [-140, -115, -105, -98, -90, -82]
    c = checks(diagnose(_records(vals, rising), config))
    assert c["overfitting"]["status"] == "problem"                      # fell 14 nats, > 10 % of 124
    assert c["overfitting"]["next_steps"][:4] == ["dataset.binarize=dynamic", "dataset.subset=null", "early_stop=3",
                                                  "max_steps=300"]
    assert c["optimization"]["status"] == "ok"
    flat = [-140, -118, -110, -111, -110, -111]                         # training ELBO stalls: weights wander
    c = checks(diagnose(_records(vals, flat), config))
    assert c["overfitting"]["status"] == "ok" and c["optimization"]["status"] == "problem"
    one_after = checks(diagnose(_records(vals[:3] + [-128], rising[:4]), config))   # one validation after the best:
    assert one_after["overfitting"]["status"] == "ok"                                # too soon to tell from noise
    assert one_after["optimization"]["status"] == "warning" and "noisy end" in one_after["optimization"]["verdict"]


def test_early_stop_ends_an_overfitting_run_at_its_patience(tmp_path):
    """The run above with early_stop=2: it stops two validations after its best, says so in the
    log, metrics.jsonl and summary.json, keeps the best weights, and a resume does not train on."""
    run, report = run_small(tmp_path, "dataset.num_examples=300", "dataset.test_size=100", "batch_size=50",
                            "max_steps=600", "model.hidden=[256]", "schedule.warmup_steps=50", "early_stop=2")
    summary = run.read_summary()
    stop = summary["stopped_early"]
    vals = run.read_metrics("val")
    best = max(vals, key=lambda v: v["elbo"])
    assert summary["status"] == "completed" and stop == {"step": vals[-1]["step"], "best_step": best["step"],
                                                         "reason": "early_stop"}
    assert stop["step"] == best["step"] + 2 * 50 < 600 and summary["steps"] == stop["step"]   # eval_every=50
    event = [r for r in run.read_metrics() if r.get("event") == "early_stop"]
    assert len(event) == 1 and event[0]["patience"] == 2 and event[0]["best_step"] == best["step"]
    assert run.load_checkpoint("best")["loop"]["step"] == best["step"]
    assert run.load_checkpoint("last")["loop"]["stopped_early"]
    over = checks(report)["overfitting"]
    assert over["status"] == "ok" and over["verdict"] == f"early_stop ended the run 2 validations after its best (step {best['step']})"
    cfg, resolved = compose([*SMALL, "dataset.num_examples=300", "dataset.test_size=100", "batch_size=50",
                             "max_steps=600", "model.hidden=[256]", "schedule.warmup_steps=50", "early_stop=2"])
    train(cfg, run, resolved, resume=True)
    assert run.read_summary()["steps"] == stop["step"] and len(run.read_metrics("val")) == len(vals)


def test_collapse_stop_ends_a_collapsed_run_after_its_warm_up(tmp_path, caplog):
    """β = 30 after a 100-step warm-up switches every dim off: with collapse_stop=2 the run ends at
    the second validation in a row at β = 30 with every dim under the threshold (the validations
    of the warm-up are not counted, whatever their KL), names remedies, says so in metrics.jsonl
    and summary.json, and a resume does not train on."""
    import logging

    extra = ("beta=30", "schedule.warmup_steps=100", "collapse_stop=2", "free_bits=0")
    with caplog.at_level(logging.WARNING, logger="vaerun"):
        run, report = run_small(tmp_path, *extra)
    vals, thr = run.read_metrics("val"), 0.01
    collapsed = [v["step"] for v in vals if v["step"] >= 101 and max(v["kl_per_dim"]) < thr]
    summary = run.read_summary()
    stop = summary["stopped_early"]
    assert stop["reason"] == "collapse_stop" and stop["step"] == vals[-1]["step"] < 400 and len(collapsed) >= 2
    assert collapsed[-2:] == [stop["step"] - 50, stop["step"]] and summary["steps"] == stop["step"]   # eval_every=50
    assert all(v["beta"] < 30 for v in vals if v["step"] <= 100)                 # the warm-up's: not counted
    event = [r for r in run.read_metrics() if r.get("event") == "collapse_stop"]
    assert len(event) == 1 and event[0]["patience"] == 2 and event[0]["kl"] < 4 * thr
    assert any("collapse stop at step" in r.getMessage() and "free_bits=0.25" in r.getMessage() for r in caplog.records)
    assert run.load_checkpoint("last")["loop"]["stop_reason"] == "collapse_stop"
    assert checks(report)["posterior_collapse"]["status"] == "problem"
    cfg, resolved = compose([*SMALL, *extra])
    train(cfg, run, resolved, resume=True)
    assert run.read_summary()["steps"] == stop["step"] and len(run.read_metrics("val")) == len(vals)
    never = run_small(tmp_path / "off", *extra[:2])[0]                             # off: the run trains on
    assert never.read_summary()["steps"] == 400 and never.read_summary()["stopped_early"] is None


def test_eval_on_the_training_split_measures_the_gap(tiny_run):
    out = subprocess.run([VAERUN, "eval", str(tiny_run), "--iw-samples", "3", "--split", "train"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads((tiny_run / "eval.json").read_text())["train/best/K=3"]
    assert res["n"] == json.loads((tiny_run / "summary.json").read_text())["train_examples"]


def test_an_early_stopped_run_that_memorised_is_not_a_learning_rate_problem():
    from vaerun.diagnose import diagnose

    vals, rising = [-150, -130, -124, -126, -131, -138], [-140, -115, -105, -98, -90, -82]
    c = checks(diagnose(_records(vals, rising), {"early_stop": 3, "optimizer": {"lr": 1e-3}}))
    assert c["overfitting"]["status"] == "ok" and c["overfitting"]["verdict"].startswith("early_stop ended the run 3")
    assert c["overfitting"]["evidence"]["memorising"] and c["optimization"]["status"] == "ok"


def test_diagnose_again_updates_what_compare_shows(tiny_run):
    """A run diagnosed again (say, by a newer vaerun) kept its old verdict in summary.json, so
    `vaerun compare` showed it: 'problem (optimization)' for a run now found to be overfitting."""
    path = tiny_run / "summary.json"
    summary = json.loads(path.read_text())
    summary["diagnosis"] = {"overall": "problem", "headline": "stale", "checks": {"optimization": "problem"}}
    path.write_text(json.dumps(summary))
    assert subprocess.run([VAERUN, "diagnose", str(tiny_run)], capture_output=True, timeout=120).returncode == 0
    report = json.loads((tiny_run / "diagnosis.json").read_text())
    now = json.loads(path.read_text())
    assert now["diagnosis"]["headline"] == report["headline"] != "stale"
    assert now["diagnosis"]["checks"] == {v["name"]: v["status"] for v in report["verdicts"]}
    assert {k: v for k, v in now.items() if k != "diagnosis"} == {k: v for k, v in summary.items() if k != "diagnosis"}


def test_the_early_collapse_warning_offers_only_what_the_run_lacks(caplog):
    """It told a run with a 1000-step linear warm-up to try schedule.warmup_steps=1000."""
    from vaerun.checks import CollapseWatch
    from vaerun.diagnose import collapse_remedies

    warmed = {"schedule": {"name": "linear", "warmup_steps": 1000}, "free_bits": 0.0, "model": {"name": "conv"}}
    assert collapse_remedies(warmed, 1250) == ["free_bits=0.25"]                  # 2000 would not fit in half
    assert collapse_remedies({**warmed, "free_bits": 0.5}, 5000) == ["schedule.warmup_steps=2000", "free_bits=1"]
    assert collapse_remedies({"schedule": {"name": "constant"}, "model": {"name": "autoregressive", "ar_layers": 6,
                                                                         "ar_kernel": 5}}, 300) == \
        ["schedule=linear schedule.warmup_steps=150", "free_bits=0.25", "model.ar_layers=3 model.ar_kernel=3"]
    watch = CollapseWatch(0.01, 250, collapse_remedies(warmed, 1250))
    with caplog.at_level("WARNING", logger="vaerun"):
        watch.check(30, [0.001, 0.5])
        watch.check(60, [0.001, 0.001])                                        # once only
    (msg,) = [r.getMessage() for r in caplog.records]
    assert "1 of 2 latent dims carry < 0.01 nats at step 30" in msg and "Next time try free_bits=0.25;" in msg
    assert "warmup_steps" not in msg


def test_a_run_whose_config_has_keys_this_vaerun_does_not_know_still_opens(tiny_run, tmp_path, caplog):
    """A sweep job given +foo=1 (before that was refused) could not be opened by any command: a
    traceback from the structured config. Unknown keys are left out, with a warning."""
    import shutil

    from vaerun.api import load_run

    run_dir = shutil.copytree(tiny_run, tmp_path / "run")
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("model:\n", "model:\n  wider: 2\n", 1) + "foo: 1\n")
    with caplog.at_level("WARNING", logger="vaerun"):
        cfg = load_run(run_dir).cfg
    assert cfg.model.latent_dim == 4 and not hasattr(cfg, "foo")
    assert "left out: model.wider, foo" in caplog.text
    out = subprocess.run([VAERUN, "diagnose", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
