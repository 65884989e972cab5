"""Collapse remedies beyond β schedules and free bits: capacity annealing and aggressive
inference-network training, composed with the rest of a real (tiny) run."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import TINY, compose
from vaerun.likelihoods import build_likelihood
from vaerun.models import build_vae
from vaerun.runs import RunFolder
from vaerun.session import train
from vaerun.train import train_step

QUIET = ["pictures.traverse=false", "pictures.latents=false"]


def tiny_vae():
    torch.manual_seed(0)
    vae = build_vae("mlp", (1, 6, 6), build_likelihood("bernoulli", 1), latent_dim=3, hidden=[8],
                    channels=[4], kernel=4)
    return vae, torch.optim.Adam(vae.parameters(), lr=1e-2), torch.rand(16, 1, 6, 6).round()


@pytest.mark.parametrize("update,moves", [("encoder", "encoder"), ("decoder", "decoder"), ("all", "both")])
def test_train_step_updates_only_the_requested_part(update, moves):
    vae, opt, x = tiny_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    _, _, _, ok = train_step(vae, opt, x, 1.0, 0.0, 0.0, update=update)
    assert ok
    changed = {k.split(".")[0] for k, v in vae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == ({"encoder", "decoder"} if moves == "both" else {moves})


def test_aggressive_training_runs_inner_encoder_updates_then_switches_off(tmp_path, monkeypatch):
    import vaerun.metrics

    mi_values = itertools.chain([1.0, 2.0, 1.5], itertools.repeat(0.1))  # rises once, then falls
    monkeypatch.setattr(vaerun.metrics, "mutual_information", lambda mu, logvar, **_: next(mi_values))
    cfg, resolved = compose([*TINY, *QUIET, "aggressive.enabled=true", "aggressive.max_inner=6",
                             "aggressive.check_every=2", "max_steps=30", "log_every=1", "eval_every=100"])
    summary = train(cfg, RunFolder(tmp_path / "run"), resolved)
    assert summary["status"] == "completed"
    records = RunFolder(tmp_path / "run").read_metrics()
    train_recs = [r for r in records if r["split"] == "train"]
    off = [r for r in records if r.get("event") == "aggressive_off"]
    assert len(off) == 1 and off[0]["mi"] == 1.5 and off[0]["previous_mi"] == 2.0
    on_steps = [r for r in train_recs if r["aggressive"]]
    assert on_steps and train_recs[-1]["aggressive"] is False
    inner = [r["inner_steps"] for r in train_recs]
    assert inner[0] >= 2 and inner == sorted(inner)                  # encoder-only updates happened ...
    assert inner[-1] == inner[len(on_steps)]                         # ... and stopped once it switched off
    # 200 training images / batch 32 = 7 steps an epoch: checks at the ends of epochs 1, 2, 3
    assert off[0]["step"] == 21


def test_capacity_annealing_in_a_run(tmp_path):
    cfg, resolved = compose([*TINY, *QUIET, "capacity.gamma=20", "capacity.c_max=3", "capacity.steps=10",
                             "max_steps=16", "log_every=1", "schedule=constant"])
    summary = train(cfg, RunFolder(tmp_path / "run"), resolved)
    assert summary["status"] == "completed"
    recs = RunFolder(tmp_path / "run").read_metrics("train")
    caps = [r["capacity"] for r in recs]
    assert caps[0] == 0.0 and caps[5] == pytest.approx(1.5) and caps[-1] == 3.0
    for r in recs:   # the optimised loss is recon + β·γ·|KL − C| (no free bits here)
        assert r["loss"] == pytest.approx(r["recon"] + 20 * abs(r["kl"] - r["capacity"]), rel=1e-4, abs=1e-3)
