"""flush_denormals: denormal floats computed as 0 on every CPU thread (vaerun.train.flush_denormals).

Each check runs in a fresh two-thread process: the mode is per thread, torch's worker threads
inherit it when they start, and this test process's pool started long ago."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY, VAERUN

from vaerun.runs import RunFolder

PROBE = """
import json, torch
from vaerun.train import flush_denormals

def kept():  # denormals a two-thread product leaves (read as bits: a flushing thread compares them as 0)
    denormal = torch.full((1 << 17,), 1 << 22, dtype=torch.int32).view(torch.float32)  # 5.9e-39 (a float
    bits = (denormal * 1.0).view(torch.int32) & 0x7FFFFFFF                            # constant would be flushed)
    return int(((bits > 0) & (bits < 0x00800000)).sum())

def adam_moments(n=1 << 17, steps=200):  # a dead unit: one gradient, then exact zeros
    p = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    for k in range(steps):
        p.grad = torch.full((n,), 1e-30 if k == 0 else 0.0)
        opt.step()
    bits = opt.state[p]["exp_avg"].view(torch.int32) & 0x7FFFFFFF
    return int(((bits > 0) & (bits < 0x00800000)).sum()), float(opt.state[p]["exp_avg"].abs().max())

out = {"threads": torch.get_num_threads()}
if ORDER == "pool first":
    kept()
if ORDER == "pool flushing first":
    flush_denormals(True)
out["state"] = flush_denormals(ON)
out["kept"] = kept()
out["adam_denormals"], out["adam_max"] = adam_moments()
print(json.dumps(out))
"""


def probe(on: bool, order: str = "fresh") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    code = f"ON = {on}\nORDER = {order!r}\n" + PROBE
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_process_flushes_on_every_thread():
    out = probe(True)
    if out["state"] == "unsupported":
        pytest.skip("this CPU has no flush-to-zero mode")
    assert out["threads"] == 2
    assert out["state"] == "all threads"
    assert out["kept"] == 0
    # the moments of a weight whose gradient stays 0 decay through the denormal range to exactly 0
    assert out["adam_denormals"] == 0 and out["adam_max"] == 0.0


def test_off_keeps_denormals_and_adam_moments_decay_into_them():
    out = probe(False)
    assert out["state"] == "off"
    assert out["kept"] == 1 << 17
    assert out["adam_denormals"] == 1 << 17  # 1e-31 * 0.9^199 ≈ 8e-41: what flushing saves Adam from


def test_a_pool_started_before_is_reported_as_this_thread_only():
    out = probe(True, order="pool first")
    if out["state"] == "unsupported":
        pytest.skip("this CPU has no flush-to-zero mode")
    assert out["state"] == "this thread only"
    assert 0 < out["kept"] < 1 << 17  # the worker thread's half of the product kept its denormals


def test_off_after_a_flushing_pool_started_says_so():
    out = probe(False, order="pool flushing first")
    if probe(True)["state"] == "unsupported":
        pytest.skip("this CPU has no flush-to-zero mode")
    assert out["state"] == "off on this thread only"
    assert 0 < out["kept"] < 1 << 17  # this thread's half kept, the worker's flushed


def test_runs_with_and_without_flushing_agree_and_say_which(tmp_path):
    losses = {}
    for on in ("true", "false"):
        proc = subprocess.run([VAERUN, "train", *TINY, f"flush_denormals={on}", f"out_dir={tmp_path / on}"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        run = RunFolder(next((tmp_path / on).rglob("summary.json")).parent)
        summary = json.loads(run.summary_file.read_text())
        assert summary["denormals"] in ({"all threads", "unsupported"} if on == "true" else {"off"})
        losses[on] = [r["loss"] for r in run.read_metrics() if r["split"] in ("train", "val")]
    assert len(losses["true"]) > 3
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-6)
