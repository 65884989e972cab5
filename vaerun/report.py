"""`vaerun compare`: one report across run folders (read through runs.py).

Rows are runs, or configurations with their seeds aggregated (mean ± std). Columns: the config keys
that differ between runs, then status, validation metrics and wall time. Failed, interrupted and
incomplete runs show as such (with their last validation record, if any) and never break the report.
"""
from __future__ import annotations

import base64
import html
import math
import os
import statistics
from pathlib import Path
from typing import Optional

from vaerun.runs import find_runs

METRICS = ("elbo", "recon", "kl", "active_units", "mi", "nll_iw")
OPTIONAL_METRICS = ("bpd", "mig", "test_nll_iw")  # shown when some run has it (bpd: a code length, see
#   honest_bpd; mig: datasets with ground-truth factors; test_nll_iw: `vaerun eval` on the test split, best checkpoint)
IGNORED_KEYS = {"out_dir", "resume", "progress", "device", "tensorboard"}
HIGHER_IS_BETTER = {"elbo", "active_units", "mi"}


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested config -> {'dotted.key': value}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load(paths: list[str]) -> list[dict]:
    """One record per run: path, flat config, summary, metrics and the last validation record."""
    runs = []
    for folder in find_runs(paths):
        summary, records = folder.read_summary(), folder.read_metrics()
        try:
            config = flatten(folder.read_config())
        except Exception:  # a folder whose config is missing or unreadable still shows up
            config = {}
        vals = [r for r in records if r.get("split") == "val"]
        final = summary.get("final_val") or (vals[-1] if vals else None)
        status = summary.get("status", "unknown")
        if status == "running" and summary.get("ended") is None:
            status = "incomplete"  # killed, or still training
        try:
            test = test_evaluation(folder.read_report("eval.json"))
        except ValueError:  # a truncated eval.json: the run still shows, without it
            test = None
        if final is not None:
            audit = next((r for r in records if r.get("split") == "audit"), {})
            final = honest_bpd(final, config.get("likelihood.name"), audit.get("binary"))
        if test and final:  # the honest number of the run, beside the validation ones
            final = {**final, "test_nll_iw": test["nll_iw"], "test_K": test["iw_samples"]}
        runs.append({"path": str(folder.path), "config": config, "summary": summary, "records": records,
                     "final": final, "status": status, "stopped": summary.get("stopped_early"),
                     "samples": [str(p) for p in folder.grids("samples")[-1:]],
                     "pictures": {k: str(p) for k, p in folder.pictures().items()}})
    return runs


def honest_bpd(final: dict, likelihood: Optional[str], binary: Optional[bool] = None) -> dict:
    """A validation record whose ``bpd`` is a code length, or without one. Records written before
    densities' bits/dim were their bins' mass carry the density's figure + 8 as ``bpd`` (no
    ``bpd_density`` beside it), and a Bernoulli on grey levels (``binary`` False, as the step-0
    audit found the data) has none: its figure is a cross-entropy (``bpd_xent`` since)."""
    from vaerun.likelihoods import LIKELIHOODS

    density = getattr(LIKELIHOODS.get(likelihood), "continuous", False)
    xent = "bpd_xent" in final or (likelihood == "bernoulli" and binary is False)
    if "bpd" in final and (density and "bpd_density" not in final or xent):
        final = {k: v for k, v in final.items() if k != "bpd"}
    return final


def test_evaluation(report: dict) -> Optional[dict]:
    """The `vaerun eval` entry a comparison shows: the whole test split, best checkpoint, the most
    importance samples evaluated (None when the run has none)."""
    entries = [v for k, v in report.items() if k.startswith("test/best/") and isinstance(v, dict) and "nll_iw" in v]
    return max(entries, key=lambda v: v.get("iw_samples", 0), default=None)


def differing_keys(runs: list[dict]) -> list[str]:
    keys = sorted({k for r in runs for k in r["config"]} - IGNORED_KEYS)
    return [k for k in keys if len({repr(r["config"].get(k)) for r in runs}) > 1]


MAX_KEY_COLUMNS = 6  # more differing keys than this make an unreadable terminal table
SWEPT_FIRST = ("beta", "free_bits", "seed", "model.name", "likelihood.name", "schedule.name", "optimizer.name",
               "optimizer.lr", "batch_size", "model.latent_dim", "dataset.name")


def _unknown(problem: str, name: str, known, fix: str):
    """Raises the error for a name the runs do not have (``--keys``, ``--sort``), with the closest
    known ones."""
    import difflib

    from vaerun.errors import VaerunError

    close = difflib.get_close_matches(name, sorted(known), n=3)
    raise VaerunError(problem + (f" (did you mean {', '.join(close)}?)" if close else "") + f".\n  fix: {fix}")


def column_keys(runs: list[dict], chosen: Optional[list[str]] = None, skip: tuple[str, ...] = ()) -> list[str]:
    """The config keys shown as table columns and plot labels. ``chosen`` (``--keys``): those, each
    a config key of some run. Otherwise the differing keys but ``skip`` (``seed`` when seeds are
    aggregated), at most MAX_KEY_COLUMNS of them: the usual sweep axes first, then those with the
    most distinct values."""
    if chosen:
        known = {k for r in runs for k in r["config"]}
        for k in chosen:
            if k not in known:
                _unknown(f"--keys {k}: no run has this config key", k, known,
                         "use dotted config keys, e.g. --keys beta,model.name,optimizer.lr")
        return list(chosen)
    keys = [k for k in differing_keys(runs) if k not in skip]
    if len(keys) <= MAX_KEY_COLUMNS:
        return keys
    distinct = {k: len({repr(r["config"].get(k)) for r in runs}) for k in keys}
    first = {k: i for i, k in enumerate(SWEPT_FIRST)}
    return sorted(keys, key=lambda k: (first.get(k, len(first)), -distinct[k], k))[:MAX_KEY_COLUMNS]


def _label(run: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={run['config'].get(k)}" for k in keys) or Path(run["path"]).name


def rows(runs: list[dict], aggregate_seeds: bool = True, columns: tuple[str, ...] = ()) -> list[dict]:
    """Table rows. With several seeds of one configuration, numbers are mean ± std over them.
    ``columns``: config keys every row also carries (``--keys``; a row whose runs differ in one
    shows their values as ``a/b``)."""
    keys = differing_keys(runs)
    group_keys = [k for k in keys if k != "seed"] if aggregate_seeds and "seed" in keys else keys
    groups: dict[str, list[dict]] = {}
    for r in runs:  # without aggregation every run is its own row, even with identical configs
        label = _label(r, group_keys)
        groups.setdefault(label if aggregate_seeds else f"{label} ({r['path']})", []).append(r)
    out = []
    for label, members in groups.items():
        row = {"label": label, **{k: members[0]["config"].get(k) for k in group_keys}, "runs": len(members),
               "paths": [m["path"] for m in members]}
        for k in columns:
            vals = list(dict.fromkeys(str(m["config"].get(k)) for m in members))
            row.setdefault(k, vals[0] if len(vals) == 1 else "/".join(vals))
        statuses = sorted({m["status"] for m in members})
        row["status"] = statuses[0] if len(statuses) == 1 else "/".join(statuses)
        stops = [f"{s.get('reason', 'early_stop')} at {s['step']}" for s in (m.get("stopped") for m in members) if s]
        row["stopped"] = "; ".join(dict.fromkeys(stops)) or None  # ended before its length, by what and where
        for m in (*METRICS, *OPTIONAL_METRICS):
            vals = [float(x["final"][m]) for x in members if x["final"] and isinstance(x["final"].get(m), (int, float))]
            row[m] = statistics.fmean(vals) if vals else None
            if len(vals) > 1:
                row[f"{m}_std"] = statistics.stdev(vals)
        ks = [x["final"]["test_K"] for x in members if x["final"] and x["final"].get("test_K")]
        if ks:
            row["test_K"] = min(ks)
        iw = [x["final"] for x in members if x["final"] and x["final"].get("iw_n") and x["final"].get("n")]
        if iw:  # how many images nll_iw covers (training: the first iw_examples of the split) ...
            row["iw_n"], row["n"] = min(f["iw_n"] for f in iw), min(f["n"] for f in iw)
        bounds = [float(f["iw_elbo"]) for f in iw if isinstance(f.get("iw_elbo"), (int, float))]
        if bounds:  # ... and its own bound there: the ELBO of those images (runs since 2026-11-28)
            row["iw_elbo"] = statistics.fmean(bounds)
        mis = [x["final"] for x in members if x["final"] and x["final"].get("mi_n")]
        if mis:  # how many examples the MI came from, and its noise (records since the honest-numbers pass)
            row["mi_n"], row["mi_noise"] = min(f["mi_n"] for f in mis), max(f.get("mi_noise") or 0 for f in mis)
        walls = [x["summary"].get("wall_time_s") for x in members if x["summary"].get("wall_time_s") is not None]
        row["wall_time_s"] = statistics.fmean(walls) if walls else None
        row["diagnosis"] = " / ".join(dict.fromkeys(d for d in (_diagnosis(m["summary"]) for m in members) if d)) or None
        row["beta"] = members[0]["config"].get("beta")
        row["error"] = next((x["summary"].get("error") for x in members if x["summary"].get("error")), None)
        out.append(row)
    return out


def iw_note(table: list[dict]) -> Optional[str]:
    """A note for under the table when some row's nll_iw covers only part of the split (training
    computes it on the first diagnostics.iw_examples images); None when every one covers it all."""
    subset = [r for r in table if r.get("nll_iw") is not None and r.get("iw_n", 0) < r.get("n", 0)]
    if not subset:
        return None
    return (f"nll_iw: on the first {min(r['iw_n'] for r in subset)} validation images (diagnostics.iw_examples), "
            "so its bound is −iw_elbo of those images (--format json), not −elbo; vaerun eval RUN computes it "
            "on the whole split")


def mi_note(table: list[dict]) -> Optional[str]:
    """What mi is, when some row has one: an estimate from the first mi_n validation examples,
    whose ceiling is log mi_n (a healthy code reads near it) and whose noise is mi_noise."""
    have = [r for r in table if r.get("mi") is not None and r.get("mi_n")]
    if not have:
        return None
    ns = sorted({int(r["mi_n"]) for r in have})
    return ("mi: from the first " + "/".join(map(str, ns)) + " validation examples (diagnostics.mi_examples): its "
            "ceiling is log N = " + "/".join(f"{math.log(n):.2f}" for n in ns) + " nats, so values near it are "
            "saturated, not equal; its noise is about ±" + f"{max(r.get('mi_noise') or 0 for r in have):.2f}")


def _measures(run: dict) -> tuple[tuple, str, str]:
    """What a run's elbo, recon and nll_iw are nats of: its data (dataset, binarization, shape) and
    its likelihood's kind, with the likelihood as the note names it. The kind is a density, a
    probability (of binary pixels, or of 256 levels) or a cross-entropy (Bernoulli on grey levels;
    binary or not as the step-0 audit found the data)."""
    c = run["config"]
    binarize = c.get("dataset.binarize") or "none"
    data = (c.get("dataset.name"), binarize, "x".join(map(str, run["summary"].get("data_shape") or [])))
    from vaerun.likelihoods import LIKELIHOODS

    lik = c.get("likelihood.name")
    audit = next((r for r in run["records"] if r.get("split") == "audit"), {})
    binary = audit.get("binary", binarize != "none")
    if getattr(LIKELIHOODS.get(lik), "continuous", False):  # a density on [0, 1], as bits/dim treats it
        return data, "densities", lik
    if lik != "bernoulli":
        return data, "probabilities", lik
    return data, "probabilities" if binary else "cross-entropies", f"bernoulli on {'binary data' if binary else 'grey levels'}"


def units_note(runs: list[dict]) -> Optional[str]:
    """A note for under the table when the runs' nats are not on one scale: different data, or
    likelihoods of different kinds (a density's nats against a probability's, or a cross-entropy's);
    None when every run measures the same thing."""
    measures = [_measures(r) for r in runs]
    data = list(dict.fromkeys(m[0] for m in measures))
    kinds: dict[str, list[str]] = {}
    for _, kind, lik in measures:
        if lik not in kinds.setdefault(kind, []):
            kinds[kind].append(lik)
    if len(data) == 1 and len(kinds) == 1:
        return None
    mixed = []
    if len(data) > 1:
        shapes = len({d[2] for d in data}) > 1
        mixed.append("data (" + "; ".join(name + (f" binarize={b}" if b != "none" else "") + (f" {shape}" if shapes else "")
                                          for name, b, shape in data) + ")")
    if len(kinds) > 1:
        mixed.append("likelihood kinds (" + "; ".join(f"{k}: {', '.join(v)}" for k, v in kinds.items()) + ")")
    return ("elbo, recon and nll_iw compare only between runs on the same data under the same kind of likelihood; "
            f"these runs mix {' and '.join(mixed)}" +
            ("; bpd is a code length for each run that has one (a density's: the mass of each 8-bit level's bin), "
             "so on the same data it compares across likelihoods" if len(data) == 1 else ""))


def test_note(table: list[dict]) -> Optional[str]:
    """What test_nll_iw is, when some row has it; and which rows lack it."""
    have = [r for r in table if r.get("test_nll_iw") is not None]
    if not have:
        return None
    ks = sorted({r["test_K"] for r in have if r.get("test_K")})
    missing = len(table) - len(have)
    return (f"test_nll_iw: vaerun eval on the whole test split, best checkpoint, K = {'/'.join(map(str, ks))}"
            + (f"; {missing} row{'s' if missing > 1 else ''} without it (vaerun eval RUN --split test)"
               if missing else ""))


def table_notes(runs: list[dict], table: list[dict]) -> list[str]:
    """The notes under a comparison table: units, nll_iw's subset, the test evaluation (each when
    it applies)."""
    return [n for n in (units_note(runs), iw_note(table), mi_note(table), test_note(table)) if n]


def _diagnosis(summary: dict) -> Optional[str]:
    """``ok``, or the overall status with the checks that set it: ``problem (posterior_collapse)``."""
    d = summary.get("diagnosis") or {}
    if not d.get("overall"):
        return None
    worst = [k for k, v in (d.get("checks") or {}).items() if v == d["overall"] and v != "ok"]
    return d["overall"] + (f" ({', '.join(worst)})" if worst else "")


def sort_rows(table: list[dict], key: Optional[str]) -> list[dict]:
    """``key`` or ``-key`` (descending); missing values last."""
    if not key:
        return table
    desc, key = key.startswith("-"), key.lstrip("-")
    columns = sorted({k for r in table for k in r if k not in ("paths", "label", "error")})
    if table and key not in columns:
        _unknown(f"--sort {key}: no such column", key, columns,
                 f"sort by one of {', '.join(columns)}; prefix - for descending, e.g. --sort=-elbo")
    present = [r for r in table if r.get(key) is not None]
    missing = [r for r in table if r.get(key) is None]
    try:
        present.sort(key=lambda r: r[key], reverse=desc)
    except TypeError:
        present.sort(key=lambda r: str(r[key]), reverse=desc)
    return present + missing


def fmt(row: dict, m: str) -> str:
    v = row.get(m)
    if v is None:
        return "—"
    if m == "active_units" and float(v).is_integer() and f"{m}_std" not in row:
        s = str(int(v))
    else:
        s = f"{v:.3f}" if isinstance(v, float) else str(v)
    return s + (f" ± {row[f'{m}_std']:.3f}" if f"{m}_std" in row else "")


def table_cells(table: list[dict], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted cells: the differing config keys, then status, metrics and the
    diagnosis (overall status and the checks that set it)."""
    row_keys = [k for k in keys if table and k in table[0]]
    metrics = [*METRICS, *[m for m in OPTIONAL_METRICS if any(r.get(m) is not None for r in table)]]
    cols = [*(row_keys or ["run"]), "runs", "status", *metrics, "wall_time_s", "diagnosis"]
    cells = [[*([str(r.get(k)) for k in row_keys] or [r["label"]]), str(r["runs"]),
              r["status"] + (f" ({r['stopped']})" if r.get("stopped") else ""),
              *[fmt(r, m) for m in metrics], fmt(r, "wall_time_s"), fmt(r, "diagnosis")] for r in table]
    return cols, cells


# ---------------------------------------------------------------- figures
def _tight(fig) -> None:
    """tight_layout where it fits; with many runs' long labels it cannot, and the PNG is saved with
    bbox_inches="tight" anyway, so matplotlib's warning about it is only noise."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def rate_distortion(runs: list[dict], keys: list[str]):
    """KL (rate) against recon (distortion), one point per run, with lines of equal ELBO: labelled by
    β in a β sweep, else numbered, with the differing config keys of each number in a legend."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    pts = [(r["final"]["kl"], r["final"]["recon"], r) for r in runs if r["final"]]
    if pts:
        totals = [k + c for k, c, _ in pts]
        lo, hi = min(totals), max(totals)
        xs = [0, max(k for k, _, _ in pts) * 1.15 + 1]
        for level in [lo + (hi - lo) * f for f in (0, 0.5, 1)] if hi > lo else [lo]:
            ax.plot(xs, [level - x for x in xs], ls=":", lw=0.8, color="grey")
            ax.annotate(f"−ELBO={level:.1f}", (xs[0], level), fontsize=7, color="grey")
        by_beta = not keys or list(keys) == ["beta"]  # a β sweep: β beside each point; else numbers and a legend
        for i, (k, c, r) in enumerate(pts, 1):
            failed = " (failed)" if r["status"] == "failed" else ""
            ax.scatter(k, c, s=30, label=None if by_beta else f"{i}: {_label(r, keys)}{failed}")
            ax.annotate(f"β={r['config'].get('beta')}{failed}" if by_beta else str(i), (k, c),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        if not by_beta:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    ax.set_xlabel("rate: KL [nats]")
    ax.set_ylabel("distortion: recon [nats]")
    ax.set_title("rate–distortion (validation, final)", fontsize=10)
    ax.grid(alpha=0.3)
    _tight(fig)
    return fig


def beta_curve(run: dict) -> tuple[list[int], list[float]]:
    """β at every step of the run (step s trains at schedule(s − 1)), from its config and its
    length, so a short or cyclical schedule is drawn whole rather than at the logged steps; the
    logged β of the train records when the config does not say (a folder without config.yaml). An
    unfinished run's curve, or one that early_stop or collapse_stop ended, ends at its last record;
    the schedule still spans the planned run."""
    from vaerun.schedules import build_schedule

    c, total = run["config"], run["summary"].get("total_steps")
    end = total
    if run["status"] != "completed" or run.get("stopped"):  # only as far as it got
        end = max((x["step"] for x in run["records"] if isinstance(x.get("step"), int)), default=total)
    try:  # the run's own resolved values, every one: no second copy of the config's defaults here
        sched = build_schedule(c["schedule.name"], beta=c["beta"], beta_start=c["schedule.beta_start"],
                               warmup_steps=c["schedule.warmup_steps"], delay_steps=c["schedule.delay_steps"],
                               cycles=c["schedule.cycles"], ratio=c["schedule.ratio"], total_steps=int(total))
    except (KeyError, TypeError, ValueError):
        train = [x for x in run["records"] if x.get("split") == "train"]
        return [x["step"] for x in train], [x["beta"] for x in train]
    every = max(1, int(end) // 2000)  # at most ~2,000 points; cycles stay sharp
    steps = list(range(1, int(end) + 1, every))
    return steps, [sched(s - 1) for s in steps]


def curves(runs: list[dict], keys: list[str]):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for r in runs:
        vals = [x for x in r["records"] if x.get("split") == "val"]
        label = _label(r, keys)
        axes[0].plot([x["step"] for x in vals], [x["recon"] for x in vals], marker=".", label=label)
        axes[1].plot([x["step"] for x in vals], [x["kl"] for x in vals], marker=".", label=label)
        axes[2].plot(*beta_curve(r), label=label)
    from vaerun.plots import style_axes

    style_axes(axes, ("validation recon [nats]", "validation KL [nats]", "β"))
    axes[0].legend(fontsize=7)
    _tight(fig)
    return fig


def kl_heatmap(runs: list[dict], keys: list[str]):
    plt = _plt()
    done = [r for r in runs if r["final"]]
    width = max((len(r["final"]["kl_per_dim"]) for r in done), default=1)
    grid = [[*r["final"]["kl_per_dim"], *[math.nan] * (width - len(r["final"]["kl_per_dim"]))] for r in done]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * width + 3), 0.45 * max(len(done), 1) + 1.5))
    im = ax.imshow(grid or [[math.nan]], aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(done)), [_label(r, keys) for r in done], fontsize=7)
    ax.set_xlabel("latent dimension")
    ax.set_title("KL per dimension [nats] (validation, final)", fontsize=10)
    fig.colorbar(im, ax=ax)
    _tight(fig)
    return fig


# ---------------------------------------------------------------- writers
def write_reports(runs: list[dict], table: list[dict], out: Path, keys: Optional[list[str]] = None
                  ) -> tuple[Path, Path]:
    """report.md (+ PNGs in report_files/) and a self-contained report.html (images inlined).
    ``keys``: the config keys for columns and labels (:func:`column_keys`); the config
    differences section lists every differing key."""
    plt = _plt()
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    every = differing_keys(runs)
    keys = column_keys(runs) if keys is None else keys
    labels = [*keys, *(["seed"] if "seed" in every and "seed" not in keys else [])]  # one plot line per run
    figs = {"rate_distortion.png": rate_distortion(runs, labels), "curves.png": curves(runs, labels),
            "kl_per_dim.png": kl_heatmap(runs, labels)}
    for name, fig in figs.items():
        fig.savefig(files / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
    samples, pics = [], {"traverse": [], "latents": []}
    for i, r in enumerate(runs):
        if r["samples"]:
            dst = files / f"samples_{i}.png"
            dst.write_bytes(Path(r["samples"][0]).read_bytes())
            samples.append((_label(r, labels), dst))
        for kind, found in pics.items():
            if kind in r.get("pictures", {}):
                dst = files / f"{kind}_{i}.png"
                dst.write_bytes(Path(r["pictures"][kind]).read_bytes())
                found.append((_label(r, labels), dst))
    titles = {"traverse": "Latent traversals", "latents": "Latent maps"}
    cols, cells = table_cells(table, keys)
    diffs = [(r["path"], {k: r["config"].get(k) for k in every}) for r in runs]
    md = ["# vaerun compare", "", f"{len(runs)} runs; config keys that differ: {', '.join(every) or 'none'}.", "",
          "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    md += ["| " + " | ".join(c) + " |" for c in cells]
    notes = table_notes(runs, table)
    md += ["", *notes] if notes else []
    md += ["", "## Rate–distortion", "", "![rate-distortion](report_files/rate_distortion.png)", "",
           "## Curves", "", "![curves](report_files/curves.png)", "", "## KL per dimension", "",
           "![kl per dim](report_files/kl_per_dim.png)", "", "## Samples", ""]
    md += [f"**{lab}**  \n![samples]({p.relative_to(out)})" for lab, p in samples]
    for kind, found in pics.items():
        if found:
            md += ["", f"## {titles[kind]}", ""] + [f"**{lab}**  \n![{kind}]({p.relative_to(out)})" for lab, p in found]
    md += ["", "## Config differences", ""] + [f"- `{p}`: {d}" for p, d in diffs]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")

    def img(path: Path, alt: str) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    rows_html = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in c_) + "</tr>" for c_ in cells)
    body = [f"<h1>vaerun compare</h1><p>{len(runs)} runs; config keys that differ: {html.escape(', '.join(every))}</p>",
            "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + f"</tr>{rows_html}</table>" + "".join(f"<p>{html.escape(n)}</p>" for n in notes),
            "<h2>Rate–distortion</h2>", img(files / "rate_distortion.png", "rate-distortion"),
            "<h2>Curves</h2>", img(files / "curves.png", "curves"),
            "<h2>KL per dimension</h2>", img(files / "kl_per_dim.png", "kl per dim"), "<h2>Samples</h2>",
            "<div class=grid>" + "".join(f"<figure>{img(p, 'samples')}<figcaption>{html.escape(lab)}</figcaption>"
                                         f"</figure>" for lab, p in samples) + "</div>",
            *[f"<h2>{titles[kind]}</h2><div class=grid>" + "".join(
                f"<figure>{img(p, kind)}<figcaption>{html.escape(lab)}</figcaption></figure>" for lab, p in found)
              + "</div>" for kind, found in pics.items() if found],
            "<h2>Config differences</h2><ul>" + "".join(f"<li><code>{html.escape(p)}</code>: {html.escape(str(d))}</li>"
                                                      for p, d in diffs) + "</ul>"]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>vaerun compare</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:3px 8px;font-size:13px}img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:12px}"
            "figure{margin:0}figcaption{font-size:12px}</style></head><body>" + "".join(body) + "</body></html>")
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path, md_path


def common_parent(paths: list[str]) -> Path:
    return Path(os.path.commonpath([str(Path(p).resolve()) for p in paths]))
