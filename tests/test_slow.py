"""Slow tests (`make test-all`): real data, longer runs."""
from __future__ import annotations

import pytest

from conftest import SHARED_DATA, compose, needs_mnist
from vaerun.runs import RunFolder
from vaerun.session import train
from vaerun.train import build, evaluate


@pytest.mark.slow
@needs_mnist
def test_real_mnist_run_improves_the_elbo_far_beyond_untrained(tmp_path):
    overrides = ["dataset=mnist", f"dataset.root={SHARED_DATA}", "model=conv", "schedule=linear",
                 "schedule.warmup_steps=200", "max_steps=600", "eval_every=300", "sample_every=600",
                 "progress=log"]
    cfg, resolved = compose(overrides)
    parts = build(cfg)
    untrained = evaluate(parts.model, parts.data, "val", 1000)
    summary = train(cfg, RunFolder(tmp_path / "run"), resolved)
    trained = summary["final_val"]
    assert summary["status"] == "completed"
    # An untrained conv VAE sits near 540 nats (784 pixels x ln 2); 600 steps get well below 160.
    assert untrained["elbo"] < -400
    assert trained["elbo"] > untrained["elbo"] + 250
    assert trained["elbo"] > -160
    assert sum(k > 0.01 for k in trained["kl_per_dim"]) >= 5   # the latent code is in use
