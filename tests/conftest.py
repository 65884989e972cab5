"""Shared test helpers: config composition, tiny-run overrides, fake datasets, the run-folder contract."""
from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VAERUN_TEST_DATA", REPO.parent / "shared" / "data"))
VAERUN = str(Path(sys.executable).with_name("vaerun"))

# A run that takes about a second: 16x16 shapes, a few steps, every periodic action fires.
TINY = ["dataset.num_examples=240", "dataset.val_size=40", "dataset.test_size=40", "dataset.image_size=16",
        "batch_size=32", "eval_batch_size=64", "max_steps=6", "eval_every=3", "sample_every=3", "log_every=2",
        "num_samples=4", "model.hidden=[32]", "model.channels=[8,8]", "model.latent_dim=4", "progress=log",
        "diagnostics.iw_samples=8", "diagnostics.mi_examples=40"]

TRAIN_KEYS = {"step", "epoch", "split", "loss", "recon", "kl", "elbo", "beta", "kl_per_dim", "lr", "grad_norm", "time"}
VAL_KEYS = {"step", "epoch", "split", "loss", "recon", "kl", "elbo", "beta", "kl_per_dim", "time", "active_units",
            "au_variance", "mi", "mi_n", "mi_ceiling", "mi_noise", "aggregate_kl", "aggregate_kl_full", "bpd", "nll_iw",
            "bpd_iw", "grad_norm_recon_enc", "grad_norm_kl_enc"}


def pytest_configure(config):
    """Denormal floats flushed on every thread, as in a `vaerun train` process. Each pytest-xdist
    worker gets its share of the cores (torch threads, and OMP_NUM_THREADS for the CLI runs it
    starts), unless OMP_NUM_THREADS is set. Two workers with torch's default of one
    thread per core oversubscribe two cores: OpenMP threads spin waiting for each other, and tests
    made of many small operations (autoregressive sampling) ran 20x slower (323 s vs 15 s for the
    autoregressive model contracts)."""
    from vaerun.train import flush_denormals

    flush_denormals(True)  # before any parallel operation, as a `vaerun train` process does (tests/test_denormals.py)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def have_mnist() -> bool:
    return (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


needs_mnist = pytest.mark.skipif(not have_mnist(), reason=f"MNIST not found under {SHARED_DATA}")


def compose(overrides: list[str]):
    """The typed TrainConfig that `vaerun train <overrides>` would run, and its resolved dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from vaerun.config import register_configs

    register_configs()
    with initialize_config_module("vaerun.conf", version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides)
    return OmegaConf.to_object(cfg), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def make_fake_cifar10(root: Path, n: int = 60) -> Path:
    """A tiny `cifar-10-batches-py` folder in torchvision's pickle format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    return root


def make_image_folder(root: Path, n: int = 30, rgb: bool = True) -> Path:
    """Images of mixed sizes in two class subfolders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        h, w = 20 + i % 7, 24 + i % 5
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr if rgb else arr[..., 0]).save(sub / f"img{i}.png")
    return root


def assert_run_contract(run_dir: Path, *, hydra: bool = False) -> dict:
    """Checks the documented run-folder layout; returns summary.json."""
    from vaerun.runs import RunFolder

    run = RunFolder(run_dir)
    assert run.config_file.exists()
    summary = json.loads(run.summary_file.read_text())
    assert summary["status"] == "completed", summary
    for key in ("final_val", "best_val", "steps", "wall_time_s", "python", "torch", "diagnosis"):
        assert key in summary, key
    records = run.read_metrics()
    train, val = [r for r in records if r["split"] == "train"], [r for r in records if r["split"] == "val"]
    assert train and val
    assert all(TRAIN_KEYS <= r.keys() for r in train)
    assert all(VAL_KEYS <= r.keys() for r in val)
    assert [r["split"] for r in records if r["split"] not in ("train", "val")] == ["audit"]
    for r in train + val:
        for k in ("loss", "recon", "kl", "elbo"):
            assert np.isfinite(r[k]), (k, r)
        assert abs(r["elbo"] + r["recon"] + r["kl"]) < 1e-6 * max(1.0, abs(r["elbo"]))
        assert len(r["kl_per_dim"]) > 0 and abs(sum(r["kl_per_dim"]) - r["kl"]) < 1e-4 * max(1.0, r["kl"])
    for name in ("last", "best"):
        state = torch.load(run.checkpoint_file(name), weights_only=True)
        assert {"model", "optimizer", "lr_scheduler", "step", "rng", "config"} <= state.keys()
        assert isinstance(state["config"], dict)
    assert run.grids("samples") and run.grids("recon")
    assert run.curves_file.exists()
    assert run.read_report("diagnosis.json")["verdicts"] and (run_dir / "diagnosis.md").exists()
    if hydra:
        assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    return summary
