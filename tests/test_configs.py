"""Every option of every config group (found from the YAML files, not a hand-kept list) composes,
builds and trains a few steps: finite losses, weights that changed, the run-folder contract."""
from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA, TINY, assert_run_contract, compose, have_mnist, make_fake_cifar10, make_image_folder
from vaerun.config import GROUPS
from vaerun.confcheck import available_options
from vaerun.runs import RunFolder
from vaerun.session import train
from vaerun.train import build

OPTIONS = [(g, o) for g in GROUPS for o in available_options(g)]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert ("dataset", "shapes") in OPTIONS and ("model", "conv") in OPTIONS


def _dataset_extras(option: str, tmp_path) -> list[str]:
    if option in ("mnist", "fashion_mnist"):
        if not have_mnist():
            pytest.skip(f"no {option} under {SHARED_DATA}")
        return [f"dataset.root={SHARED_DATA}", "dataset.subset=200", "dataset.val_size=1000"]
    if option == "cifar10":
        return [f"dataset.root={make_fake_cifar10(tmp_path / 'cifar')}", "dataset.val_size=50"]
    if option == "image_folder":
        return [f"dataset.path={make_image_folder(tmp_path / 'images', n=40)}", "dataset.val_size=5",
                "dataset.test_size=5", "dataset.channels=3"]
    return []


def run_tiny(tmp_path, overrides: list[str]) -> tuple[dict, dict, dict]:
    """Trains a tiny run; returns (summary, initial state_dict, final state_dict)."""
    cfg, resolved = compose([*TINY, *overrides])
    initial = {k: v.clone() for k, v in build(cfg).model.state_dict().items()}  # same seed -> same init
    run = RunFolder(tmp_path / "run")
    summary = train(cfg, run, resolved)
    final = run.load_checkpoint("last")["model"]
    return summary, initial, final


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_trains(tmp_path, group, option):
    extras = _dataset_extras(option, tmp_path) if group == "dataset" else []
    if (group, option) == ("model", "autoregressive"):  # small, so that pixel-by-pixel sampling stays quick
        extras = ["model.ar_width=8", "model.ar_layers=2", "model.ar_kernel=3"]
    summary, initial, final = run_tiny(tmp_path, [f"{group}={option}", *extras])
    assert_run_contract(tmp_path / "run")
    assert summary["steps"] == 6
    changed = [k for k in initial if initial[k].dtype.is_floating_point and not torch.equal(initial[k], final[k])]
    assert changed, "no weight changed"
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)


# Enum-valued keys inside the groups: every value works too.
VALUES = [("likelihood=gaussian", "likelihood.learn_sigma", v) for v in ("none", "global", "channel", "pixel")] + \
         [("", "optimizer.lr_scheduler", v) for v in ("none", "cosine", "step", "plateau")] + \
         [("", "model.init", v) for v in ("default", "xavier", "kaiming")] + \
         [("", "model.activation", v) for v in ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh")] + \
         [("", "dataset.binarize", v) for v in ("none", "static", "dynamic")] + \
         [("model=conv", "model.kernel", v) for v in ("3", "5")] + \
         [("", "free_bits", "0.5"), ("", "optimizer.grad_clip", "1.0"), ("", "device", "cpu"),
          ("", "tensorboard", "false"), ("", "max_steps", "null")] + \
         [("model=conv", "precision", v) for v in ("fp32", "tf32", "bf16")]


@pytest.mark.parametrize("base,key,value", VALUES, ids=[f"{k}={v}" for _, k, v in VALUES])
def test_every_value_trains(tmp_path, base, key, value):
    overrides = [o for o in (base, f"{key}={value}") if o]
    if key == "max_steps":  # epochs instead: 1 epoch of 200 examples at batch 32 = 7 steps
        overrides.append("epochs=1")
    summary, _, _ = run_tiny(tmp_path, overrides)
    assert summary["status"] == "completed"
    assert summary["steps"] == (7 if key == "max_steps" else 6)
    if key == "tensorboard":
        assert not (tmp_path / "run" / "tb").exists()


def test_learned_sigma_moves(tmp_path):
    _, initial, final = run_tiny(tmp_path, ["likelihood=gaussian", "likelihood.learn_sigma=global",
                                            "optimizer.lr=0.05"])
    assert not torch.equal(initial["likelihood.log_sigma"], final["likelihood.log_sigma"])


def test_lr_schedulers_change_the_lr(tmp_path):
    summary, _, _ = run_tiny(tmp_path, ["optimizer.lr_scheduler=step", "optimizer.lr_step_size=2",
                                        "optimizer.lr_gamma=0.5"])
    lrs = [r["lr"] for r in RunFolder(tmp_path / "run").read_metrics("train")]
    assert lrs == pytest.approx([1e-3, 1e-3 * 0.5, 1e-3 * 0.25])  # what steps 2, 4, 6 trained with


def test_same_seed_same_numbers(tmp_path):
    def numbers(sub):
        _, _, _ = run_tiny(tmp_path / sub, ["dataset.binarize=dynamic", "schedule=cyclical"])
        return [{k: v for k, v in r.items() if k not in ("time", "examples_per_sec")}
                for r in RunFolder(tmp_path / sub / "run").read_metrics()]

    assert numbers("a") == numbers("b")


# The likelihood default follows the data: Bernoulli for binary images, the discretized logistic
# (a probability mass on the 256 levels) for the grey-level datasets; any explicit choice wins.
DEFAULT_LIKELIHOOD = [
    ([], "bernoulli"),                                                   # shapes: binary
    (["dataset=mnist"], "bernoulli"),                                    # dynamically binarized
    (["experiment=mnist_vae_examples"], "bernoulli"),
    (["dataset=fashion_mnist"], "logistic"),                             # grey levels
    (["dataset=cifar10"], "logistic"),
    (["dataset=image_folder", "dataset.path=/x"], "logistic"),
    (["dataset=fashion_mnist", "likelihood=bernoulli"], "bernoulli"),    # the command line wins,
    (["likelihood=gaussian", "dataset=fashion_mnist"], "gaussian"),      # whatever the order,
    (["experiment=fashion_mnist_conv_gaussian"], "gaussian"),            # and so does a preset
    (["experiment=cifar10_conv"], "logistic"),
]


@pytest.mark.parametrize("overrides,likelihood", DEFAULT_LIKELIHOOD, ids=[" ".join(o) or "default" for o, _ in
                                                                            DEFAULT_LIKELIHOOD])
def test_the_likelihood_default_follows_the_data(overrides, likelihood):
    cfg, resolved = compose(overrides)
    assert resolved["likelihood"]["name"] == likelihood
    assert resolved["likelihood"]["mixtures"] == (5 if "experiment=cifar10_conv" in overrides else 1)


def test_a_sweep_over_datasets_gives_each_job_its_datasets_likelihood(tmp_path):
    """`vaerun plan -m` composes every job as the sweep will: on grey-level CIFAR-10 the logistic,
    with no likelihood warning from the step-0 audit, on binary shapes the Bernoulli."""
    import json
    import os
    import subprocess

    from conftest import VAERUN

    root = make_fake_cifar10(tmp_path / "cifar")
    out = subprocess.run([VAERUN, "plan", "-m", "dataset=shapes,cifar10", f"dataset.root={root}",
                          "dataset.val_size=20", *[o for o in TINY if not o.startswith("dataset.val_size")],
                          "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs = json.loads(out.stdout)
    assert [j["model"]["likelihood"] for j in jobs] == ["bernoulli", "logistic"]
    assert [j["audit"]["binary"] for j in jobs] == [True, False]
    assert not [n for j in jobs for n in j["audit"]["notes"] if "likelihood" in n.lower()]
    table = subprocess.run([VAERUN, "plan", "-m", "dataset=shapes,cifar10", f"dataset.root={root}",
                            "dataset.val_size=20", *[o for o in TINY if not o.startswith("dataset.val_size")]],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "250"})
    assert table.returncode == 0, table.stdout + table.stderr
    assert "dataset=shapes (its likelihood: bernoulli)" in table.stdout
    assert "dataset=cifar10 (its likelihood: logistic)" in table.stdout


def test_train_help_names_the_datasets_that_bring_the_logistic():
    """`vaerun train --help` states the likelihood defaults in words: they must be the YAML's."""
    import subprocess

    from conftest import VAERUN

    grey = [o for o in sorted(available_options("dataset"))
            if compose([f"dataset={o}", "dataset.path=/x"])[1]["likelihood"]["name"] == "logistic"]
    assert grey == ["cifar10", "fashion_mnist", "image_folder"]
    out = subprocess.run([VAERUN, "train", "--help"], capture_output=True, text=True, timeout=120)
    sentence = " ".join(out.stdout.split()).split("The likelihood default follows the data:")[1].split("wins")[0]
    binary, logistic = sentence.split("logistic with")
    assert "bernoulli" in binary and "shapes" in binary and all(name in logistic for name in grey)
