"""optimizer.ema: the moving average of the weights follows its formula, evaluation and
checkpoints use it, training itself is untouched, and resume and rollback carry it."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY, compose
from vaerun.config import validate
from vaerun.errors import ConfigError
from vaerun.optim import WeightAverage
from vaerun.runs import RunFolder, model_weights
from vaerun.session import train

QUIET = [*TINY, "pictures.latents=false", "pictures.traverse=false"]


def test_weight_average_follows_the_formula_and_swaps_back_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    ema = WeightAverage(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        ema.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    for a, e in zip(ema.avg, expected):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    own = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(2, 3)
    with ema.applied():
        for p, e in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
        averaged_out = model(x)
    assert all(torch.equal(p.detach(), o) for p, o in zip(model.parameters(), own))  # bit for bit
    state = ema.model_state(model)
    assert set(state) == set(model.state_dict()) and torch.equal(state["0.weight"], ema.avg[0])
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), averaged_out)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, 1.0)


def test_ema_config_is_validated_with_the_key_named():
    for bad in ("1.0", "-0.1", "1.5"):
        with pytest.raises(ConfigError, match="optimizer.ema") as err:
            validate(compose([f"optimizer.ema={bad}"])[0])
        assert "optimizer.ema=0.999" in str(err.value)


def test_a_run_with_ema_evaluates_and_checkpoints_the_average_and_trains_the_same(tmp_path):
    from vaerun.api import Run
    from vaerun.train import evaluate

    cfg, resolved = compose([*QUIET, "optimizer.ema=0.5"])
    run = RunFolder(tmp_path / "ema")
    train(cfg, run, resolved)
    plain_cfg, plain_resolved = compose(QUIET)
    plain = RunFolder(tmp_path / "plain")
    train(plain_cfg, plain, plain_resolved)
    last, plain_last = run.load_checkpoint("last"), plain.load_checkpoint("last")
    # the average only watches: the trained weights and the training losses are the same as without it
    for k, v in plain_last["model"].items():
        assert torch.equal(last["model"][k], v), k
    assert [r["loss"] for r in run.read_metrics("train")] == [r["loss"] for r in plain.read_metrics("train")]
    # what is evaluated is the average: not the trained weights, and the val record is its evaluation
    assert set(last["ema_model"]) == set(last["model"])
    assert any(not torch.equal(last["ema_model"][k], last["model"][k]) for k in last["model"])
    assert model_weights(last) is last["ema_model"] and model_weights(plain_last) is plain_last["model"]
    r = Run(run.path)
    dg = cfg.diagnostics
    v = evaluate(r.model("last"), r.data(), "val", cfg.eval_batch_size, beta=cfg.beta, free_bits=cfg.free_bits,
                 seed=cfg.seed, au_threshold=dg.au_threshold, mi_examples=dg.mi_examples,
                 iw_samples=dg.iw_samples, iw_examples=dg.iw_examples)
    rec = run.read_metrics("val")[-1]
    assert v["elbo"] == pytest.approx(rec["elbo"], rel=1e-6) and v["kl"] == pytest.approx(rec["kl"], rel=1e-6)
    assert rec["elbo"] != plain.read_metrics("val")[-1]["elbo"]


@pytest.mark.parametrize("model", ["mlp", "conv"])  # conv: channels-last weights and moments on a CPU
def test_resume_carries_the_average(tmp_path, monkeypatch, model):
    """Stopped after step 5 (as by SIGTERM: checkpoint, Interrupted) and resumed, the run ends
    with the same weights and the same average as the run that was never stopped."""
    from vaerun import session
    from vaerun.errors import Interrupted
    from vaerun.loop import GracefulStop, Trainer

    few = [o for o in QUIET if not o.startswith(("max_steps=", "eval_every="))]
    cfg, resolved = compose([*few, f"model={model}", "optimizer.ema=0.7", "max_steps=8", "eval_every=4",
                             "checkpoint_every=4"])
    whole = RunFolder(tmp_path / "whole")
    train(cfg, whole, resolved)

    calls, real = {"n": 0}, Trainer._step

    def counting(self, xb):
        ok = real(self, xb)
        calls["n"] += 1
        return ok

    class StopAfterFive(GracefulStop):
        requested = property(lambda self: 15 if calls["n"] == 5 else None, lambda self, value: None)

    half = RunFolder(tmp_path / "half")
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_step", counting)
        m.setattr(session, "GracefulStop", StopAfterFive)
        with pytest.raises(Interrupted):
            train(cfg, half, resolved)
    stopped = half.load_checkpoint("last")
    assert stopped["step"] == 5 and "ema_model" in stopped
    train(cfg, half, resolved, resume=True)
    a, b = whole.load_checkpoint("last"), half.load_checkpoint("last")
    assert b["step"] == a["step"] == 8
    for k in a["model"]:
        assert torch.equal(b["model"][k], a["model"][k]), k
        assert torch.equal(b["ema_model"][k], a["ema_model"][k]), k
    assert half.read_metrics("val")[-1]["elbo"] == whole.read_metrics("val")[-1]["elbo"]
