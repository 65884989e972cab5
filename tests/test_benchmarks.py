"""The benchmark scripts run (smoke runs on tiny sizes; their figures live in docs/, not here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from conftest import REPO


def test_train_speed_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_speed.py"), "--device", "cpu", "--quick",
                           "--models", "mlp", "--variants", "fp32,bf16", "--data", str(tmp_path / "none"),
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())["results"]
    assert [(r["model"], r["variant"], r["dataset"]) for r in res] == [("mlp", "fp32", "shapes"), ("mlp", "bf16", "shapes")]
    assert all(r["examples_per_sec"] > 0 and len(r["runs"]) == 3 for r in res)
    assert "| mlp            | bf16         |" in proc.stdout and "vs fp32" in proc.stdout


def test_train_speed_rejects_an_unknown_variant(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_speed.py"), "--device", "cpu",
                           "--variants", "fp8"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown variant 'fp8'; choose from fp32, autograd, bf16, autograd+bf16, compile" in proc.stderr


def test_gpu_check_says_when_there_is_no_gpu():
    if torch.cuda.is_available():
        return  # the real check runs on GPU machines: bash benchmarks/gpu_check.sh
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout + proc.stderr


def test_gpu_step_prints_its_table_on_a_cpu(tmp_path):
    """benchmarks/gpu_step.py (meant for CUDA) runs end to end on a CPU: every eager row measured, the
    CUDA-graph row reported as failed rather than crashing the script."""
    out = tmp_path / "step.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_step.py"), "--device", "cpu", "--steps", "2",
                           "--data", str(tmp_path / "none"), "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    eager = [(r["batch_size"], r["case"]) for r in rows if "error" not in r]
    assert eager == [(b, c) for b in (128, 1024) for c in ("bare", "bare + guard", "vaerun", "vaerun, guard w/o sync")]
    assert all(r["examples_per_sec"] > 0 for r in rows if "error" not in r)
    assert "| 128 | vaerun |" in proc.stdout


def test_prior_study_scores_each_run_and_draws_the_grids(tmp_path):
    """benchmarks/prior_study.py end to end on two tiny shapes runs: every column of its table
    filled, confidences and spreads in their ranges, the figure drawn; a rerun of one row keeps the
    other."""
    from conftest import TINY

    out = tmp_path / "study"
    cmd = [sys.executable, str(REPO / "benchmarks" / "prior_study.py"), str(tmp_path / "none"), str(out), *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RUNS": "shapes,shapes_beta4"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "prior_study.json").read_text())
    assert list(rows) == ["shapes", "shapes_beta4"] and rows["shapes_beta4"]["overrides"] == ["beta=4"]
    for r in rows.values():
        for kind in ("recon", "real", "prior", "gaussian", "gmm"):
            assert 1 / 3 <= r[f"conf_{kind}"] <= 1 and 0 <= r[f"spread_{kind}"] <= 1.0987  # 3 shapes: log 3
        assert 0 <= r["hole_share"] <= 1 and r["aggregate_kl_full"] >= r["aggregate_kl"] - 1e-9
        assert r["gain_gmm"] == r["gain_gmm"] and r["diagnosis"] in ("ok", "warning", "problem")
    table = (out / "prior_study.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| shapes |") and table[3].startswith("| shapes_beta4 |")
    assert (out / "prior_samples.png").stat().st_size > 10_000
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "RUNS": "shapes_beta4"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert list(json.loads((out / "prior_study.json").read_text())) == ["shapes", "shapes_beta4"]
