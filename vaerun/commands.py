"""`vaerun eval` and `vaerun diagnose`: argparse front ends over a run folder (no Hydra)."""
from __future__ import annotations

import argparse
import sys


def _console():
    """rich's console; off a terminal (pipes, files) 140 columns instead of 80, so tables stay readable."""
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=140)
    return console


def _open(path: str, device: str):
    from vaerun.api import load_run
    from vaerun.train import resolve_device

    return load_run(path, device=str(resolve_device(device)))


def eval_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vaerun eval", description="Evaluate a run's checkpoint on a whole split: "
                                "ELBO, KL per dim, active units, mutual information and the importance-weighted "
                                "NLL with K samples. Writes eval.json into the run folder.")
    p.add_argument("run", help="a run folder")
    p.add_argument("--iw-samples", "-k", type=int, default=1000, help="K importance samples per example (default 1000)")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--batch-size", type=int, default=100, help="examples per batch (each decodes up to 64·B rows)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.iw_samples < 1 or a.batch_size < 1:
        p.error("--iw-samples and --batch-size must be positive")
    import time

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from vaerun.train import evaluate

    run = _open(a.run, a.device)
    model, data = run.model(a.checkpoint), run.data()
    torch.manual_seed(a.seed)
    t0 = time.time()
    with Progress(TextColumn(f"eval {a.split} K={a.iw_samples}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=_console()) as bar:
        task = bar.add_task("eval", total=len(data.split(a.split)))
        res = evaluate(model, data, a.split, a.batch_size, seed=run.cfg.seed, iw_samples=a.iw_samples,
                       au_threshold=run.cfg.diagnostics.au_threshold, mi_examples=run.cfg.diagnostics.mi_examples,
                       on_batch=lambda n, _: bar.update(task, completed=n))
    res.update(split=a.split, checkpoint=a.checkpoint, seconds=round(time.time() - t0, 2),
               step=run.folder.load_checkpoint(a.checkpoint)["step"])
    report = run.folder.read_report("eval.json")
    report[f"{a.split}/{a.checkpoint}/K={a.iw_samples}"] = res
    run.folder.write_report("eval.json", report)
    table = Table(title=f"{run.path} · {a.split} split ({res['n']} examples) · {a.checkpoint} checkpoint "
                        f"(step {res['step']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    d = len(res["kl_per_dim"])
    for name, value, unit in [("nll_iw", res["nll_iw"], f"nats/example, K={a.iw_samples}"),
                              ("−elbo", -res["elbo"], "nats/example (K=1 bound)"), ("recon", res["recon"], "nats/example"),
                              ("kl", res["kl"], "nats/example"), ("bpd_iw", res["bpd_iw"], "bits/dim"),
                              ("active_units", res["active_units"], f"of {d} dims"), ("mi", res["mi"], "nats"),
                              ("aggregate_kl", res["aggregate_kl"], "nats")]:
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value), unit)
    _console().print(table)
    print(f"wrote {run.folder.path / 'eval.json'} ({res['seconds']:.1f}s)")
    return 0


def diagnose_run(run, checkpoint: str = "last") -> dict:
    """Verdicts for a run (api.Run); writes diagnosis.json and diagnosis.md into its folder."""
    from vaerun.diagnose import diagnose, to_markdown, z_dependence

    zdep = None
    if run.folder.checkpoint_file(checkpoint).exists():
        zdep = z_dependence(run.model(checkpoint), run.data(), seed=run.cfg.seed)
    report = diagnose(run.metrics, run.config, zdep)
    run.folder.write_report("diagnosis.json", report)
    run.folder.write_report("diagnosis.md", to_markdown(report, str(run.path)))
    return report


def print_diagnosis(report: dict, path) -> None:
    from rich.table import Table

    colors = {"ok": "green", "warning": "yellow", "problem": "red", "unknown": "white"}
    table = Table(title=f"diagnosis of {path}: [{colors[report['overall']]}]{report['overall']}[/] — "
                        f"{report['headline']}", show_lines=True)
    for col in ("check", "status", "verdict and evidence", "next steps"):
        table.add_column(col)
    for v in report["verdicts"]:
        ev = ", ".join(f"{k}={x}" for k, x in v["evidence"].items() if k != "kl_per_dim")
        table.add_row(v["name"], f"[{colors[v['status']]}]{v['status']}[/]", f"{v['verdict']}\n[dim]{ev}\n"
                      f"{v['explanation']}[/]", "\n".join(f"vaerun train {s}" for s in v["next_steps"]))
    _console().print(table)


def diagnose_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vaerun diagnose", description="Verdicts on posterior collapse, a lagging "
                                "encoder, early KL vanishing, reconstruction/KL imbalance, optimization trouble "
                                "and likelihood/data mismatch, with evidence and next steps. Writes "
                                "diagnosis.json and diagnosis.md into the run folder.")
    p.add_argument("run", help="a run folder")
    p.add_argument("--checkpoint", choices=["best", "last"], default="last")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    a = p.parse_args(argv)
    run = _open(a.run, a.device)
    report = diagnose_run(run, a.checkpoint)
    print_diagnosis(report, run.path)
    print(f"wrote {run.folder.path / 'diagnosis.json'} and diagnosis.md")
    return 0 if report["overall"] != "unknown" else 1


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
    a = p.parse_args(argv)
    import csv
    import json

    from vaerun import report
    from vaerun.errors import VaerunError

    runs = report.load(a.paths)
    if not runs:
        raise VaerunError(f"no run folders (with a summary.json) under {', '.join(a.paths)}.\n"
                          f"  fix: pass a run folder, a sweep folder or a parent such as outputs/")
    table = report.sort_rows(report.rows(runs, not a.no_aggregate), a.sort)
    keys = report.differing_keys(runs)
    if a.format == "json":
        print(json.dumps(table, indent=2, default=str))
    elif a.format == "csv":
        cols = sorted({k for r in table for k in r if k != "paths"})
        w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    else:
        from rich.table import Table

        cols, cells = report.table_cells(table, keys)
        t = Table(title=f"{len(runs)} runs · differing keys: {', '.join(keys) or 'none'}")
        for c in cols:
            t.add_column(c, justify="right" if c in report.METRICS or c in ("runs", "wall_time_s") else "left")
        colors = {"completed": "green", "failed": "red", "interrupted": "yellow", "incomplete": "yellow"}
        for row, c in zip(table, cells):
            t.add_row(*c, style=None if row["status"] == "completed" else colors.get(row["status"].split("/")[0]))
        _console().print(t)
    if not a.no_report:
        out = __import__("pathlib").Path(a.out) if a.out else report.common_parent(a.paths)
        html_path, md_path = report.write_reports(runs, table, out)
        print(f"wrote {html_path} and {md_path}", file=sys.stderr if a.format != "table" else sys.stdout)
    return 0
