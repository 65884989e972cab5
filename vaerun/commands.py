"""`vaerun eval` and `vaerun diagnose`: argparse front ends over a run folder (no Hydra)."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Optional


def _console(table=None):
    """rich's console. Off a terminal (pipes, files) there is no width to fit: 140 columns instead of
    80, or as wide as ``table`` needs, so a table is never squeezed into truncated numbers."""
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=140)
        if table is not None:
            console = Console(width=max(140, Console(width=100_000).measure(table).maximum))
    return console


def _fit_tables(title: str, cols: list[str], cells: list[list[str]], styles: list, numeric: set[int],
                limit: Optional[int]) -> list:
    """The compare table as rich tables at most ``limit`` columns wide. One row per configuration
    when it fits (always when ``limit`` is None: off a terminal the width follows the table); on a
    narrower terminal it turns: one row per column name, one column per configuration, as many
    configurations side by side as fit, then the next table. No number, status or diagnosis is
    ever cut; only a config value longer than 24 characters is shortened ("…")."""
    from rich.console import Console
    from rich.table import Table

    wide = Table(title=title)
    for i, c in enumerate(cols):  # numbers whole; text (config values, diagnosis) may wrap at its spaces
        wide.add_column(c, justify="right" if i in numeric or c == "runs" else "left", no_wrap=i in numeric)
    for row, style in zip(cells, styles):
        wide.add_row(*row, style=style)
    if limit is None or Console(width=100_000).measure(wide).minimum <= limit:
        return [wide]
    config = {i for i, c in enumerate(cols) if i not in numeric and c not in ("runs", "status", "diagnosis")}
    short = [[v[:23] + "…" if i in config and len(v) > 24 else v for i, v in enumerate(row)] for row in cells]
    label = max(len(c) for c in cols)
    wrap = {i for i, c in enumerate(cols) if c == "diagnosis"}  # the one long text: wraps at its spaces
    widths = [max(len(str(r + 1)), *(len(w) for i, v in enumerate(row) for w in (v.split() if i in wrap else [v])))
              for r, row in enumerate(short)]
    groups: list[list[int]] = [[]]
    for r, w in enumerate(widths):
        if groups[-1] and label + 4 + sum(widths[k] + 3 for k in groups[-1]) + w + 3 > limit:
            groups.append([])
        groups[-1].append(r)
    tables = []
    for g, group in enumerate(groups):
        rest = f" {group[0] + 1}" if len(group) == 1 else f"s {group[0] + 1}–{group[-1] + 1}"
        t = Table(title=title if g == 0 else f"(continued: configuration{rest})")
        t.add_column("", no_wrap=True, style="bold")
        for r in group:
            t.add_column(str(r + 1), justify="right", width=widths[r], style=styles[r])
        for i, c in enumerate(cols):
            t.add_row(c, *(short[r][i] for r in group))
        tables.append(t)
    return tables


def _open(path: str, device: str):
    """The run, with denormal floats flushed as its training did (``flush_denormals``; runs from
    before the key: on), set before any computation so that every thread flushes."""
    from vaerun.api import load_run
    from vaerun.train import flush_denormals, resolve_device

    run = load_run(path, device=str(resolve_device(device)))
    run.denormals = flush_denormals(bool(run.config.get("flush_denormals", True)))
    return run


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vaerun eval", description="Evaluate a run's checkpoint on a whole split: "
                                "ELBO, KL per dim, active units, mutual information and the importance-weighted "
                                "NLL with K samples. Writes eval.json into the run folder.")
    p.add_argument("run", help="a run folder, or a sweep folder (or any parent): every run in it in turn; "
                   "`vaerun compare` then shows their test_nll_iw")
    p.add_argument("--iw-samples", "-k", type=int, default=1000, help="K importance samples per example (default 1000)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test",
                   help="test (default), val, or train: beside val, the generalization gap (overfitting)")
    p.add_argument("--batch-size", type=int, help="examples per batch of the ELBO pass (default: the run's "
                   "eval_batch_size); the numbers do not depend on it")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, help="seed of binarization and Monte Carlo draws (default: the run's seed)")
    a = p.parse_args(argv)
    if a.iw_samples < 1 or (a.batch_size is not None and a.batch_size < 1):
        p.error("--iw-samples and --batch-size must be positive")
    runs = _runs_under(a.run)
    if runs:
        failed = 0
        for found in runs:
            try:
                _evaluate_one(str(found.path), a)
            except Exception as err:  # one unreadable run does not stop the others
                failed = 1
                print(f"{found.path}: not evaluated ({_one_line(err)})")
        print(f"side by side: vaerun compare {a.run}")
        return failed
    _evaluate_one(a.run, a)
    return 0


def _one_line(err: Exception) -> str:
    """An error in one line, for a run among many: its type and the first line of its message."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _runs_under(path: str) -> list:
    """The run folders below ``path`` when it is a sweep folder or a parent of runs (not a run
    itself): the commands that take a whole sweep go through them in turn. Else []."""
    from pathlib import Path

    from vaerun.runs import find_runs

    p = Path(path)
    return find_runs([p]) if p.is_dir() and not (p / "config.yaml").is_file() else []


def _evaluate_one(path: str, a) -> None:
    """`vaerun eval` of one run folder with the parsed arguments ``a``: its table and eval.json."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    run = _open(path, a.device)
    run.model(a.checkpoint), run.data()  # loaded before the clock starts
    t0 = time.time()
    with Progress(TextColumn(f"eval {a.split} K={a.iw_samples}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=_console()) as bar:
        task = bar.add_task("eval", total=len(run.data().split(a.split)))
        res = run.evaluate(a.split, a.checkpoint, a.iw_samples, a.seed, batch_size=a.batch_size,
                           on_batch=lambda n, _: bar.update(task, completed=n))
    res.update(split=a.split, checkpoint=a.checkpoint, seconds=round(time.time() - t0, 2),
               step=run.folder.load_checkpoint(a.checkpoint)["step"], denormals=run.denormals)
    report = run.folder.read_report("eval.json")
    report[f"{a.split}/{a.checkpoint}/K={a.iw_samples}"] = res
    run.folder.write_report("eval.json", report)
    table = Table(title=f"{run.path} · {a.split} split ({res['n']} examples) · {a.checkpoint} checkpoint "
                        f"(step {res['step']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for name, value, unit in eval_rows(res):
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value), unit)
    if res.get("mig") is not None:
        per = ", ".join(f"{k} {v:.2f}" for k, v in res["mig_per_factor"].items())
        table.add_row("mig", f"{res['mig']:.3f}", f"0..1, mutual information gap ({per})")
    _console().print(table)
    print(f"wrote {run.folder.path / 'eval.json'} ({res['seconds']:.1f}s)")


def eval_rows(res: dict) -> list[tuple[str, object, str]]:
    """(metric, value, unit) rows of `vaerun eval`'s table for an :func:`vaerun.train.evaluate`
    result: each bits/dim figure says whether it is a code length, and the MI its sample and ceiling."""
    k, d = res["iw_samples"], len(res["kl_per_dim"])
    rows = [("nll_iw", res["nll_iw"], f"nats/example, K={k}"), ("−elbo", -res["elbo"], "nats/example (K=1 bound)"),
            ("recon", res["recon"], "nats/example"), ("kl", res["kl"], "nats/example")]
    if "bpd_density_iw" in res:   # a density: the code length from its bins' mass, the density's figure labelled
        rows += [("bpd_iw", res["bpd_iw"], f"bits/dim, code length: each 8-bit level's bin mass (K={k})"),
                 ("bpd_density_iw", res["bpd_density_iw"], "bits/dim of the density + 8: not a code length, "
                                                           "not comparable with a mass's bpd")]
    elif "bpd_xent_iw" in res:    # a Bernoulli on grey levels
        rows.append(("bpd_xent_iw", res["bpd_xent_iw"], "bits/dim of a cross-entropy on grey levels: not a code length"))
    else:
        rows.append(("bpd_iw", res["bpd_iw"], f"bits/dim, code length (K={k})"))
    n = res.get("mi_n")
    rows += [("active_units", res["active_units"], f"of {d} dims"),
             ("mi", res["mi"], "nats" + (f", from {n} examples: ceiling log {n} = {math.log(n):.2f}, "
                                         f"noise ±{res['mi_noise']:.2f}" if n else "")),
             ("aggregate_kl", res["aggregate_kl"], "nats")]
    return rows


def diagnose_run(run, checkpoint: str = "last") -> dict:
    """Verdicts for a run (api.Run); writes diagnosis.json and diagnosis.md into its folder and,
    unless the run is still training (whose own summary writes would race with this one), the
    diagnosis in summary.json that `vaerun compare` shows."""
    from vaerun.diagnose import diagnose_folder, summary_entry, z_dependence

    zdep = None
    if run.folder.checkpoint_file(checkpoint).exists():
        zdep = z_dependence(run.model(checkpoint), run.data(), seed=run.cfg.seed)
    report = diagnose_folder(run.folder, run.config, zdep)
    summary = run.folder.read_summary()
    if summary.get("status") not in (None, "running") and report["overall"] != "unknown":
        summary["diagnosis"] = summary_entry(report)
        run.folder.write_summary(summary)
    return report


def print_diagnosis(report: dict, path) -> None:
    from rich.table import Table

    from vaerun.diagnose import next_commands

    colors = {"ok": "green", "warning": "yellow", "problem": "red", "unknown": "white"}
    table = Table(title=f"diagnosis of {path}: [{colors[report['overall']]}]{report['overall']}[/] — "
                        f"{report['headline']}", show_lines=True)
    for col in ("check", "status", "verdict and evidence", "next steps (changes)"):
        table.add_column(col)
    for v in report["verdicts"]:
        ev = ", ".join(f"{k}={x}" for k, x in v["evidence"].items() if k != "kl_per_dim")
        table.add_row(v["name"], f"[{colors[v['status']]}]{v['status']}[/]", f"{v['verdict']}\n[dim]{ev}\n"
                      f"{v['explanation']}[/]", "\n".join(v["next_steps"]))
    console = _console()
    console.print(table)
    commands = next_commands(report, path)
    if commands:  # whole commands, unwrapped, to paste: the run's own overrides with the change
        console.print("next steps as whole commands (this run's command line with the change; a longer run "
                      "continues this one):", highlight=False)
        checks: dict[str, list[str]] = {}  # a command two checks advise is printed once, naming both
        for name, c in commands:
            checks.setdefault(c, []).append(name)
        for c, names in checks.items():
            console.print(f"  {c}   [dim]# {', '.join(names)}[/]", soft_wrap=True, highlight=False)


def diagnose_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vaerun diagnose", description="Verdicts on posterior collapse, a lagging "
                                "encoder, early KL vanishing, reconstruction/KL imbalance, optimization trouble "
                                "and likelihood/data mismatch, with evidence and next steps. Writes "
                                "diagnosis.json and diagnosis.md into the run folder.")
    p.add_argument("run", help="a run folder, or a sweep folder (or any parent): every run in it, one line each")
    p.add_argument("--checkpoint", choices=["best", "last"], default="last")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    a = p.parse_args(argv)
    if _runs_under(a.run):
        return _diagnose_many(a.run, a.checkpoint, a.device)
    run = _open(a.run, a.device)
    report = diagnose_run(run, a.checkpoint)
    print_diagnosis(report, run.path)
    print(f"wrote {run.folder.path / 'diagnosis.json'} and diagnosis.md")
    return 0 if report["overall"] != "unknown" else 1


def _diagnose_many(folder: str, checkpoint: str, device: str) -> int:
    """Every run under ``folder`` (a sweep, or outputs/) diagnosed anew: files and summary.json
    updated as for one run, one line each (its status and headline); the details per run."""
    from rich.table import Table

    colors = {"ok": "green", "warning": "yellow", "problem": "red", "unknown": "white"}
    table = Table(title=f"diagnosis of the runs under {folder}")
    for col in ("run (under it)", "status", "headline"):
        table.add_column(col)
    worst = 0
    for found in _runs_under(folder):
        name = str(found.path.relative_to(folder))
        try:
            report = diagnose_run(_open(str(found.path), device), checkpoint)
        except Exception as err:  # an unreadable run (no config.yaml, a bad checkpoint) does not stop the others
            worst = 1
            table.add_row(name, "unknown", _one_line(err))
            continue
        overall = report["overall"]
        worst = max(worst, overall == "unknown")
        table.add_row(name, f"[{colors[overall]}]{overall}[/]", report["headline"])
    _console().print(table)
    print("each run's verdicts, evidence and next steps: vaerun diagnose RUN (written to its diagnosis.md)")
    return worst


def plan_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vaerun plan", description="What `vaerun train` with the same overrides will do, "
                                "without training: the data and model it builds, its length in steps and epochs, "
                                "when it validates, checkpoints and draws sample grids, β, the learning rate and the "
                                "capacity at every step where they turn, and the step-0 audit of the loss terms "
                                "with its warnings. Built by the same code as the run, on the CPU.",
                                usage="vaerun plan [-m] [group=option ...] [key=value ...] [--plot FILE] [--format json]")
    p.add_argument("overrides", nargs="*", help="the overrides you would give vaerun train")
    p.add_argument("-m", "--multirun", action="store_true", help="plan every job of a sweep (beta=0.5,1,2), one "
                   "line each, in Hydra's job order")
    p.add_argument("--plot", metavar="FILE", help="also draw β, the learning rate and the capacity against step "
                   "into this PNG")
    p.add_argument("--format", choices=["text", "json"], default="text")
    a = p.parse_intermixed_args(argv)  # flags anywhere among the overrides, as vaerun train takes -m
    import json

    from vaerun.overrides import expand_home
    from vaerun.confcheck import check, check_sweep, declared_sweep, override_key, sweep_axes, sweep_jobs
    from vaerun.plan import figure

    overrides = expand_home(a.overrides)
    if a.multirun:
        problem = check_sweep(overrides) or ("--plot draws one run's plan.\n  fix: drop -m, or drop --plot"
                                             if a.plot else None)
    else:
        try:
            swept = [axis for axis in sweep_axes(overrides) if len(axis) > 1]
        except Exception:  # a syntax error: check() words it
            swept = []
        given = [o for o in overrides if swept and override_key(o) == override_key(swept[0][0])]
        problem = (f"{given[-1]} is a sweep.\n  fix: vaerun plan -m ... plans each of its jobs (one line each); "
                   f"or plan one value, e.g. vaerun plan {swept[0][0]}") if swept else check(overrides)
    if problem:
        print(f"vaerun plan: config error: {problem}", file=sys.stderr)
        return 2
    if a.multirun:  # a preset's own sweep (hydra.sweeper.params) first, as Hydra's basic sweeper does
        return _plan_sweep(sweep_jobs(declared_sweep(overrides) + overrides), a.format)
    out, lines, parts = _plan_job(overrides)
    out["overrides"] = list(a.overrides)
    if a.plot:
        from pathlib import Path

        import matplotlib.pyplot as plt

        from vaerun.errors import VaerunError

        fig, written = figure(out, parts), Path(a.plot)
        try:
            written.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(written, format="png", dpi=110, bbox_inches="tight")
        except OSError as err:
            raise VaerunError(f"--plot {a.plot}: cannot write it ({err.strerror or err}).\n"
                              f"  fix: a path in a folder you can write, e.g. --plot plan.png") from None
        finally:
            plt.close(fig)
    if a.format == "json":
        print(json.dumps(out, indent=1))
        return 0
    print_plan(out, lines)
    if a.plot:
        print(f"wrote {written}")
    return 0


def print_plan(p: dict, audit: list[str]) -> None:
    from rich.table import Table

    def n(x) -> str:
        return f"{x:,}"

    d, m, o = p["data"], p["model"], p["optimizer"]
    vals, grids = p["validations"], p["sample_grids"]
    shown = lambda steps: ", ".join(map(n, steps)) if len(steps) <= 8 else \
        f"{', '.join(map(n, steps[:3]))}, ..., {', '.join(map(n, steps[-2:]))}"  # noqa: E731
    sched = p["schedule"]
    lines = [
        f"plan of: vaerun train {' '.join(p['overrides'])}".rstrip(),
        f"data        {d['name']}: {n(d['train'])} train / {n(d['val'])} val / {n(d['test'])} test images of "
        f"{'x'.join(map(str, d['shape']))} (binarize {d['binarize']})",
        f"model       {m['name']}, {n(m['parameters'])} parameters, latent_dim {m['latent_dim']}, "
        f"{m['likelihood']} likelihood",
        f"length      {n(p['steps'])} steps of batch {p['batch_size']} = {p['epochs']:g} epochs of "
        f"{n(p['steps_per_epoch'])} steps" + (f" (max_steps={p['max_steps']})" if p["max_steps"] is not None else ""),
        f"validation  {len(vals)} pass{'es' if len(vals) > 1 else ''} at step{'s' if len(vals) > 1 else ''} "
        f"{shown(vals)}{_plan_stops(p)}",
        f"files       a checkpoint every {n(p['checkpoints_every'])} steps and at each validation (best kept); "
        f"sample grids at {shown(grids)}; a log line every {p['log_every']} steps",
        "β           " + ", ".join([sched["name"]] + [f"{k}={v:g}" for k, v in sched.items() if k != "name"]) +
        f"; free_bits={p['free_bits']:g}; the last step trains at β={p['final_beta']:.4g}",
        f"optimizer   {o['name']}, lr {o['lr']:g}, lr_scheduler {o['lr_scheduler']}" +
        (" (the rate falls when validation stalls: decided during the run, so the table shows the starting rate)"
         if o["lr_scheduler"] == "plateau" else "") +
        (f", grad_clip {o['grad_clip']:g}" if o["grad_clip"] else "") + (f", ema {o['ema']:g}" if o["ema"] else ""),
    ]
    if p["capacity"]:
        c = p["capacity"]
        lines.append(f"capacity    C from 0 to {c['c_max']:g} nats over steps {n(c['delay_steps'] + 1)}–"
                     f"{n(c['delay_steps'] + c['steps'])}, weighted by γ={c['gamma']:g}")
    if p["aggressive"]:
        lines.append("aggressive  encoder-only inner updates before each step until the mutual information stops "
                     "rising (checked at the end of each epoch)")
    console = _console()
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    cols = ["step", "epoch", "β", "lr"] + (["C [nats]"] if p["capacity"] else [])
    turns = len(p["turning_points"])
    console.print(f"β, the learning rate{' and C' if p['capacity'] else ''} at the first and last step, where they "
                  f"turn ({turns or 'no'} step{'s' if turns != 1 else ''}"
                  f"{'; evenly chosen among them' if len(p['rows']) < turns else ''}) and at the validation passes "
                  "(↓ marks those):", highlight=False, soft_wrap=True)
    table = Table()
    for c in cols:
        table.add_column(c, justify="right")
    for r in p["rows"]:
        table.add_row(n(r["step"]) + (" ↓" if r["step"] in vals else "  "), f"{r['epoch']:.2f}", f"{r['beta']:.4g}",
                      f"{r['lr']:.3g}", *([f"{r['capacity']:.3g}"] if p["capacity"] else []))
    console.print(table)
    for line in audit:
        console.print(line, highlight=False, soft_wrap=True)


def _plan_job(overrides: list[str]):
    """One run's plan (plan.plan plus its audit record), the audit's log lines, and its built parts."""
    from omegaconf import OmegaConf

    from vaerun.config import Device
    from vaerun.confcheck import compose_config
    from vaerun.errors import ConfigError
    from vaerun.plan import audit_lines, plan
    from vaerun.train import build

    cfg = OmegaConf.to_object(compose_config(overrides))
    if cfg.resume:
        raise ConfigError("resume", cfg.resume, "vaerun plan plans a new run; a resumed run keeps its own config.yaml",
                          "drop resume= (vaerun train resume=RUN max_steps=N checks a new length itself)")
    cfg.device, cfg.compile = Device.cpu, False  # the plan needs no accelerator and no compiled step
    parts = build(cfg)
    out = plan(cfg, parts)
    out["audit"], lines = audit_lines(cfg, parts)
    out["overrides"] = list(overrides)
    return out, lines, parts


def _plan_sweep(jobs: list[list[str]], fmt: str) -> int:
    """`vaerun plan -m`: each job's plan, one line each (its swept values, length, validations, the
    β its last step trains at, where collapse_stop can end it, the audit's warnings)."""
    import json

    from rich.table import Table

    swept = [i for i in range(len(jobs[0])) if len({job[i] for job in jobs}) > 1]  # each job: one entry per key
    plans = []
    for number, job in enumerate(jobs):
        out, _, _ = _plan_job(job)
        plans.append({"job": number, **out})
    if fmt == "json":
        print(json.dumps(plans, indent=1))
        return 0
    table = Table(title=f"the {len(jobs)} jobs of the sweep, in Hydra's order")
    for col in ("job", "swept values", "steps", "epochs", "validations", "last β", "collapse_stop can end it at",
                "audit warnings"):
        table.add_column(col, justify="right" if col in ("job", "steps", "epochs", "validations") else "left")
    # a dataset brings its own likelihood default (the grey-level ones the logistic): say so where
    # the sweep changes the likelihood without sweeping it
    implied = (len({p["model"]["likelihood"] for p in plans}) > 1
               and not any(jobs[0][i].startswith("likelihood=") for i in swept))
    for p in plans:
        values = " ".join(p["overrides"][i] for i in swept)
        if implied:
            values += f" (its likelihood: {p['model']['likelihood']})"
        stop = ("off" if not p["collapse_stop"] else f"{p['collapse_stop_earliest']:,}" if p["collapse_stop_earliest"]
                else "never")
        notes = p["audit"].get("notes", [])
        table.add_row(str(p["job"]), values, f"{p['steps']:,}", f"{p['epochs']:g}", str(len(p["validations"])),
                      f"{p['final_beta']:.4g}", stop, "; ".join(n.split(":")[0] for n in notes) or "none")
    _console(table).print(table)
    print("each job's whole plan: vaerun plan <its overrides> (--format json has them all)")
    return 0


def _plan_stops(p: dict) -> str:
    """What may end the planned run before its length: early_stop, and where collapse_stop can."""
    out = f"; early_stop={p['early_stop']} may end the run sooner" if p["early_stop"] else ""
    if p["collapse_stop"] and p["collapse_stop_earliest"]:
        out += f"; collapse_stop={p['collapse_stop']} can end it at step {p['collapse_stop_earliest']:,} at the earliest"
    elif p["collapse_stop"]:
        out += (f"; collapse_stop={p['collapse_stop']} can never stop it: fewer validations at the target β before "
                "the end (fix: a smaller eval_every)")
    return out


def guarded(main, argv: list[str]) -> int:
    """User-facing errors as one message, exit 2, no traceback."""
    from vaerun.errors import VaerunError

    try:
        return main(argv)
    except VaerunError as err:
        print(f"vaerun: {err}", file=sys.stderr)
        return 2


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vaerun compare", description="One report across run folders, sweep folders "
                                "or any parent of them (searched recursively): a table (seeds aggregated as "
                                "mean ± std), report.html and report.md with a rate–distortion plot, curves, KL "
                                "per dimension, samples and config differences.")
    p.add_argument("paths", nargs="+", help="run folders, sweep folders or parents")
    p.add_argument("--sort", help="a column (elbo, recon, kl, active_units, mi, nll_iw, wall_time_s, beta or a "
                   "differing config key); prefix with - for descending, e.g. --sort=-elbo")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table", help="stdout format")
    p.add_argument("--out", help="folder for report.html and report.md (default: the common parent)")
    p.add_argument("--no-aggregate", action="store_true", help="one row per run even across seeds")
    p.add_argument("--no-report", action="store_true", help="print only; write no report files")
    p.add_argument("--keys", help="comma-separated config keys to show as columns and labels, e.g. "
                   "--keys beta,model.name (default: the differing keys, at most six, the usual sweep axes first)")
    a = p.parse_args(argv)
    import csv
    import json

    from vaerun import report
    from vaerun.errors import VaerunError

    runs = report.load(a.paths)
    if not runs:
        raise VaerunError(f"no run folders (with a summary.json) under {', '.join(a.paths)}.\n"
                          f"  fix: pass a run folder, a sweep folder or a parent such as outputs/")
    every = report.differing_keys(runs)
    keys = report.column_keys(runs, [k.strip() for k in a.keys.split(",") if k.strip()] if a.keys else None,
                              skip=() if a.no_aggregate else ("seed",))
    table = report.sort_rows(report.rows(runs, not a.no_aggregate, tuple(keys)), a.sort)
    if a.format == "json":
        print(json.dumps(table, indent=2, default=str))
    elif a.format == "csv":
        cols = sorted({k for r in table for k in r if k != "paths"})
        w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    else:
        import os

        cols, cells = report.table_cells(table, keys)
        shown = "" if keys == [k for k in every if a.no_aggregate or k != "seed"] else (f", showing {', '.join(keys)} (--keys to choose; all in report.md)"
                                          if a.keys is None else f"; columns: {', '.join(keys)}")
        title = (f"{len(runs)} runs · differing keys: {', '.join(every) or 'none'}" if len(every) <= report.MAX_KEY_COLUMNS
                 else f"{len(runs)} runs · {len(every)} differing keys") + shown
        colors = {"completed": "green", "failed": "red", "interrupted": "yellow", "incomplete": "yellow"}
        styles = [None if row["status"] == "completed" else colors.get(row["status"].split("/")[0]) for row in table]
        numeric = {i for i, c in enumerate(cols) if c in (*report.METRICS, *report.OPTIONAL_METRICS, "wall_time_s")}
        console = _console()
        limit = console.width if console.is_terminal or "COLUMNS" in os.environ else None  # else: as wide as needed
        tables = _fit_tables(title, cols, cells, styles, numeric, limit)
        for t in tables:
            _console(t).print(t)
        for note in report.table_notes(runs, table):  # nats on different scales, nll_iw on a subset
            console.print(note, highlight=False)
    if not a.no_report:
        out = __import__("pathlib").Path(a.out) if a.out else report.common_parent(a.paths)
        html_path, md_path = report.write_reports(runs, table, out, keys)
        print(f"wrote {html_path} and {md_path}", file=sys.stderr if a.format != "table" else sys.stdout)
    return 0


# ---------------------------------------------------------------- pictures
def _picture_parser(kind: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"vaerun {kind}", description=description + " Writes a PNG into the run "
                                f"folder (pictures/{kind}.png, or pictures/{kind}_last.png for --checkpoint last) "
                                "or to --out, and prints where.")
    p.add_argument("run", help="a run folder")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--out", help="write the PNG here instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws and autoregressive sampling")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    return p


def _save_picture(run, fig, kind: str, a) -> None:
    import matplotlib.pyplot as plt

    path = run.folder.save_figure(fig, a.out or run.folder.picture_file(kind, a.checkpoint))
    plt.close(fig)
    print(f"wrote {path}")


def _positive(p: argparse.ArgumentParser, **values) -> None:
    bad = [f"--{k.replace('_', '-')}={v}" for k, v in values.items() if not v > 0]
    if bad:
        p.error(f"{', '.join(bad)}: must be positive")


def _generator(run, seed: int):
    import torch

    return torch.Generator(device=run.device).manual_seed(seed)


def _slow_note(run, images: int) -> None:
    if run.cfg.model.name.value == "autoregressive":
        c, h, w = run.data().shape
        print(f"note: the autoregressive decoder draws {images} images pixel by pixel ({c * h * w} network passes)")


def sample_main(argv: list[str]) -> int:
    p = _picture_parser("sample", "A grid of samples from the prior, z ~ N(0, T²·I), decoded (the likelihood mean; "
                        "a pixel-by-pixel sample for the autoregressive decoder); or, with --z, from a density "
                        "fitted to where the encoder puts the training data (for a prior hole: good "
                        "reconstructions, poor prior samples), judged on the validation codes in nats.")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--temperature", "-t", type=float, default=1.0, help="prior scale T (default 1)")
    p.add_argument("--z", choices=["prior", "gaussian", "gmm"], default="prior",
                   help="where z comes from: the prior (default), a full-covariance Gaussian moment-matched to "
                   "the aggregate posterior q(z), or a Gaussian mixture fitted to it (writes pictures/sample_<z>.png)")
    p.add_argument("--components", type=int, default=10, help="--z gmm: mixture components (default 10)")
    p.add_argument("--fit-examples", type=int, default=10000,
                   help="--z gaussian|gmm: training examples the density is fitted to (default 10000)")
    a = p.parse_args(argv)
    _positive(p, n=a.n, temperature=a.temperature, components=a.components, fit_examples=a.fit_examples)
    from vaerun.pictures import grid_figure, sample_grid

    run = _open(a.run, a.device)
    model = run.model(a.checkpoint)
    density = None
    if a.z != "prior":
        density = _fitted_density(run, model, a)
    _slow_note(run, a.n)
    grid = sample_grid(model, a.n, a.temperature, _generator(run, a.seed), density)
    _save_picture(run, grid_figure(grid), "sample" if a.z == "prior" else f"sample_{a.z}", a)
    return 0


def _fitted_density(run, model, a):
    """The --z density fitted to the training split's posteriors, and how much better than the
    prior it explains held-out codes: the mean log density of one draw z ~ q(z|x) per validation
    image under each (nats; the difference is how far the prior misses the aggregate posterior)."""
    import time

    from vaerun.priors import fit_to_codes

    t = time.time()
    density, fit = fit_to_codes(model, run.data(), a.z, a.components, a.fit_examples, a.seed, run.cfg.seed)
    print(f"z from {density.describe()}, fitted to {fit['n_fit']:,} training images in {time.time() - t:.1f}s; "
          f"on {fit['n_val']:,} validation codes z ~ q(z|x) its mean log density is {fit['fitted_ll']:.2f} nats, "
          f"the prior's {fit['prior_ll']:.2f}: {fit['gain']:+.2f} nats per code")
    return density


def _dims(text: str):
    if text == "auto":
        return "auto"
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dims takes auto or a comma-separated list like 0,3,5, not {text!r}")


def traverse_main(argv: list[str]) -> int:
    p = _picture_parser("traverse", "Latent traversals: one row per dimension, sweeping it while the others stay "
                        "fixed; rows sorted by the dimension's KL, written beside each row.")
    p.add_argument("--dims", type=_dims, default="auto", help="auto (the informative dims, largest KL first) or a "
                   "list like 0,3,5")
    p.add_argument("--range", type=float, default=2.5, dest="span", help="sweep z_d over origin ± R (default 2.5)")
    p.add_argument("--steps", type=int, default=9, help="images per row (default 9)")
    p.add_argument("--from", choices=["prior", "data"], default="prior", dest="origin",
                   help="hold the other dims at the prior mean 0, or at a validation image's posterior mean")
    p.add_argument("--max-dims", type=int, default=10, help="auto: at most this many rows (default 10)")
    a = p.parse_args(argv)
    _positive(p, range=a.span, steps=a.steps, max_dims=a.max_dims)
    from vaerun.errors import VaerunError
    from vaerun.pictures import grid_figure, posterior, traversal

    run = _open(a.run, a.device)
    model, data = run.model(a.checkpoint), run.data()
    post = posterior(model, data, "val", max_examples=2000, seed=run.cfg.seed)
    origin = None
    if a.origin == "data":
        origin = post["mu"][a.seed % post["mu"].shape[0]]
    try:
        rows = len(a.dims) if a.dims != "auto" else a.max_dims
        _slow_note(run, rows * a.steps)
        grid = traversal(model, post["kl_per_dim"], dims=a.dims, span=a.span, steps=a.steps, origin=origin,
                         threshold=run.cfg.diagnostics.collapse_threshold, max_dims=a.max_dims,
                         generator=_generator(run, a.seed))
    except ValueError as err:
        raise VaerunError(f"{err}\n  fix: vaerun traverse {a.run} --dims auto, or dims from 0 to "
                          f"{post['kl_per_dim'].shape[0] - 1}") from None
    print(grid.note)
    _save_picture(run, grid_figure(grid), "traverse", a)
    return 0


def interpolate_main(argv: list[str]) -> int:
    p = _picture_parser("interpolate", "Decoded paths between the posterior means of validation images: one row "
                        "per pair, the two inputs at the ends.")
    p.add_argument("--pairs", type=int, default=6, help="rows (default 6)")
    p.add_argument("--steps", type=int, default=8, help="decoded images per path, endpoints included (default 8)")
    p.add_argument("--mode", choices=["linear", "slerp"], default="linear")
    a = p.parse_args(argv)
    _positive(p, pairs=a.pairs, steps=a.steps)
    import torch

    from vaerun.errors import VaerunError
    from vaerun.pictures import grid_figure, interpolation

    run = _open(a.run, a.device)
    model, data = run.model(a.checkpoint), run.data()
    if 2 * a.pairs > len(data.val):
        raise VaerunError(f"--pairs={a.pairs} needs {2 * a.pairs} validation images; the run has {len(data.val)}.\n"
                          f"  fix: --pairs {len(data.val) // 2}")
    gen = _generator(run, a.seed)
    idx = torch.randperm(len(data.val), generator=gen, device=gen.device)[:2 * a.pairs]
    x = data.prepare(data.val.images[idx], gen)                               # (2P, C, H, W)
    _slow_note(run, a.pairs * a.steps)
    grid = interpolation(model, x[:a.pairs], x[a.pairs:], steps=a.steps, mode=a.mode, generator=gen)
    _save_picture(run, grid_figure(grid), "interpolate", a)
    return 0


def latents_main(argv: list[str]) -> int:
    p = _picture_parser("latents", "A latent map of the validation set: posterior means on the two most "
                        "informative dims and a PCA projection of all dims, coloured by class or by a "
                        "generative factor; beside it, per dimension, a histogram of posterior σ against the "
                        "prior's 1 (collapsed dims sit at 1).")
    p.add_argument("--examples", type=int, default=5000, help="validation examples (default 5000)")
    p.add_argument("--color-by", help="shapes: the factor to colour by (shape, scale, rotation, x, y; default "
                   "shape); MNIST and Fashion-MNIST are coloured by class")
    a = p.parse_args(argv)
    _positive(p, examples=a.examples)
    from vaerun.errors import VaerunError
    from vaerun.pictures import latent_map_figure, posterior

    run = _open(a.run, a.device)
    model, data = run.model(a.checkpoint), run.data()
    post = posterior(model, data, "val", max_examples=a.examples, seed=run.cfg.seed)
    try:
        fig, info = latent_map_figure(post, data.label_names, a.color_by, run.cfg.diagnostics.collapse_threshold,
                                      data.value_names)
    except ValueError as err:
        factors = post.get("labels") is not None and post["labels"].ndim == 2
        raise VaerunError(f"{err}\n  fix: {'pick a listed factor or ' if factors else ''}drop --color-by") from None
    print(f"{info['n']} examples, {info['informative']} of {len(info['dims_order'])} dims informative; "
          f"top dims z{info['top_dims'][0]}, z{info['top_dims'][1]}")
    _save_picture(run, fig, "latents", a)
    return 0
