"""Sweeps and `vaerun compare`: a β multirun becomes one table and one report; failed runs show
as failed; seeds aggregate; parallel (joblib) and SLURM launchers; requeued jobs resume."""
from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import TINY, VAERUN
from vaerun import report
from vaerun.runs import RunFolder


def vaerun(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([VAERUN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def beta_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    proc = vaerun("train", "-m", *TINY, "schedule=constant", "beta=0.5,1,2", f"out_dir={out}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next((out / "multirun").glob("*/*"))


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells, self.images = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.cells.append(data)


def test_compare_a_beta_sweep(beta_sweep):
    out = vaerun("compare", str(beta_sweep))
    assert out.returncode == 0, out.stderr
    assert "3 runs · differing keys: beta" in out.stdout
    for beta in ("0.5", "1.0", "2.0"):
        assert beta in out.stdout
    page = (beta_sweep / "report.html").read_text()
    parser = Collector()
    parser.feed(page)
    assert {"0.5", "1.0", "2.0"} <= set(parser.cells)                       # all 3 runs in the table
    alts = [img["alt"] for img in parser.images]
    assert "rate-distortion" in alts and alts.count("samples") == 3
    assert alts.count("traverse") == 3 and alts.count("latents") == 3          # end-of-training pictures
    assert all(img["src"].startswith("data:image/png;base64,") for img in parser.images)  # self-contained
    md = (beta_sweep / "report.md").read_text()
    assert "report_files/rate_distortion.png" in md and (beta_sweep / "report_files" / "rate_distortion.png").exists()


def test_compare_json_round_trips_and_csv(beta_sweep):
    out = vaerun("compare", str(beta_sweep), "--format", "json", "--sort=-elbo", "--no-report")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 3 and json.loads(json.dumps(rows)) == rows
    assert [r["elbo"] for r in rows] == sorted((r["elbo"] for r in rows), reverse=True)
    assert {"beta", "status", "elbo", "recon", "kl", "active_units", "mi", "nll_iw", "wall_time_s"} <= rows[0].keys()
    assert all(r["status"] == "completed" for r in rows)
    for r in rows:  # each run's diagnosis: its overall status and the checks that set it
        summary = json.loads((Path(r["paths"][0]) / "summary.json").read_text())["diagnosis"]
        worst = [k for k, v in summary["checks"].items() if v == summary["overall"] != "ok"]
        assert r["diagnosis"] == summary["overall"] + (f" ({', '.join(worst)})" if worst else "")
    out = vaerun("compare", str(beta_sweep.parent.parent), "--format", "csv", "--sort", "beta", "--no-report")
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [float(r["beta"]) for r in table] == [0.5, 1.0, 2.0]
    out = vaerun("compare", str(beta_sweep), "--sort=-elb", "--no-report")   # once silently left unsorted
    assert out.returncode == 2 and "--sort elb: no such column (did you mean elbo" in out.stderr
    assert "fix:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("columns", [None, "100", "60"])
def test_the_compare_table_never_cuts_a_number(beta_sweep, monkeypatch, capsys, columns):
    """Off a terminal the table is as wide as it needs; on a narrow one (COLUMNS) it turns into
    one column per configuration, split into as many tables as it takes, every number whole."""
    from vaerun.commands import compare_main

    monkeypatch.delenv("COLUMNS", raising=False)
    compare_main([str(beta_sweep), "--format", "json", "--no-report"])
    rows = json.loads(capsys.readouterr().out)
    if columns:
        monkeypatch.setenv("COLUMNS", columns)
    keys = "beta,model.name,likelihood.name,optimizer.name,optimizer.lr,schedule.name"   # 16 columns
    compare_main([str(beta_sweep), "--no-report", "--keys", keys])
    text = capsys.readouterr().out
    lines = text.splitlines()
    names = [*keys.split(","), "runs", "status", "elbo", "recon", "kl", "active_units", "mi", "nll_iw", "wall_time_s", "diagnosis"]
    for r in rows:
        for m in ("elbo", "recon", "kl", "mi", "nll_iw", "wall_time_s"):
            assert f"{r[m]:.3f}" in text, (m, r[m])
    assert "…" not in text
    if columns is None:   # one row per configuration, all columns on one header line
        header = next(line for line in lines if "elbo" in line)
        assert all(n in header for n in names) and sum("completed" in line for line in lines) == 3
    else:                 # turned: one line per column name, as wide as the terminal at most
        assert max(len(line) for line in lines) <= int(columns)
        for n in names:
            assert any(line.startswith(f"│ {n} ") for line in lines), n
        if columns == "60":
            assert "(continued: configuration 3)" in text


def test_failed_and_incomplete_runs_show_as_such(beta_sweep, tmp_path):
    import shutil

    for i, status in enumerate(("failed", "running")):
        dst = tmp_path / f"run{i}"
        shutil.copytree(next(beta_sweep.glob("0_*")), dst)
        summary = json.loads((dst / "summary.json").read_text())
        summary.update(status=status, final_val=None, ended=None, error="boom" if status == "failed" else None)
        (dst / "summary.json").write_text(json.dumps(summary))
    shutil.copytree(next(beta_sweep.glob("1_*")), tmp_path / "ok")
    (tmp_path / "run0" / "metrics.jsonl").write_text("")                       # no metrics at all
    rows = json.loads(vaerun("compare", str(tmp_path), "--format", "json", "--no-aggregate").stdout)
    by_status = {r["status"]: r for r in rows}
    assert set(by_status) == {"failed", "incomplete", "completed"}
    assert by_status["failed"]["elbo"] is None and by_status["failed"]["error"] == "boom"
    assert by_status["incomplete"]["elbo"] is not None                        # from its last val record


def test_seeds_aggregate_as_mean_and_std():
    def run(beta, seed, elbo):
        final = {"elbo": elbo, "recon": -elbo - 1, "kl": 1.0, "active_units": 3, "mi": 0.5, "kl_per_dim": [1.0]}
        return {"path": f"/r/{beta}/{seed}", "config": {"beta": beta, "seed": seed}, "summary": {"wall_time_s": 2.0},
                "records": [], "final": final, "status": "completed", "samples": []}

    runs = [run(1.0, 0, -90.0), run(1.0, 1, -92.0), run(4.0, 0, -100.0), run(4.0, 1, -104.0)]
    rows = report.rows(runs)
    assert [(r["beta"], r["runs"]) for r in rows] == [(1.0, 2), (4.0, 2)]
    assert rows[0]["elbo"] == -91.0 and rows[0]["elbo_std"] == pytest.approx(1.41421, rel=1e-4)
    assert report.fmt(rows[1], "elbo") == "-102.000 ± 2.828"
    assert len(report.rows(runs, aggregate_seeds=False)) == 4


def test_a_run_stopped_before_its_length_says_so_and_its_beta_curve_ends_there():
    """A collapse_stop job of a sweep showed as 'completed' like the jobs that trained all their
    steps: its status cell names what stopped it and where, the JSON has it as `stopped`, and its
    β curve ends at the stop rather than drawing the whole planned schedule."""
    def run(beta, stopped=None):
        final = {"elbo": -90.0, "recon": 89.0, "kl": 1.0, "active_units": 3, "mi": 0.5, "kl_per_dim": [1.0]}
        config = {"beta": beta, "schedule.name": "constant", "schedule.beta_start": 0.0, "schedule.warmup_steps": 1,
                  "schedule.delay_steps": 0, "schedule.cycles": 1, "schedule.ratio": 0.5}
        return {"path": f"/r/{beta}", "config": config, "summary": {"wall_time_s": 2.0, "total_steps": 1692},
                "records": [{"split": "train", "step": s, "beta": beta} for s in (100, 200)],
                "final": final, "status": "completed", "stopped": stopped, "samples": []}

    runs = [run(1.0), run(100.0, {"step": 200, "best_step": 200, "reason": "collapse_stop"})]
    rows = report.rows(runs)
    assert [r["stopped"] for r in rows] == [None, "collapse_stop at 200"]
    cols, cells = report.table_cells(rows, ["beta"])
    assert [c[cols.index("status")] for c in cells] == ["completed", "completed (collapse_stop at 200)"]
    assert report.beta_curve(runs[0])[0][-1] == 1692 and report.beta_curve(runs[1])[0][-1] == 200


def test_joblib_sweep_runs_in_parallel_with_readable_output(tmp_path):
    out = vaerun("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "beta=1,2",
                 f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    statuses = [json.loads(p.read_text())["status"] for p in tmp_path.rglob("summary.json")]
    assert statuses == ["completed", "completed"]
    assert "━" not in out.stdout + out.stderr                                  # no progress bars


def test_slurm_preset_composes():
    out = vaerun("train", "hydra/launcher=slurm", "--cfg", "hydra")
    assert out.returncode == 0, out.stderr
    assert "SlurmLauncher" in out.stdout and "gpus_per_node: 1" in out.stdout and "max_num_timeout: 5" in out.stdout


def test_a_requeued_sweep_job_resumes_from_its_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    args = [VAERUN, "train", "-m", *TINY, "max_steps=250", "checkpoint_every=10", "beta=1",
            f"hydra.sweep.dir={sweep}", f"out_dir={tmp_path}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(sweep.rglob("last.pt")) or RunFolder(next(sweep.rglob("last.pt")).parents[1]).load_checkpoint()["step"] < 20:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)                                            # what SLURM sends before requeue
    proc.wait(timeout=60)
    job = next(sweep.rglob("summary.json")).parent
    assert json.loads((job / "summary.json").read_text())["status"] == "interrupted"
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)   # the requeued job
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming it" in again.stdout
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 250 and len(summary["resumed"]) == 1
    steps = [r["step"] for r in RunFolder(job).read_metrics("train")]
    assert steps == sorted(set(steps))


def test_compare_keys_chooses_the_columns(beta_sweep):
    out = vaerun("compare", str(beta_sweep), "--keys", "beta,batch_size", "--no-report")
    assert out.returncode == 0, out.stderr
    assert "3 runs · differing keys: beta; columns: beta, batch_size" in out.stdout
    assert "batch_size" in out.stdout and out.stdout.count(" 32 ") >= 3          # a key that does not differ
    bad = vaerun("compare", str(beta_sweep), "--keys", "betta", "--no-report")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--keys betta: no run has this config key (did you mean beta" in bad.stderr and "fix:" in bad.stderr


def test_many_differing_keys_show_the_sweep_axes_first():
    """Runs that differ in nine keys: six columns, the usual sweep axes first, then the keys with
    the most distinct values; every key still in the config differences."""
    def run(i):
        cfg = {"beta": [0.5, 1.0][i % 2], "optimizer.lr": [1e-3, 3e-4][i % 2], "seed": i % 3,
               **{f"extra.k{j}": (i * (j + 1)) % (j + 2) for j in range(6)}}
        return {"path": f"r{i}", "config": cfg}

    runs = [run(i) for i in range(12)]
    assert len(report.differing_keys(runs)) == 9
    keys = report.column_keys(runs)
    assert keys[:3] == ["beta", "seed", "optimizer.lr"] and len(keys) == report.MAX_KEY_COLUMNS
    assert keys[3:] == ["extra.k5", "extra.k4", "extra.k3"]                # 7, 6 and 5 distinct values
    assert report.column_keys(runs, ["extra.k0"]) == ["extra.k0"]
    assert report.column_keys(runs, skip=("seed",))[:2] == ["beta", "optimizer.lr"]   # seeds aggregated


def test_a_sweep_started_again_keeps_its_completed_jobs(beta_sweep, tmp_path):
    """The same sweep in the same hydra.sweep.dir: completed jobs are kept, not trained again (nor
    appended to); with a changed config the jobs fail with the differing key, folders untouched;
    a single run pointed at an existing run folder is refused."""
    before = {p: p.read_bytes() for p in beta_sweep.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json", ".pt")}
    args = ["train", "-m", *TINY, "schedule=constant", "beta=0.5,1,2", f"hydra.sweep.dir={beta_sweep}"]
    again = vaerun(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    text = again.stdout + again.stderr
    assert text.count("already holds this job's completed run: kept, not trained again") == 3
    assert "step-0 audit" not in text
    changed = vaerun(*args, "max_steps=7")
    assert changed.returncode != 0 and "Traceback" not in changed.stdout + changed.stderr
    assert "different config (max_steps: 6 -> 7)" in changed.stdout + changed.stderr
    after = {p: p.read_bytes() for p in before}
    assert after == before                                                     # nothing rewritten or appended
    import shutil

    shutil.copytree(next(beta_sweep.glob("0_*")), tmp_path / "x")             # a completed run's folder
    refused = vaerun("train", *TINY, f"hydra.run.dir={tmp_path / 'x'}")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "already holds a run (status completed); refusing to mix two runs" in refused.stdout + refused.stderr
    assert (tmp_path / "x" / "metrics.jsonl").read_bytes() == next(beta_sweep.glob("0_*/metrics.jsonl")).read_bytes()


def test_rate_distortion_labels_points_by_beta_in_a_beta_sweep_else_by_a_legend():
    def run(i, **config):
        return {"config": {"beta": 1.0, **config}, "final": {"kl": 10.0 + i, "recon": 80.0 - i},
                "status": "completed", "path": f"/runs/{i}"}

    sweep = [run(i, beta=b) for i, b in enumerate((0.5, 2.0))]
    fig = report.rate_distortion(sweep, ["beta"])
    assert [t.get_text() for t in fig.axes[0].texts if t.get_text().startswith("β")] == ["β=0.5", "β=2.0"]
    assert fig.axes[0].get_legend() is None
    mixed = [run(0, **{"model.name": "mlp"}), run(1, **{"model.name": "conv"})]
    fig = report.rate_distortion(mixed, ["model.name"])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "1" in texts and "2" in texts and not any(t.startswith("β=") for t in texts)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["1: model.name=mlp", "2: model.name=conv"]


def test_a_subset_nll_iw_is_said_so_under_the_table(beta_sweep, tmp_path, capsys, monkeypatch):
    """Training's nll_iw covers the first diagnostics.iw_examples images; when that is fewer than
    the split, the table says so (its bound is iw_elbo, in the JSON), else it says nothing."""
    import shutil

    from vaerun.commands import compare_main

    monkeypatch.delenv("COLUMNS", raising=False)
    compare_main([str(beta_sweep), "--no-report", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert all(r["iw_n"] == r["n"] == 40 and r["iw_elbo"] == pytest.approx(r["elbo"], rel=1e-9) for r in rows)
    compare_main([str(beta_sweep), "--no-report"])
    assert "nll_iw: on the first" not in capsys.readouterr().out
    dst = tmp_path / "run"
    shutil.copytree(next(beta_sweep.glob("0_*")), dst)
    summary = json.loads((dst / "summary.json").read_text())
    summary["final_val"].update(iw_n=16, iw_elbo=summary["final_val"]["elbo"] - 1.0)
    (dst / "summary.json").write_text(json.dumps(summary))
    compare_main([str(dst)])
    assert "nll_iw: on the first 16 validation images" in capsys.readouterr().out
    assert "nll_iw: on the first 16 validation images" in (dst / "report.md").read_text()
    assert "nll_iw: on the first 16 validation images" in (dst / "report.html").read_text()


@pytest.mark.parametrize("schedule", ["linear", "cyclical"])
def test_the_beta_curve_is_the_schedule_at_every_step_and_matches_the_log(tmp_path, schedule):
    """compare draws β from the run's schedule at every step (a short or cyclical run is drawn
    whole, not at its logged steps); at each logged step it is the β the train record logged."""
    out = vaerun("train", *TINY, "max_steps=24", "log_every=5", f"schedule={schedule}", "schedule.warmup_steps=10",
                 "beta=2", f"out_dir={tmp_path}")
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = report.load([str(tmp_path)])
    steps, betas = report.beta_curve(run)
    assert steps == list(range(1, 25))
    logged = {x["step"]: x["beta"] for x in run["records"] if x.get("split") == "train"}
    assert len(logged) >= 4
    for step, beta in logged.items():
        assert betas[step - 1] == pytest.approx(beta, abs=1e-12), step
    assert max(betas) == pytest.approx(2.0)
    if schedule == "cyclical":   # several rises and falls in 24 steps, which 5-step logging would blur
        assert sum(b < a for a, b in zip(betas, betas[1:])) >= 2


def _fake_run(dataset="shapes", binarize="none", likelihood="bernoulli", binary=True, shape=(1, 28, 28)):
    return {"config": {"dataset.name": dataset, "dataset.binarize": binarize, "likelihood.name": likelihood},
            "summary": {"data_shape": list(shape)}, "records": [{"split": "audit", "binary": binary}]}


def test_nats_on_different_scales_are_said_so():
    """A comparison once set a Gaussian's +214 'nats' on binary shapes beside Bernoulli runs' −383
    and Fashion-MNIST cross-entropies with no word that these are not one scale."""
    same = [_fake_run(), _fake_run(), _fake_run(likelihood="logistic")]     # a β sweep; a mass on 256 levels
    assert report.units_note(same) is None
    note = report.units_note([_fake_run(), _fake_run(likelihood="gaussian")])
    assert "likelihood kinds (probabilities: bernoulli on binary data; densities: gaussian)" in note
    assert "mix data" not in note
    note = report.units_note([_fake_run(), _fake_run("mnist", "dynamic"), _fake_run("fashion_mnist", binary=False)])
    assert "data (shapes; mnist binarize=dynamic; fashion_mnist)" in note
    assert "cross-entropies: bernoulli on grey levels" in note
    note = report.units_note([_fake_run(), _fake_run(shape=(1, 16, 16))])
    assert "data (shapes 1x28x28; shapes 1x16x16)" in note and "likelihood kinds" not in note
    old = _fake_run("mnist", "dynamic")
    old["records"] = []                                                  # no audit: binarized means binary
    assert report.units_note([old, _fake_run("mnist", "dynamic")]) is None


def test_the_units_note_reaches_the_terminal_and_the_reports(beta_sweep, tmp_path, capsys, monkeypatch):
    import shutil

    from vaerun.commands import compare_main

    monkeypatch.delenv("COLUMNS", raising=False)
    compare_main([str(beta_sweep), "--no-report"])
    assert "compare only between" not in capsys.readouterr().out          # one sweep: one scale
    dst = tmp_path / "sweep"
    shutil.copytree(beta_sweep, dst)
    one = next(dst.glob("0_*"))
    cfg = (one / "config.yaml").read_text()
    assert "name: bernoulli" in cfg
    (one / "config.yaml").write_text(cfg.replace("name: bernoulli", "name: gaussian"))
    compare_main([str(dst)])
    out = " ".join(capsys.readouterr().out.split())                     # the note wraps at the console's width
    assert "these runs mix likelihood kinds (densities: gaussian; probabilities: bernoulli on binary data)" in out
    for f in ("report.md", "report.html"):
        assert "these runs mix likelihood kinds" in (dst / f).read_text()


def test_diagnose_on_a_sweep_folder_diagnoses_every_run(beta_sweep, tmp_path):
    """`vaerun diagnose SWEEP` was 'not a vaerun run folder': now one line per run, and each
    run's diagnosis files and summary updated as `vaerun diagnose RUN` would."""
    import shutil

    sweep = shutil.copytree(beta_sweep, tmp_path / "sweep")
    for f in sweep.rglob("diagnosis.*"):
        f.unlink()
    out = vaerun("diagnose", str(sweep))
    assert out.returncode == 0, out.stdout + out.stderr
    runs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(runs) == 3 and all((r / "diagnosis.json").exists() and (r / "diagnosis.md").exists() for r in runs)
    for r in runs:
        report = json.loads((r / "diagnosis.json").read_text())
        assert r.name in out.stdout and report["headline"].split()[0] in out.stdout


def test_eval_on_a_sweep_folder_and_compare_shows_the_test_nll(beta_sweep, tmp_path):
    """The honest number side by side: `vaerun eval SWEEP --split test` evaluates every run, and
    `vaerun compare` shows each run's test_nll_iw (its best-checkpoint test entry with the most K)."""
    import shutil

    sweep = shutil.copytree(beta_sweep, tmp_path / "sweep")
    out = vaerun("eval", str(sweep), "--iw-samples", "5")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("wrote ") == 3 and f"vaerun compare {sweep}" in out.stdout
    runs = sorted(p.parent for p in sweep.rglob("summary.json"))
    want = {json.loads((r / "summary.json").read_text())["final_val"]["beta"]:
            json.loads((r / "eval.json").read_text())["test/best/K=5"]["nll_iw"] for r in runs}
    rows = json.loads(vaerun("compare", str(sweep), "--format", "json", "--no-report").stdout)
    assert {r["beta"]: r["test_nll_iw"] for r in rows} == pytest.approx(want) and {r["test_K"] for r in rows} == {5}
    table = vaerun("compare", str(sweep), "--no-report")
    assert "test_nll_iw" in table.stdout and "whole test split, best checkpoint, K = 5" in table.stdout
    assert vaerun("compare", str(sweep)).returncode == 0 and "test_nll_iw" in (sweep / "report.md").read_text()
