"""Faults and bad input, for real: subprocesses, real signals, corrupt and malicious files, bad
folders. Nothing may be lost, every error must be clear, and a resumed run must end exactly
where an uninterrupted one does."""
from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, VAERUN, compose, make_image_folder
from vaerun.errors import CheckpointError, NonFiniteError
from vaerun.runs import RunFolder, load_checkpoint_file

# About 300 steps of ~10 ms: long enough to interrupt anywhere, short enough for the suite.
FAULT = ["dataset.num_examples=1000", "dataset.val_size=100", "dataset.test_size=100", "batch_size=32",
         "max_steps=240", "log_every=7", "eval_every=50", "checkpoint_every=13", "sample_every=100",
         "num_samples=4", "model.hidden=[256,256]", "model.latent_dim=4", "progress=log", "schedule=cyclical",
         "optimizer.lr_scheduler=cosine", "dataset.binarize=dynamic"]
VOLATILE = {"time", "examples_per_sec"}


def start(*args: str, out: Path) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.log", "w")
    return subprocess.Popen([VAERUN, "train", *args, f"out_dir={out}"], stdout=log, stderr=subprocess.STDOUT)


def run_dir(out: Path) -> Path:
    found = [p.parent for p in out.rglob("summary.json")]
    assert len(found) == 1, found
    return found[0]


def wait_for_step(out: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        metrics = list(out.rglob("metrics.jsonl"))
        if metrics and any(r["step"] >= step for r in RunFolder(metrics[0].parent).read_metrics("train")):
            return
        time.sleep(0.05)
    raise TimeoutError(f"step {step} not reached")


def comparable(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in RunFolder(run).read_metrics()
            if r["split"] in ("train", "val")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[dict], dict]:
    """The uninterrupted run: its metrics and final weights."""
    out = tmp_path_factory.mktemp("reference")
    proc = start(*FAULT, out=out)
    assert proc.wait(timeout=300) == 0
    run = run_dir(out)
    return comparable(run), RunFolder(run).load_checkpoint("last")["model"]


def resume(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([VAERUN, "train", f"resume={run}"], capture_output=True, text=True, timeout=300)


def assert_same_as_reference(run: Path, reference) -> None:
    records, weights = reference
    got = comparable(run)
    steps = [(r["split"], r["step"]) for r in got]
    assert len(steps) == len(set(steps)), "duplicated steps in metrics.jsonl"
    assert got == records, "resumed metrics differ from the uninterrupted run"
    final = RunFolder(run).load_checkpoint("last")["model"]
    assert all(torch.equal(final[k], weights[k]) for k in weights)


def test_the_running_sums_do_not_depend_on_when_a_checkpoint_folds_them():
    """A record is the same whether a checkpoint (state_dict) came in between, through a save and
    load, or not; the sums are float64 sums of the steps' batch means in step order; a checkpoint
    written before the sums were kept on the host (float32 tensors) still loads."""
    from vaerun.train import Accumulator

    g = torch.Generator().manual_seed(0)
    steps = [(torch.rand((), generator=g) * 300, torch.rand((), generator=g) * 280, torch.rand(5, generator=g))
             for _ in range(23)]
    whole, split = Accumulator(), Accumulator()
    for i, step in enumerate(steps):
        whole.add(*step)
        split.add(*step)
        if i in (6, 7, 15):                                  # checkpoints, and a resume from the second
            state = split.state_dict()
            if i == 7:
                split = Accumulator()
                split.load_state_dict(pickle.loads(pickle.dumps(state)))
    a, b = whole.mean(), split.mean()
    assert a == b
    recon = 0.0
    for _, r, _ in steps:
        recon += float(r)
    assert a["recon"] == recon / len(steps)
    assert a["kl"] == pytest.approx(float(sum(k for _, _, k in steps).sum()) / len(steps), rel=1e-6)
    old = Accumulator()
    old.load_state_dict({"n": 2, "sums": [torch.tensor(10.0), torch.tensor(8.0), torch.tensor([1.0, 3.0])]})
    old.add(torch.tensor(2.0), torch.tensor(1.0), torch.tensor([0.5, 0.5]))
    assert old.mean() == {"loss": 4.0, "recon": 3.0, "kl": 5.0 / 3, "kl_per_dim": [0.5, 3.5 / 3]}


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    out = tmp_path / "out"
    proc = start(*FAULT, out=out)
    wait_for_step(out, 30, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    run = run_dir(out)
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert RunFolder(run).load_checkpoint("last")["step"] >= 30     # (resume after SIGTERM: test_compare)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)])
def test_signal_checkpoints_and_resume_matches_uninterrupted(tmp_path, reference, sig, code):
    out = tmp_path / "out"
    proc = start(*FAULT, out=out)
    wait_for_step(out, random.Random(sig).randint(20, 180), proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    run = run_dir(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "resume=" in summary["error"]
    stopped_at = RunFolder(run).load_checkpoint("last")["step"]
    assert 20 <= stopped_at < 240
    done = resume(run)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert_same_as_reference(run, reference)


def test_sigkill_leaves_a_valid_checkpoint_and_resume_works(tmp_path, reference):
    out = tmp_path / "out"
    proc = start(*FAULT, out=out)
    wait_for_step(out, random.randint(30, 200), proc)
    proc.kill()
    proc.wait(timeout=30)
    run = run_dir(out)
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # it never got to say more
    assert RunFolder(run).read_metrics()                                           # parseable
    load_checkpoint_file(run / "checkpoints" / "last.pt")                          # valid
    with open(run / "metrics.jsonl", "a") as fh:                                   # a torn last line
        fh.write('{"step": 99999, "split": "tra')
    done = resume(run)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_as_reference(run, reference)


def test_second_signal_exits_at_once(monkeypatch, tmp_path):
    from vaerun.loop import GracefulStop

    forced, exits = [], []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    with GracefulStop(on_force=forced.append) as stop:
        stop._handle(signal.SIGINT, None)
        assert stop.requested == signal.SIGINT and not exits
        stop._handle(signal.SIGINT, None)
    assert forced == [signal.SIGINT] and exits == [130]


# ---------------------------------------------------------------- non-finite values
def _nan_at(monkeypatch, steps: set[int]):
    """Makes the reconstruction term NaN on the given (1-based) training steps."""
    import vaerun.train as train_module

    real, calls = train_module.elbo_terms, {"n": 0}

    def faulty(model, x, *args, **kwargs):
        terms = real(model, x, *args, **kwargs)
        if model.training:
            calls["n"] += 1
            if calls["n"] in steps:
                terms.recon = terms.recon * float("nan")
        return terms

    real_pass = train_module.fused_pass

    def faulty_pass(model, autocast=None):  # the MLP's written-out pass (fused_mlp=true) skips elbo_terms
        pass_ = real_pass(model, autocast)
        if pass_ is None:
            return None

        def wrapped(x, *args, **kwargs):
            loss, terms = pass_(x, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] in steps:
                terms.recon, loss = terms.recon * float("nan"), loss * float("nan")
            return loss, terms
        return wrapped

    monkeypatch.setattr(train_module, "elbo_terms", faulty)
    monkeypatch.setattr(train_module, "fused_pass", faulty_pass)


def _tiny(tmp_path, *extra):
    from vaerun.session import train

    cfg, resolved = compose([*TINY, "max_steps=30", "checkpoint_every=5", "eval_every=10", "sample_every=30",
                             *extra])
    run = RunFolder(tmp_path / "run")
    return run, lambda: train(cfg, run, resolved)


def test_rollback_reloads_the_last_checkpoint_and_halves_the_lr(monkeypatch, tmp_path):
    _nan_at(monkeypatch, {13})
    run, go = _tiny(tmp_path)
    summary = go()
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["rollbacks"] == 1 and summary["lr_scale"] == 0.5
    events = [r for r in run.read_metrics() if r["split"] == "event"]
    assert len(events) == 1 and events[0]["step"] == 13 and events[0]["terms"] == ["recon", "loss"]
    assert events[0]["action"] == "rollback" and "encoder.body" in events[0]["grad_norms"]
    assert {"logvar_min", "logvar_max", "lr"} <= events[0].keys()
    train_steps = [r["step"] for r in run.read_metrics("train")]
    assert train_steps == sorted(set(train_steps))                       # no duplicates after rollback
    lrs = {r["step"]: r["lr"] for r in run.read_metrics("train")}
    assert lrs[10] == pytest.approx(1e-3) and lrs[12] == pytest.approx(5e-4)  # halved from step 11 on


def test_rollback_gives_up_after_nan_retries(monkeypatch, tmp_path):
    _nan_at(monkeypatch, set(range(7, 1000)))
    run, go = _tiny(tmp_path, "nan_retries=2")
    with pytest.raises(NonFiniteError, match="after 2 rollbacks"):
        go()
    summary = run.read_summary()
    assert summary["status"] == "failed" and "nan_retries=2" in summary["error"]
    assert len([r for r in run.read_metrics() if r["split"] == "event"]) == 3


def test_skip_drops_the_step_and_goes_on(monkeypatch, tmp_path):
    _nan_at(monkeypatch, {4, 9})
    run, go = _tiny(tmp_path, "on_nan=skip")
    summary = go()
    assert summary["status"] == "completed" and summary["steps"] == 30 and summary["skipped_steps"] == 2


def test_skip_never_loops_forever(monkeypatch, tmp_path):
    _nan_at(monkeypatch, set(range(3, 10**6)))
    run, go = _tiny(tmp_path, "on_nan=skip", "nan_max_skips=5")
    with pytest.raises(NonFiniteError, match="6 non-finite steps in a row"):
        go()
    assert run.read_summary()["status"] == "failed"


def test_stop_fails_at_once(monkeypatch, tmp_path):
    _nan_at(monkeypatch, {3})
    run, go = _tiny(tmp_path, "on_nan=stop")
    with pytest.raises(NonFiniteError, match="at step 3"):
        go()
    assert run.read_summary()["status"] == "failed"


def test_a_real_divergence_fails_clearly(tmp_path):
    out = subprocess.run([VAERUN, "train", *TINY, "max_steps=40", "optimizer=sgd", "optimizer.lr=1e6",
                          "nan_retries=2", f"out_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text
    assert "non-finite" in text and "rolled back" in text and "fix:" in text
    run = run_dir(tmp_path)
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert "non-finite" in (run / "train.log").read_text()
    assert any(r["split"] == "event" for r in RunFolder(run).read_metrics())


# ---------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    proc = subprocess.run([VAERUN, "train", *TINY, f"out_dir={out}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    return run_dir(out)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.marker}",))


@pytest.mark.parametrize("damage", ["truncated", "random", "foreign", "malicious"])
def test_bad_checkpoints_are_refused_clearly(tmp_path, finished_run, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = run / "checkpoints" / "last.pt"
    Exploit.marker = tmp_path / "pwned"
    if damage == "truncated":
        data = ckpt.read_bytes()
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "random":
        ckpt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    else:
        with open(ckpt, "wb") as fh:
            pickle.dump({"format": "vaerun-checkpoint", "payload": Exploit()}, fh)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(ckpt)
    assert str(ckpt) in str(err.value) and "fix:" in str(err.value)
    if damage == "malicious":
        assert "refused" in str(err.value)
    if damage in ("truncated", "malicious"):  # and through the CLI, as a user meets it
        out = resume(run)
        text = out.stdout + out.stderr
        assert out.returncode == 2 and "Traceback" not in text and "last.pt" in text
        assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert not Exploit.marker.exists()


def test_a_checkpoint_that_does_not_fit_its_config_is_refused_clearly(tmp_path, finished_run):
    """A run written by an older vaerun (the logistic likelihood at likelihood.mixtures=1 had 3
    outputs per pixel, now 2) once met the next version with a load_state_dict traceback."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for name in ("best", "last"):  # as an older version would have written it: one more output map
        path = run / "checkpoints" / f"{name}.pt"
        state = torch.load(path, weights_only=True)
        key = [k for k in state["model"] if k.startswith("decoder.") and k.endswith(".weight")][-1]
        state["model"][key] = torch.cat([state["model"][key], state["model"][key]])
        torch.save(state, path)
    for cmd in (["sample", str(run), "--n", "4"], ["eval", str(run), "--iw-samples", "2"]):
        out = subprocess.run([VAERUN, *cmd], capture_output=True, text=True, timeout=120)
        text = out.stdout + out.stderr
        assert out.returncode == 2 and "Traceback" not in text, text
        assert "best.pt does not fit the model" in text and key in text and "fix:" in text
    out = resume(run)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text and "last.pt does not fit the model" in text
    assert "does not fit" in json.loads((run / "summary.json").read_text())["error"]


# ---------------------------------------------------------------- data and output folders
def _train(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([VAERUN, "train", *TINY, f"out_dir={tmp_path / 'out'}", *args], capture_output=True,
                          text=True, timeout=120)


def test_missing_dataset_offline_is_clear(tmp_path):
    out = _train(tmp_path, "dataset=mnist", f"dataset.root={tmp_path / 'nodata'}", "dataset.download=false")
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text
    assert str(tmp_path / "nodata") in text and "fix:" in text
    assert json.loads(next((tmp_path / "out").rglob("summary.json")).read_text())["status"] == "failed"


@pytest.mark.parametrize("case", ["empty", "not_images", "missing"])
def test_bad_image_folders_are_clear(tmp_path, case):
    from vaerun.data import load_data
    from vaerun.errors import DataError

    folder = tmp_path / "images"
    if case != "missing":
        folder.mkdir()
    if case == "not_images":
        (folder / "notes.txt").write_text("hello")
    with pytest.raises(DataError) as err:
        load_data("image_folder", path=str(folder), val_size=1, test_size=1)
    assert str(folder) in str(err.value) and "fix:" in str(err.value)
    if case == "empty":  # and through the CLI
        out = _train(tmp_path, "dataset=image_folder", f"dataset.path={folder}")
        text = out.stdout + out.stderr
        assert out.returncode == 2 and "Traceback" not in text and str(folder) in text and "fix:" in text


def test_corrupt_image_among_good_ones_errors_or_is_skipped(tmp_path):
    folder = make_image_folder(tmp_path / "images", n=40)
    (folder / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    from vaerun.data import load_data
    from vaerun.errors import DataError

    with pytest.raises(DataError, match="broken.png") as err:
        load_data("image_folder", path=str(folder), val_size=5, test_size=5)
    assert "on_bad_image=skip" in str(err.value)
    args = ["dataset=image_folder", f"dataset.path={folder}", "dataset.val_size=5", "dataset.test_size=5"]
    out = _train(tmp_path, *args, "dataset.on_bad_image=skip")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skipped 1 unreadable of 41 files" in out.stdout


def test_images_of_mixed_sizes_and_modes_are_converted(tmp_path, caplog):
    from PIL import Image

    from vaerun.data import load_data

    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, mode in enumerate(["RGB", "RGBA", "L", "P", "1", "CMYK"] * 6):
        arr = rng.integers(0, 256, (10 + i, 14 + 2 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).convert(mode).save(folder / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    caplog.set_level("INFO", logger="vaerun")
    d = load_data("image_folder", path=str(folder), image_size=16, channels=3, val_size=4, test_size=4)
    assert d.shape == (3, 16, 16) and len(d.train) == 28
    assert "of 36 images, 30 converted to RGB and 36 resized/cropped to 16x16" in caplog.text


def test_unwritable_output_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = subprocess.run([VAERUN, "train", *TINY, f"out_dir={blocker / 'outputs'}"], capture_output=True,
                         text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in text and "out_dir=" in text and "fix:" in text
    assert "step" not in out.stdout


def test_resume_refuses_config_changes_and_non_runs(tmp_path, finished_run):
    out = subprocess.run([VAERUN, "train", f"resume={finished_run}", "beta=3"], capture_output=True, text=True)
    assert out.returncode == 2 and "beta=3" in out.stderr and "fix:" in out.stderr
    out = subprocess.run([VAERUN, "train", f"resume={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 2 and "no config.yaml" in out.stderr


def test_a_path_that_is_not_a_run_says_what_to_pass_instead(tmp_path):
    """A sweep folder, a folder inside a run and a missing path each get their own fix."""
    from vaerun.api import load_run
    from vaerun.errors import VaerunError
    from vaerun.runs import not_a_run

    sweep = tmp_path / "multirun" / "2026-11-28" / "12-00-00"
    for job in ("0_beta=0.5", "1_beta=2"):
        (sweep / job / "checkpoints").mkdir(parents=True)
        (sweep / job / "config.yaml").write_text("beta: 1\n")
        (sweep / job / "summary.json").write_text("{}")
    msg = not_a_run(sweep, "resume={}")
    assert "holds 2 runs" in msg and f"resume={sweep / '0_beta=0.5'}" in msg and f"vaerun compare {sweep}" in msg
    assert "holds 2 runs" in not_a_run(tmp_path / "multirun", "{}")          # outputs/multirun: runs 3 deep
    msg = not_a_run(sweep / "1_beta=2" / "checkpoints", "{}")
    assert "inside the run folder" in msg and msg.endswith(str((sweep / "1_beta=2").resolve()))
    assert "does not exist" in not_a_run(tmp_path / "nope", "{}")
    (tmp_path / "empty").mkdir()
    assert "no config.yaml" in not_a_run(tmp_path / "empty", "{}")
    with pytest.raises(VaerunError, match="holds 2 runs"):
        load_run(sweep)
    out = subprocess.run([VAERUN, "train", f"resume={sweep}"], capture_output=True, text=True)
    assert out.returncode == 2 and "holds 2 runs" in out.stderr and "Traceback" not in out.stderr


def test_a_failing_sweep_job_leaves_the_others_complete(tmp_path):
    out = subprocess.run([VAERUN, "train", "-m", *[a for a in TINY if not a.startswith("model.channels")],
                          "model=conv", "dataset.image_size=8", "model.channels=[8],[8,8,8,8,8,8]",
                          f"out_dir={tmp_path}"], capture_output=True, text=True, timeout=180)
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    assert "sweep job 1 (model.channels=[8,8,8,8,8,8]) failed: model.channels=" in out.stderr
    summaries = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.rglob("summary.json")}
    assert set(summaries) == {"0_model.channels=[8]", "1_model.channels=[8,8,8,8,8,8]"}
    assert summaries["0_model.channels=[8]"]["status"] == "completed"
    failed = summaries["1_model.channels=[8,8,8,8,8,8]"]
    assert failed["status"] == "failed" and "model.channels" in failed["error"]
    # started again in the same folder: the completed job is kept, the failed one (no checkpoint) is retried
    sweep = next(tmp_path.rglob("multirun.yaml")).parent
    again = subprocess.run([VAERUN, "train", "-m", *[a for a in TINY if not a.startswith("model.channels")],
                            "model=conv", "dataset.image_size=8", "model.channels=[8],[8,8,8,8,8,8]",
                            f"out_dir={tmp_path}", f"hydra.sweep.dir={sweep}"], capture_output=True, text=True,
                           timeout=180)
    text = again.stdout + again.stderr
    assert again.returncode != 0 and "0_model.channels=[8] already holds this job's completed run" in text
    assert "stopped before its first checkpoint (failed): starting it again" in text


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Checkpoints, summaries and pictures go through a temporary file; they still end up with the
    mode a plain open() gives (0666 minus the umask), not mkstemp's private 0600."""
    import stat

    from vaerun.runs import RunFolder

    old = os.umask(0o022)
    try:
        run = RunFolder(tmp_path / "run")
        run.write_summary({"status": "running"})
        mode = stat.S_IMODE((tmp_path / "run" / "summary.json").stat().st_mode)
    finally:
        os.umask(old)
    assert mode == 0o644


LENGTH = ["dataset.num_examples=612", "dataset.val_size=100", "dataset.test_size=100", "batch_size=32",
          "log_every=7", "eval_every=20", "checkpoint_every=13", "sample_every=40", "num_samples=4",
          "model.hidden=[64]", "model.latent_dim=4", "progress=log", "dataset.binarize=dynamic",
          "optimizer.lr_scheduler=step", "optimizer.lr_step_size=30", "schedule.warmup_steps=50",
          "pictures.latents=false", "pictures.traverse=false", "diagnostics.iw_samples=5"]


def test_a_finished_run_resumed_longer_ends_as_the_longer_run(tmp_path):
    """`vaerun train resume=RUN epochs=6` on a finished 40-step run (512 training images, 16 steps
    an epoch) continues to step 96 and ends with the weights of a 6-epoch run, bit for bit, and the
    same validations; the config and summary say what changed. Diagnose suggests `epochs=24` for a
    run still improving: this is how to take it without starting over."""
    ref = subprocess.run([VAERUN, "train", *LENGTH, "epochs=6", f"out_dir={tmp_path / 'ref'}"], capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    short = subprocess.run([VAERUN, "train", *LENGTH, "max_steps=40", f"out_dir={tmp_path / 'ext'}"], capture_output=True,
                           text=True, timeout=300)
    assert short.returncode == 0, short.stdout + short.stderr
    run = run_dir(tmp_path / "ext")
    longer = subprocess.run([VAERUN, "train", f"resume={run}", "epochs=6"], capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "resumed at step 40 of 96" in longer.stdout + longer.stderr
    a, b = RunFolder(run_dir(tmp_path / "ref")), RunFolder(run)
    wa, wb = a.load_checkpoint("last")["model"], b.load_checkpoint("last")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    vals = lambda f: [{k: v for k, v in r.items() if k not in VOLATILE} for r in f.read_metrics("val")]  # noqa: E731
    assert vals(a) == vals(b) and [r["step"] for r in vals(b)] == [20, 40, 60, 80, 96]
    summary = b.read_summary()
    assert summary["status"] == "completed" and summary["steps"] == summary["total_steps"] == 96
    assert summary["resumed"][-1]["length"] == {"epochs": {"from": 12, "to": 6}, "max_steps": {"from": 40, "to": None}}
    assert b.read_config()["max_steps"] is None and b.read_config()["epochs"] == 6


@pytest.mark.parametrize("extra, args, message", [
    ([], ["max_steps=10"], "10 steps, but the run has trained 20"),
    (["schedule=cyclical"], ["max_steps=40"], "schedule=cyclical is drawn over its length (20 steps)"),
    (["optimizer.lr_scheduler=cosine"], ["epochs=3"], "optimizer.lr_scheduler=cosine is drawn over its length"),
    ([], ["beta=2", "max_steps=40"], "beta=2: a resumed run continues with its own config"),
])
def test_a_new_length_that_cannot_be_honoured_is_a_config_error(tmp_path, extra, args, message):
    done = subprocess.run([VAERUN, "train", *LENGTH, "max_steps=20", *extra, f"out_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    run = run_dir(tmp_path)
    before = (run / "config.yaml").read_text()
    out = subprocess.run([VAERUN, "train", f"resume={run}", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "fix:" in out.stderr and "Traceback" not in out.stderr
    assert (run / "config.yaml").read_text() == before and RunFolder(run).read_summary()["status"] == "completed"
    if extra:  # at its own length it resumes (nothing left to train)
        same = subprocess.run([VAERUN, "train", f"resume={run}", "max_steps=20"], capture_output=True, text=True,
                              timeout=120)
        assert same.returncode == 0, same.stderr
