"""docs/results.md from real run folders: the literature reproductions beside the published
numbers, the β sweep's rate–distortion plot and MIG, and Fashion-MNIST samples per likelihood.
Every number and picture on the page is read from a run folder (summary.json, eval.json,
config.yaml, .hydra/overrides.yaml, samples/, recon/); nothing is typed by hand.

    python benchmarks/results_page.py RUN_OR_PARENT... [--out docs/results.md]

Runs are sorted by the ``experiment=`` preset they were started with:
- reproductions (the presets in PUBLISHED): evaluated on the test split with
  ``vaerun eval RUN --iw-samples K --split test``; the largest K evaluated is reported;
- ``shapes_beta_sweep`` (``vaerun train -m experiment=shapes_beta_sweep``): one point per β;
- ``fashion_mnist_conv_gaussian``, with or without a ``likelihood=`` override: one column of
  sample and reconstruction grids per likelihood.
Pictures go to ``images/results/`` beside the page. A section none of whose runs are given is
kept from the page as last written (``--fresh``: left out), so one section can be regenerated
alone.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from vaerun.runs import find_runs

SWEEP, LIKELIHOODS = "shapes_beta_sweep", "fashion_mnist_conv_gaussian"
PUBLISHED = {
    "mnist_vae_burda": (86.76, "Burda et al. 2015 (IWAE), Table 1: VAE, k = 1, dynamically binarized MNIST, 19 active units"),
    "mnist_vae_burda_short": (86.76, "Burda et al. 2015 (IWAE), Table 1: VAE, k = 1, dynamically binarized MNIST, "
                                     "19 active units, after the paper's 3,280 epochs; this preset trains 328 (the "
                                     "learning-rate column shows how each run shortened the eight stages)"),
    "mnist_vae_examples": (None, "pytorch/examples vae/main.py (prints a BCE on grey levels, not an NLL)"),
    "cifar10_conv": (None, "no published number"),
}


def run_overrides(folder) -> list[str]:
    """The run's command-line overrides that change what was trained: not where the data and
    outputs were, how progress showed, or the experiment (each table names it)."""
    return [o for o in folder.read_overrides()
            if not o.startswith(("out_dir=", "progress=", "dataset.root=", "experiment="))]


def lr_schedule(cfg: dict) -> str:
    """The run's learning-rate schedule in words, from its resolved config.yaml."""
    o = cfg.get("optimizer", {})
    name = o.get("lr_scheduler", "none")
    if name == "burda":  # runs from before lr_stage_growth existed used the paper's growth 3
        return (f"burda: stage i of {o.get('lr_stage_growth', 3.0):g}^i·{o.get('lr_stage_scale', 1.0):g} epochs "
                f"at {o.get('lr', 1e-3):g}·10^(−i/7)")
    return f"{name}, lr {o.get('lr', 1e-3):g}"


def test_entry(folder) -> tuple[int, dict] | None:
    """The test-split evaluation with the largest K in eval.json: (K, result)."""
    entries = [(int(k.rsplit("K=", 1)[1]), v) for k, v in folder.read_report("eval.json").items()
               if k.startswith("test/")]
    return max(entries, key=lambda e: e[0]) if entries else None


def rows(paths: list[str]) -> list[dict]:
    out = []
    for folder in find_runs(paths):
        preset = folder.experiment()
        if preset not in PUBLISHED:
            continue
        summary, ev, cfg = folder.read_summary(), test_entry(folder), folder.read_config()
        published, source = PUBLISHED[preset]
        row = {"preset": preset, "run": str(folder.path), "status": summary.get("status"),
               "lr_schedule": lr_schedule(cfg), "overrides": run_overrides(folder),
               "epochs": round(summary.get("steps", 0) / max(summary.get("steps_per_epoch") or 1, 1), 2),
               "train_wall_min": (summary.get("wall_time_s") or 0) / 60, "device": summary.get("device"),
               "val_elbo": (summary.get("final_val") or {}).get("elbo"), "published": published, "source": source}
        if ev is not None:
            k, res = ev
            row.update(k=k, nll_iw=res["nll_iw"], bpd_iw=res["bpd_iw"], active_units=res["active_units"],
                       latent_dim=len(res["kl_per_dim"]), eval_min=res.get("seconds", 0) / 60,
                       gap=None if published is None else res["nll_iw"] - published)
        out.append(row)
    return sorted(out, key=lambda r: (r["preset"], r["run"]))


def final_val(folder) -> dict:
    """The last validation record (the run's end), or {}."""
    val = folder.read_metrics("val")
    return val[-1] if val else {}


def sweep_rows(paths: list[str]) -> list[dict]:
    """One row per run of the β sweep: rate (KL), distortion (recon) and MIG at the run's end,
    all on the validation split at β = 1 (see README "Metrics")."""
    out = []
    for folder in find_runs(paths):
        if folder.experiment() != SWEEP:
            continue
        v, summary = final_val(folder), folder.read_summary()
        if not v:
            continue
        out.append({"beta": float(folder.read_config()["beta"]), "rate": v["kl"], "distortion": v["recon"],
                    "elbo": v["elbo"], "mig": v.get("mig"), "active_units": v["active_units"],
                    "latent_dim": len(v["kl_per_dim"]), "status": summary.get("status"),
                    "train_wall_min": (summary.get("wall_time_s") or 0) / 60, "run": str(folder.path)})
    return sorted(out, key=lambda r: (r["beta"], r["run"]))


def likelihood_rows(paths: list[str]) -> list[dict]:
    """One row per Fashion-MNIST likelihood run: val bits/dim and the last sample/recon grids."""
    out = []
    for folder in find_runs(paths):
        if folder.experiment() != LIKELIHOODS:
            continue
        v, summary, cfg = final_val(folder), folder.read_summary(), folder.read_config()
        samples, recon = folder.grids("samples"), folder.grids("recon")
        if not v or not samples or not recon:
            continue
        lk = cfg["likelihood"]
        out.append({"likelihood": lk["name"], "learn_sigma": lk.get("learn_sigma"), "mixtures": lk.get("mixtures"),
                    "bpd": v.get("bpd"), "bpd_iw": v.get("bpd_iw"), "bpd_density": v.get("bpd_density"),
                    "iw_samples": v.get("iw_samples"),
                    "iw_n": v.get("iw_n"), "elbo": v["elbo"], "kl": v["kl"], "active_units": v["active_units"],
                    "latent_dim": len(v["kl_per_dim"]), "epochs": cfg["epochs"], "status": summary.get("status"),
                    "train_wall_min": (summary.get("wall_time_s") or 0) / 60, "samples": samples[-1],
                    "recon": recon[-1], "run": str(folder.path),
                    "overrides": run_overrides(folder)})
    return sorted(out, key=lambda r: (r["likelihood"], r["run"]))


def rate_distortion_figure(sweep: list[dict]):
    """Rate (KL) against distortion (recon), one point per β, and MIG against β."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot([r["rate"] for r in sweep], [r["distortion"] for r in sweep], "o-")
    for r in sweep:
        a.annotate(f"β={r['beta']:g}", (r["rate"], r["distortion"]), textcoords="offset points", xytext=(5, 4),
                   fontsize=8)
    a.set_xlabel("rate: KL(q(z|x) || p(z)) [nats]")
    a.set_ylabel("distortion: −log p(x|z) [nats]")
    a.set_title("rate–distortion (validation, β = 1 terms)", fontsize=10)
    migs = [r for r in sweep if r["mig"] is not None]
    b.plot([r["beta"] for r in migs], [r["mig"] for r in migs], "o-")
    b.set_xscale("log", base=2)
    b.set_xlabel("β")
    b.set_ylabel("MIG")
    b.set_title("mutual information gap (5 ground-truth factors)", fontsize=10)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_pictures(sweep: list[dict], liks: list[dict], images: Path) -> None:
    """Copies each likelihood run's last grids and draws the sweep's figure into ``images``;
    rows gain the paths (relative to the page) under "samples_png", "recon_png", "figure"."""
    images.mkdir(parents=True, exist_ok=True)
    for r in liks:
        tag = Path(r["run"]).name
        for kind in ("samples", "recon"):
            dest = images / f"fashion_{r['likelihood']}_{tag}_{kind}.png"
            shutil.copyfile(r[kind], dest)
            r[f"{kind}_png"] = f"{images.parent.name}/{images.name}/{dest.name}"
    if sweep:
        fig = rate_distortion_figure(sweep)
        fig.savefig(images / "beta_sweep.png", dpi=110, bbox_inches="tight")
        sweep[0]["figure"] = f"{images.parent.name}/{images.name}/beta_sweep.png"


def sweep_section(sweep: list[dict]) -> list[str]:
    if not sweep:
        return []
    lines = ["", "## β sweep on shapes: rate–distortion and disentanglement", "",
             "`vaerun train -m experiment=shapes_beta_sweep`: one run per β, everything else fixed. Rate is the "
             "KL term and distortion the reconstruction term of the ELBO, both on the validation split at the "
             "run's end and evaluated at β = 1; MIG (Chen et al. 2018) compares the posterior means with the "
             "five ground-truth factors of `shapes` (higher is more disentangled).", ""]
    if "figure" in sweep[0]:
        lines += [f"![rate–distortion and MIG of the β sweep]({sweep[0]['figure']})", ""]
    lines += ["| β | rate (KL) | distortion (recon) | −ELBO | MIG | active units | train time | run |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sweep:
        mig = "—" if r["mig"] is None else f"{r['mig']:.3f}"
        lines.append(f"| {r['beta']:g} | {r['rate']:.2f} | {r['distortion']:.2f} | {-r['elbo']:.2f} | {mig} | "
                     f"{r['active_units']}/{r['latent_dim']} | {r['train_wall_min']:.1f} min | `{r['run']}` |")
    return lines


def likelihood_section(liks: list[dict]) -> list[str]:
    if not liks:
        return []
    lines = ["", "## Likelihoods on Fashion-MNIST: the blur difference", "",
             f"`vaerun train experiment={LIKELIHOODS} dataset.root=../shared/data [likelihood=...]`: the same conv "
             "VAE on 8-bit grey levels with each likelihood (each run's overrides in the table). Bits/dim is a code "
             "length for every row: from the validation ELBO (and from the importance-weighted bound on the first "
             "validation images) with p(x|z) taken as a probability mass of the 256 levels. The discretized "
             "logistic is one; for the Gaussian and the continuous Bernoulli, densities on [0, 1], it is the mass "
             "of each level's bin v/255 ± ½/255 under the density (the edge bins take the tails), so the column "
             "compares across likelihoods. `bpd_density` is a density's own −ELBO/(D ln 2) + 8: a code length "
             "only for uniformly dequantized data, not for these levels, where a density can grow without limit "
             "(most Fashion-MNIST pixels are 0), so it is not comparable with anything (docs/metrics.md). "
             "Sample grids show each likelihood's mean decoded from prior draws; reconstructions pair inputs "
             "(odd rows) with their decoded posterior means (even rows).", "",
             "| likelihood | val bits/dim (ELBO) | val bits/dim (IW) | bpd_density (not a code length) | KL | "
             "active units | epochs | train time | overrides | run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in liks:
        name = r["likelihood"] + (f" (σ {r['learn_sigma']})" if r["likelihood"] == "gaussian" else "") + \
            (f" ({r['mixtures']} component{'s' if r['mixtures'] != 1 else ''})" if r["likelihood"] == "logistic"
             else "")
        iw = "—" if r["bpd_iw"] is None else f"{r['bpd_iw']:.4f} (K={r['iw_samples']}, {r['iw_n']} images)"
        dens = "—" if r["bpd_density"] is None else f"{r['bpd_density']:.4f}"
        lines.append(f"| {name} | {r['bpd']:.4f} | {iw} | {dens} | {r['kl']:.2f} | {r['active_units']}/{r['latent_dim']} | "
                     f"{r['epochs']} | {r['train_wall_min']:.1f} min | `{' '.join(r['overrides'])}` | `{r['run']}` |")
    if all("samples_png" in r for r in liks):
        lines += ["", "| " + " | ".join(r["likelihood"] for r in liks) + " |",
                  "| " + " | ".join("---" for _ in liks) + " |",
                  "| " + " | ".join(f"![samples, {r['likelihood']}]({r['samples_png']})" for r in liks) + " |",
                  "| " + " | ".join(f"![reconstructions, {r['likelihood']}]({r['recon_png']})" for r in liks) + " |"]
    return lines


def page(table: list[dict], sweep: list[dict] = (), liks: list[dict] = ()) -> str:
    fmt = lambda v, f="{:.2f}": "—" if v is None else f.format(v)  # noqa: E731
    lines = ["# Results: vaerun against the literature", "",
             "Generated by `python benchmarks/results_page.py <run folders>` from the run folders themselves "
             "(summary.json, eval.json, metrics.jsonl, config.yaml, .hydra/overrides.yaml, the grids); do not edit "
             "by hand. Test NLL is `vaerun eval RUN --iw-samples K --split test` (importance-weighted, K samples, "
             "nats per image). Times are wall-clock on the machine named in the device column. A section can be "
             "regenerated alone (the others are kept as last written); each names the run folders it was read "
             "from.", "",
             "## Reproductions", "",
             "| preset | test nll_iw | K | published | gap | bits/dim | active units | epochs | learning rate | "
             "train + eval time | device | overrides | run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table:
        t = r["train_wall_min"] + r.get("eval_min", 0)
        lines.append(f"| `{r['preset']}` | {fmt(r.get('nll_iw'))} | {r.get('k', '—')} | {fmt(r['published'])} | "
                     f"{fmt(r.get('gap'), '{:+.2f}')} | {fmt(r.get('bpd_iw'), '{:.4f}')} | "
                     f"{r.get('active_units', '—')}/{r.get('latent_dim', '—')} | {r['epochs']:g} | {r['lr_schedule']} | "
                     f"{t:.1f} min | {r['device']} | {'`' + ' '.join(r['overrides']) + '`' if r['overrides'] else '—'} | "
                     f"`{r['run']}` |")
    lines += ["", "Sources:", ""] + sorted({f"- `{r['preset']}`: {r['source']}" for r in table})
    lines += sweep_section(list(sweep)) + likelihood_section(list(liks)) + [""]
    return "\n".join(lines)


def merged(table: list[dict], sweep: list[dict], liks: list[dict], previous: str) -> str:
    """:func:`page`, with each section whose runs were not given carried from ``previous``."""
    text = page(table, sweep, liks)
    if not previous:
        return text
    out = text.split("\n## ", 1)[0].rstrip("\n").split("\n")
    sections = {"Reproductions": table, "β sweep on shapes: rate–distortion and disentanglement": sweep,
                "Likelihoods on Fashion-MNIST: the blur difference": liks}
    for title, given in sections.items():
        out += carried(text if given else previous, title)
    return "\n".join(out) + "\n"


def carried(previous: str, title: str) -> list[str]:
    """The section ``## title`` of the page as last written (its lines up to the next ``## ``),
    for a section none of whose runs were given: regenerating one section keeps the others."""
    lines = previous.splitlines()
    try:
        start = lines.index(f"## {title}")
    except ValueError:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    while end > start and not lines[end - 1].strip():
        end -= 1
    return ["", *lines[start:end]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "results.md"))
    ap.add_argument("--fresh", action="store_true", help="write only the sections of the given runs (otherwise "
                    "a section none of whose runs are given is kept from the page as last written)")
    a = ap.parse_args()
    table, sweep, liks = rows(a.paths), sweep_rows(a.paths), likelihood_rows(a.paths)
    if not (table or sweep or liks):
        print("results_page: no run started with a reproduction preset, shapes_beta_sweep or "
              f"{LIKELIHOODS} under " + ", ".join(a.paths), file=sys.stderr)
        return 2
    out = Path(a.out)
    write_pictures(sweep, liks, out.parent / "images" / "results")
    previous = out.read_text() if out.exists() and not a.fresh else ""
    out.write_text(merged(table, sweep, liks, previous))
    print(f"wrote {out} ({len(table)} reproductions, {len(sweep)} sweep runs, {len(liks)} likelihood runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
