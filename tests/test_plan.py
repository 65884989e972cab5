"""`vaerun plan`: the plan of a run is what the run then does (its length, validations, β and
learning rate at every step where they turn), and it trains nothing."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import TINY, VAERUN, compose
from vaerun.plan import turning_points


def test_turning_points_are_the_ends_of_ramps_and_both_sides_of_jumps():
    ramp = [0.0] * 3 + [0.25, 0.5, 0.75] + [1.0] * 4            # rises over steps 3..6, flat from 6
    assert turning_points(ramp, list(range(10))) == {2, 6}
    cyclical = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.0, 0.2, 0.4]  # at 1 from step 5, falls back at step 7
    assert turning_points(cyclical, list(range(10))) == {0, 5, 6, 7}
    stairs = [1.0] * 4 + [0.5] * 4 + [0.25] * 4                  # a step learning rate
    assert turning_points(stairs, list(range(12))) == {3, 4, 7, 8}
    assert turning_points([3.0] * 5, list(range(5))) == set()
    assert turning_points(ramp[::2], list(range(0, 10, 2))) == {2, 6}   # on a stride: the scanned steps


def test_the_plan_is_what_the_run_does(tmp_path):
    """A 40-step run with a cyclical β, a step learning rate and capacity annealing, logged every
    step: every row of the plan has the β, learning rate and C of that step's train record, its
    validation steps are the run's, and its audit is the run's audit record."""
    from vaerun.runs import RunFolder
    from vaerun.session import train

    overrides = [*TINY, "max_steps=40", "eval_every=15", "log_every=1", "schedule=cyclical", "schedule.cycles=3",
                 "optimizer.lr_scheduler=step", "optimizer.lr_step_size=12", "capacity.gamma=5",
                 "capacity.steps=25", "capacity.delay_steps=5", "pictures.traverse=false", "pictures.latents=false"]
    out = subprocess.run([VAERUN, "plan", *overrides, "--format", "json", "--plot", str(tmp_path / "plan.png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert not list(tmp_path.glob("outputs*")) and (tmp_path / "plan.png").stat().st_size > 10_000
    cfg, resolved = compose(overrides)
    run = RunFolder(tmp_path / "run")
    train(cfg, run, resolved)
    records = run.read_metrics()
    logged = {r["step"]: r for r in records if r["split"] == "train"}
    assert plan["steps"] == 40 and plan["validations"] == [r["step"] for r in records if r["split"] == "val"]
    assert len(plan["rows"]) >= 10 and plan["rows"][0]["step"] == 1 and plan["rows"][-1]["step"] == 40
    for row in plan["rows"]:
        r = logged[row["step"]]
        assert (row["beta"], row["lr"], row["capacity"]) == pytest.approx((r["beta"], r["lr"], r["capacity"])), row
    turns = set(plan["turning_points"])
    assert {12, 13, 24, 25} <= turns            # the learning rate halves after steps 12 and 24
    assert {6, 31} <= turns                     # C rises from step 7 (after 5 steps' delay) to c_max at step 31
    assert {14, 15, 27, 28} <= turns            # β falls back to 0 at the start of cycles 2 and 3 (40 / 3 steps)
    audit = next(r for r in records if r["split"] == "audit")
    assert plan["audit"] == audit
    assert plan["collapse_stop_earliest"] is None                              # collapse_stop is off


def test_plan_prints_the_table_and_the_audit_warnings():
    out = subprocess.run([VAERUN, "plan", *TINY, "max_steps=20", "schedule=linear", "schedule.warmup_steps=100",
                          "collapse_stop=2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "length      20 steps of batch 32" in text and "validation  7 passes at steps 3, 6, 9" in text
    assert "the last step trains at β=0.19" in text
    assert "collapse_stop=2 can never stop it: fewer validations at the target β" in text  # all in the warm-up
    assert "step-0 audit: recon" in text
    assert "warning: audit: β warm-up longer than the run" in text and "schedule.warmup_steps=4" in text


@pytest.mark.parametrize("args,says", [
    (["beta=0.5,1"], "beta=0.5,1 is a sweep.\n  fix: vaerun plan -m ... plans each of its jobs"),
    (["-m", "beta=0.5,-1"], "sweep job 1 (beta=-1)"),
    (["-m", "beta=0.5,1", "--plot", "p.png"], "--plot draws one run's plan"),
    (["betta=2"], "there is no config key 'betta'"),
    (["resume=outputs"], "resume="),
])
def test_plan_config_errors_are_one_message(args, says):
    out = subprocess.run([VAERUN, "plan", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_plan_m_plans_every_job_of_a_sweep_in_hydras_order():
    args = [*TINY, "max_steps=20", "schedule=linear", "-m", "beta=1,4", "schedule.warmup_steps=5,50", "collapse_stop=1"]
    out = subprocess.run([VAERUN, "plan", *args, "--format", "json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plans = json.loads(out.stdout)
    assert [p["job"] for p in plans] == [0, 1, 2, 3]
    assert [[o for o in p["overrides"] if o.split("=")[0] in ("beta", "schedule.warmup_steps")] for p in plans] == [
        ["beta=1", "schedule.warmup_steps=5"], ["beta=1", "schedule.warmup_steps=50"],
        ["beta=4", "schedule.warmup_steps=5"], ["beta=4", "schedule.warmup_steps=50"]]
    assert [round(p["final_beta"], 3) for p in plans] == [1.0, 0.38, 4.0, 1.52]        # step 20 of a 50-step warm-up
    assert [p["collapse_stop_earliest"] for p in plans] == [6, None, 6, None]          # eval_every=3: from step 6
    import os
    text = subprocess.run([VAERUN, "plan", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "300"}).stdout
    assert "the 4 jobs of the sweep" in text and "β warm-up longer than the run" in text


def test_plan_m_expands_the_sweep_a_preset_declares_as_hydra_does():
    """experiment=shapes_beta_sweep declares its β values in hydra.sweeper.params: -m plans its six
    jobs (it planned one); a β list on the command line replaces the preset's, as in Hydra."""
    def jobs(*extra):
        out = subprocess.run([VAERUN, "plan", "-m", "experiment=shapes_beta_sweep", *TINY, *extra, "--format", "json"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return [p["schedule"]["beta"] for p in json.loads(out.stdout)]

    assert jobs() == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert jobs("beta=1,3") == [1.0, 3.0]
