"""The literature presets: each composes to the documented setting and trains a few steps (MNIST
ones on the real files when present, CIFAR-10 on a fake copy in torchvision's format)."""
from __future__ import annotations

import pytest
import torch

from conftest import SHARED_DATA, compose, have_mnist, make_fake_cifar10
from vaerun.config import validate
from vaerun.errors import ConfigError
from vaerun.optim import build_lr_scheduler, burda_epochs, burda_stage
from vaerun.runs import RunFolder
from vaerun.session import train

FEW = ["max_steps=3", "eval_every=3", "sample_every=3", "num_samples=4", "eval_batch_size=64", "progress=log",
       "diagnostics.iw_samples=4", "diagnostics.mi_examples=64", "pictures.traverse=false"]


def test_burda_schedule_stages_and_learning_rates():
    assert burda_epochs() == 3280 and burda_epochs(0.1) == pytest.approx(328)
    assert [burda_stage(e) for e in (0, 0.99, 1, 3.99, 4, 12.9, 13, 39.9, 40, 3279, 5000)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 7, 7]
    assert [burda_stage(e, 0.1) for e in (0, 0.1, 0.39, 0.4, 327)] == [0, 1, 1, 2, 7]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = build_lr_scheduler(opt, "burda", total_steps=10 ** 6, steps_per_epoch=10)
    lrs = {}
    for step in range(0, 400):
        lrs[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-3)
    assert lrs[10] == pytest.approx(1e-3 * 10 ** (-1 / 7)) and lrs[39] == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert lrs[40] == pytest.approx(1e-3 * 10 ** (-2 / 7)) and lrs[130] == pytest.approx(1e-3 * 10 ** (-3 / 7))


def test_burda_schedule_with_equal_stages_decays_geometrically():
    # lr_stage_growth=1: eight stages of `scale` epochs each, lr·10^(−i/7) in stage i
    assert burda_epochs(41, growth=1) == 328 and burda_epochs(1, growth=2) == 255
    assert [burda_stage(e, 41, growth=1) for e in (0, 40.9, 41, 82, 287, 327.9, 400)] == [0, 0, 1, 2, 7, 7, 7]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = build_lr_scheduler(opt, "burda", total_steps=10 ** 6, steps_per_epoch=10, stage_scale=2,
                               stage_growth=1)
    lrs = []
    for _ in range(170):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [lrs[20 * i] for i in range(8)] == pytest.approx([1e-3 * 10 ** (-i / 7) for i in range(8)])
    assert lrs[19] == pytest.approx(1e-3) and lrs[169] == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="optimizer.lr_stage_growth"):
        validate(compose(["optimizer.lr_stage_growth=0"])[0])


def test_presets_compose_to_the_published_settings():
    burda, _ = compose(["experiment=mnist_vae_burda", f"dataset.root={SHARED_DATA}"])
    assert (burda.model.hidden, burda.model.latent_dim, burda.model.activation.value) == ([200, 200], 50, "tanh")
    assert burda.batch_size == 20 and burda.optimizer.eps == 1e-4 and burda.epochs == 3280
    assert burda.optimizer.lr_scheduler.value == "burda" and burda.dataset.binarize.value == "dynamic"
    short, _ = compose(["experiment=mnist_vae_burda_short"])
    assert (short.optimizer.lr_stage_growth, short.optimizer.lr_stage_scale, short.epochs) == (1, 41, 328)
    assert short.model.latent_dim == 50 and burda_epochs(41, growth=1) == short.epochs
    ex, _ = compose(["experiment=mnist_vae_examples"])
    assert (ex.model.hidden, ex.model.latent_dim, ex.batch_size, ex.optimizer.lr) == ([400], 20, 128, 1e-3)
    fm, _ = compose(["experiment=fashion_mnist_conv_gaussian"])
    assert fm.likelihood.name.value == "gaussian" and fm.likelihood.learn_sigma.value == "global"
    assert fm.dataset.name.value == "fashion_mnist" and fm.dataset.binarize.value == "none"
    cf, _ = compose(["experiment=cifar10_conv"])
    assert cf.likelihood.name.value == "logistic" and cf.likelihood.mixtures == 5


def test_shapes_beta_sweep_sweeps_beta():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from vaerun.config import register_configs

    register_configs()
    with initialize_config_module("vaerun.conf", version_base="1.3"):
        cfg = hydra_compose("train", overrides=["experiment=shapes_beta_sweep"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.beta == "0.25,0.5,1,2,4,8"


def test_cifar10_conv_trains_on_fake_data(tmp_path):
    root = make_fake_cifar10(tmp_path / "data")
    cfg, resolved = compose(["experiment=cifar10_conv", f"dataset.root={root}", "dataset.val_size=20",
                             "batch_size=16", "model.channels=[8,8]", "model.hidden=[16]", "model.latent_dim=4",
                             *FEW])
    summary = train(cfg, RunFolder(tmp_path / "run"), resolved)
    assert summary["status"] == "completed" and summary["data_shape"] == [3, 32, 32]
    v = summary["final_val"]
    assert v["bpd"] == pytest.approx(v["recon"] / (3 * 32 * 32 * 0.6931471805599453) + v["kl"] / (3072 * 0.6931471805599453))


@pytest.mark.slow
@pytest.mark.skipif(not have_mnist(), reason=f"MNIST not found under {SHARED_DATA}")
@pytest.mark.parametrize("preset", ["mnist_vae_burda_short", "mnist_vae_examples", "fashion_mnist_conv_gaussian"])
def test_mnist_presets_train_a_few_steps(tmp_path, preset):
    if preset.startswith("fashion") and not (SHARED_DATA / "FashionMNIST" / "raw").exists():
        pytest.skip("Fashion-MNIST not found")
    cfg, resolved = compose([f"experiment={preset}", f"dataset.root={SHARED_DATA}", "dataset.subset=256",
                             "dataset.val_size=64", *FEW])
    summary = train(cfg, RunFolder(tmp_path / "run"), resolved)
    assert summary["status"] == "completed" and summary["steps"] == 3


def load_results_page():
    """benchmarks/results_page.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("results_page", REPO / "benchmarks" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_reads_its_numbers_from_the_run_folders(tmp_path, capsys):
    """benchmarks/results_page.py: a run started with a reproduction preset and evaluated on the
    test split becomes a row whose numbers are the folder's own (eval.json, summary.json)."""
    import json

    from conftest import TINY
    from vaerun import commands

    results_page = load_results_page()

    cfg, resolved = compose([*TINY, "pictures.latents=false", "pictures.traverse=false"])
    folder = RunFolder(tmp_path / "runs" / "a")
    train(cfg, folder, resolved)
    (folder.path / ".hydra").mkdir()
    (folder.path / ".hydra" / "overrides.yaml").write_text("- experiment=mnist_vae_burda_short\n- seed=0\n")
    other = RunFolder(tmp_path / "runs" / "b")                                 # not a reproduction: left out
    train(cfg, other, resolved)
    assert folder.experiment() == "mnist_vae_burda_short" and other.experiment() is None
    for k in ("3", "7"):
        assert commands.eval_main([str(folder.path), "--iw-samples", k, "--split", "test"]) == 0
    capsys.readouterr()
    [row] = results_page.rows([str(tmp_path / "runs")])
    ev = json.loads((folder.path / "eval.json").read_text())["test/best/K=7"]
    assert row["k"] == 7 and row["nll_iw"] == ev["nll_iw"] and row["active_units"] == ev["active_units"]
    assert row["gap"] == pytest.approx(ev["nll_iw"] - 86.76)
    out = tmp_path / "results.md"
    text = results_page.page([row])
    out.write_text(text)
    assert f"| `mnist_vae_burda_short` | {ev['nll_iw']:.2f} | 7 | 86.76 |" in text and "Burda et al. 2015" in text
    # the learning-rate schedule comes from config.yaml, the settings from the run's own overrides
    assert row["lr_schedule"] == "none, lr 0.001" and row["overrides"] == ["seed=0"]
    assert "| none, lr 0.001 |" in text and "| `seed=0` |" in text
    assert results_page.lr_schedule({"optimizer": {"lr_scheduler": "burda", "lr": 1e-3, "lr_stage_scale": 41,
                                                   "lr_stage_growth": 1.0}}) == \
        "burda: stage i of 1^i·41 epochs at 0.001·10^(−i/7)"
    assert results_page.lr_schedule({"optimizer": {"lr_scheduler": "burda", "lr_stage_scale": 0.1}}) == \
        "burda: stage i of 3^i·0.1 epochs at 0.001·10^(−i/7)"


def test_results_page_sweep_and_likelihood_sections_come_from_the_folders(tmp_path):
    """The β-sweep section takes β from each run's config and rate/distortion/MIG from its last
    validation record; the likelihood section copies each run's last grids next to the page."""
    import json

    from conftest import TINY

    results_page = load_results_page()

    quiet = [*TINY, "pictures.latents=false", "pictures.traverse=false"]
    for beta in ("0.5", "4"):
        cfg, resolved = compose([*quiet, f"beta={beta}"])
        folder = RunFolder(tmp_path / "runs" / f"sweep_{beta}")
        train(cfg, folder, resolved)
        (folder.path / ".hydra").mkdir()
        (folder.path / ".hydra" / "overrides.yaml").write_text(f"- experiment=shapes_beta_sweep\n- beta={beta}\n")
    for lik in ("gaussian", "continuous_bernoulli"):
        cfg, resolved = compose([*quiet, f"likelihood={lik}"])
        folder = RunFolder(tmp_path / "runs" / f"lik_{lik}")
        train(cfg, folder, resolved)
        (folder.path / ".hydra").mkdir()
        (folder.path / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=fashion_mnist_conv_gaussian\n- likelihood={lik}\n")

    runs = [str(tmp_path / "runs")]
    sweep, liks = results_page.sweep_rows(runs), results_page.likelihood_rows(runs)
    assert [r["beta"] for r in sweep] == [0.5, 4.0] and results_page.rows(runs) == []
    last = [json.loads(line) for line in (tmp_path / "runs" / "sweep_4" / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "val"][-1]
    assert sweep[1]["rate"] == last["kl"] and sweep[1]["distortion"] == last["recon"] and sweep[1]["mig"] == last["mig"]
    assert [r["likelihood"] for r in liks] == ["continuous_bernoulli", "gaussian"]

    out = tmp_path / "docs" / "results.md"
    results_page.write_pictures(sweep, liks, out.parent / "images" / "results")
    text = results_page.page([], sweep, liks)
    assert (out.parent / sweep[0]["figure"]).stat().st_size > 1000
    for r in liks:
        assert (out.parent / r["samples_png"]).read_bytes() == r["samples"].read_bytes()
        assert f"({r['recon_png']})" in text and f"| {r['bpd']:.4f} |" in text
    assert f"| 4 | {last['kl']:.2f} | {last['recon']:.2f} |" in text
    # a density's bits/dim on the page is its code length, beside its labelled density figure
    for r in liks:
        assert r["bpd_density"] is not None and f"| {r['bpd']:.4f} |" in text and f"| {r['bpd_density']:.4f} |" in text
    # regenerating one section keeps the others as last written
    previous = "# Results\n\nintro\n\n## Reproductions\n\n| kept row |\n\n## β sweep on shapes: rate–distortion and " \
               "disentanglement\n\n| old sweep |\n\n## Likelihoods on Fashion-MNIST: the blur difference\n\n| old liks |\n"
    merged = results_page.merged([], [], liks, previous)
    assert "| kept row |" in merged and "| old sweep |" in merged and "| old liks |" not in merged
    assert f"| {liks[0]['bpd']:.4f} |" in merged and merged.count("## ") == 3
