"""The command line, as a user runs it (subprocesses): help, --cfg, config errors, a real run,
a multirun, and a non-editable install that carries the config groups."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, TINY, VAERUN, assert_run_contract
from vaerun import load_run as vaerun_load


def vaerun(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "", "COLUMNS": "120"}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([VAERUN, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def test_top_level_help_lists_subcommands():
    out = vaerun("--help")
    assert out.returncode == 0 and "train" in out.stdout
    bad = vaerun("trian")
    assert bad.returncode != 0 and "unknown command 'trian'" in bad.stderr and "Traceback" not in bad.stderr


def test_train_help_lists_groups_and_options():
    out = vaerun("train", "--help")
    assert out.returncode == 0, out.stderr
    for line in ("dataset: cifar10, fashion_mnist, image_folder, mnist, shapes", "model: autoregressive, conv, mlp",
                 "likelihood: bernoulli, continuous_bernoulli, gaussian, logistic", "schedule: constant, cyclical, linear, sigmoid",
                 "optimizer: adam, adamw, rmsprop, sgd"):
        assert line in out.stdout
    assert "schema" not in out.stdout.split("== Config (")[0]
    assert "free_bits" in out.stdout and "batch_size" in out.stdout


def test_cfg_job_prints_the_composed_config():
    out = vaerun("train", "model=conv", "schedule=cyclical", "beta=4", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "name: conv" in out.stdout and "name: cyclical" in out.stdout and "beta: 4" in out.stdout


@pytest.mark.parametrize("override,key,fix", [
    ("betta=2", "betta", "beta=2"),                          # typo'd key
    ("beta=abc", "beta", "beta=1.0"),                        # wrong type
    ("model=convv", "model", "model=conv"),                  # unknown option
    ("schedule=cosine", "schedule", "fix: optimizer.lr_scheduler=cosine ('cosine' is a choice there)"),
    ("model=gaussian", "model", "fix: likelihood=gaussian ("),   # another group's option
    ("beta=-1", "beta", "beta=1"),                           # invalid value
    ("batch_size=0", "batch_size", "batch_size=128"),        # invalid value
    ("dataset.val_size=1", "dataset.val_size", "dataset.val_size=1000"),   # one example: no AU, MI or map
    ("model.latent_dimm=4", "model.latent_dimm", "model.latent_dim=4"),
    ("likelihood.learn_sigma=glob", "likelihood.learn_sigma", "global"),
    ("dataset.binarize=yes", "dataset.binarize", "dynamic"),
    ("compile_mode=reduce_overhead", "compile_mode", "compile=true"),   # needs compile=true
    ("compile=true compile_mode=graphs", "compile_mode", "reduce_overhead"),
    ("+optimizer.lr_sheduler=cosine", "'+' would add it", "fix: optimizer.lr_scheduler=cosine"),  # was ignored
    ("+foo=1", "no config key 'foo'", "fix: drop +foo=1"),
    ("+experiment=mnist_vae_examples", "already has", "fix: experiment=mnist_vae_examples (without '+')"),
    ("-m beta=0.5,-1", "sweep job 1 (beta=-1), before any job started", "beta=1"),   # ran job 0 first
    ("-m model=mlp,cnv schedule=constant,linear", "sweep job 2 (model=cnv schedule=constant)", "model=conv"),
    ("-m seed=range(", "seed=range(", "seed=range(3)"),
    ("dataset=image_folder dataset.path=/data/my(1)", "does not take '('", "'dataset.path=\"/data/my(1)\"'"),
])
def test_config_errors_are_one_screen_without_traceback(override, key, fix):
    out = vaerun("train", *override.split())
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Traceback" not in text
    assert key in text and fix in text and "fix:" in text
    assert len(text.splitlines()) <= 10


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_an_unavailable_device_is_a_config_error_before_any_run_folder(tmp_path):
    """device=cuda on a machine without it made a failed run folder and an [ERROR] line."""
    out = vaerun("train", "device=cuda", f"out_dir={tmp_path}")
    assert out.returncode == 2 and "config error: device=cuda: cuda is not available" in out.stderr
    assert "fix: use device=auto or device=cpu" in out.stderr and not list(tmp_path.iterdir())


def test_sweep_jobs_are_hydras_product_and_the_check_composes_each():
    from vaerun.confcheck import check_sweep, sweep_jobs

    assert sweep_jobs(["beta=0.5,1", "max_steps=5", "model=mlp,conv"]) == [
        ["beta=0.5", "max_steps=5", "model=mlp"], ["beta=0.5", "max_steps=5", "model=conv"],
        ["beta=1", "max_steps=5", "model=mlp"], ["beta=1", "max_steps=5", "model=conv"]]
    assert sweep_jobs(["seed=range(3)"]) == [["seed=0"], ["seed=1"], ["seed=2"]]
    assert sweep_jobs(["beta=1,2", "seed=0,1", "beta=3"]) == [["beta=3", "seed=0"], ["beta=3", "seed=1"]]  # Hydra's
    assert check_sweep(["beta=0.5,1,2", "seed=range(2)", "hydra.sweep.dir=x"]) is None
    assert "sweep job 1 (model.latent_dim=0)" in check_sweep(["model.latent_dim=4,0"])
    # every value checked once, named by Hydra's job number (beta=-4 is the fifth of five, x 4 x 2)
    assert check_sweep(["beta=0.5,1,2,4,-4", "seed=range(4)", "model=mlp,conv"]).startswith(
        "sweep job 32 (beta=-4 seed=0 model=mlp), before any job started")


@pytest.mark.parametrize("given", ["dataset.path=~/my/images", 'dataset.path="~/my/images"'])
def test_a_home_folder_path_is_expanded(tmp_path, given):
    """The README's own `dataset.path=~/photos` was a Hydra syntax error ("token recognition
    error at: '~'"): the shell does not expand ~ after key=, and Hydra's grammar rejects it."""
    from vaerun.overrides import expand_home

    home = os.path.expanduser("~")
    assert expand_home([given, "out_dir=~", "beta=1", "+resume=~/r"]) == [
        f"dataset.path={home}/my/images", f"out_dir={home}", "beta=1", f"+resume={home}/r"]
    assert expand_home(["dataset.path=~/my photos"]) == [f'dataset.path="{home}/my photos"']   # quoted for Hydra
    env = {**os.environ, "HOME": str(tmp_path)}
    out = subprocess.run([VAERUN, "train", "dataset=image_folder", given, "--cfg", "job"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"path: {tmp_path}/my/images" in out.stdout


def test_conv_stack_too_deep_for_the_image_is_a_config_error(tmp_path):
    out = vaerun("train", *TINY, "model=conv", "model.channels=[8,8,8,8,8,8]", "dataset.image_size=8",
                 "model.kernel=4", f"out_dir={tmp_path}")
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text and "model.channels" in text and "fix:" in text
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["status"] == "failed" and "model.channels" in summary["error"]


def test_train_writes_a_complete_run_folder(tmp_path):
    out = vaerun("train", *TINY, f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    runs = [p.parent for p in tmp_path.rglob("summary.json")]
    assert len(runs) == 1
    assert_run_contract(runs[0], hydra=True)
    assert "val @ step 6" in (runs[0] / "train.log").read_text()
    assert "Traceback" not in out.stdout + out.stderr


def test_multirun_sweeps_beta_into_separate_folders(tmp_path):
    out = vaerun("train", "-m", *TINY, "schedule=constant", "beta=0.5,2", f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted(p.parent for p in tmp_path.rglob("summary.json"))
    assert [r.name for r in runs] == ["0_beta=0.5", "1_beta=2"]
    betas = [assert_run_contract(r, hydra=True)["final_val"]["beta"] for r in runs]
    assert betas == [0.5, 2.0]


def test_train_run_from_python_is_the_cli_run(tmp_path):
    """vaerun.train_run(*overrides) trains what `vaerun train <overrides>` trains: the same
    validation records, the same run-folder contract, and config errors with the CLI's message."""
    from vaerun import train_run
    from vaerun.errors import VaerunError

    out = vaerun("train", *TINY, f"out_dir={tmp_path / 'cli'}")
    assert out.returncode == 0, out.stdout + out.stderr
    cli = vaerun_load(next((tmp_path / "cli").rglob("summary.json")).parent)
    run = train_run(*TINY, out_dir=tmp_path / "api")
    assert run.path.parent.parent == tmp_path / "api" and run.summary["status"] == "completed"
    assert_run_contract(run.path)
    strip = [{k: v for k, v in r.items() if k != "time"} for r in cli.metrics if r["split"] == "val"]
    assert [{k: v for k, v in r.items() if k != "time"} for r in run.metrics if r["split"] == "val"] == strip
    assert "val @ step 6" in (run.path / "train.log").read_text()
    assert run.folder.read_overrides() == [*TINY, f"out_dir={tmp_path / 'api'}"]   # diagnose's whole commands
    with pytest.raises(VaerunError, match="fix: beta=2"):
        train_run("betta=2")


def test_wheel_ships_the_config_groups(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("vaerun-*.whl"))).namelist()
    for yaml in ("vaerun/conf/train.yaml", "vaerun/conf/model/conv.yaml", "vaerun/conf/dataset/shapes.yaml",
                 "vaerun/conf/hydra/job_logging/vaerun.yaml", "vaerun/conf/hydra/help/vaerun.yaml"):
        assert yaml in names
