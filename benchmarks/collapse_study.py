"""Runs the five posterior-collapse presets and writes the study table.

    python3 benchmarks/collapse_study.py DATA_ROOT OUT_DIR [extra overrides...]
    PRESETS=ar_beta1 python3 benchmarks/collapse_study.py ...   # rerun some presets; the other rows are kept

For each preset: final validation ELBO, KL (total, and min/median/max per dim), the number of
latent dims above 0.01 nats, active units, and the "decoder ignores z" shuffle test from the run's
diagnosis; plus wall time. Writes OUT_DIR/collapse_study.json and .md, OUT_DIR/kl_curves.png
(validation KL over training, one line per preset), and copies each run's last sample grid and
latent map to OUT_DIR/<preset>_samples.png and OUT_DIR/<preset>_latents.png, the grids also side
by side in OUT_DIR/samples.png. README's figures: docs/images/collapse_study_kl.png (kl_curves.png),
collapse_study_samples.png (samples.png), collapse_ar_<preset>_latents.png.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vaerun.runs import RunFolder

PRESETS = ["ar_beta1", "ar_warmup", "ar_freebits", "ar_cyclical", "ar_weak"]


def kl_figure(curves: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation KL (nats, β = 1)")
    ax.set_title("posterior collapse: validation KL per preset")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def samples_figure(out: Path):
    """The presets' last prior-sample grids side by side, each titled by its preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in PRESETS if (out / f"{n}_samples.png").exists()]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.9), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.imshow(plt.imread(out / f"{name}_samples.png"), cmap="gray", interpolation="nearest")
        ax.set_title(name, fontsize=10, loc="left")
        ax.axis("off")
    fig.tight_layout()
    return fig


def main() -> int:
    root, out, extra = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    only = [p for p in os.environ.get("PRESETS", "").split(",") if p]
    old = {}
    if only and (out / "collapse_study.json").exists():
        old = {r["preset"]: r for r in json.loads((out / "collapse_study.json").read_text())}
    rows, curves = [], {}
    for name in PRESETS:
        if only and name not in only:
            if name in old:
                rows.append(old[name])
                run = next((out / "runs" / name).rglob("summary.json")).parent
                curves[name] = [(r["step"], r["kl"]) for r in RunFolder(run).read_metrics("val")]
            continue
        shutil.rmtree(out / "runs" / name, ignore_errors=True)
        t = time.time()
        proc = subprocess.run([sys.executable, "-m", "vaerun.cli", "train", f"experiment=collapse/{name}",
                               f"dataset.root={root}", f"out_dir={out}/runs/{name}", "progress=log", *extra],
                              capture_output=True, text=True)
        print(proc.stdout[-600:], proc.stderr[-1500:] if proc.returncode else "")
        run = next((out / "runs" / name).rglob("summary.json")).parent
        s = json.loads((run / "summary.json").read_text())
        v = s.get("final_val") or {}
        kl = v.get("kl_per_dim", [float("nan")])
        diag = json.loads((run / "diagnosis.json").read_text()) if (run / "diagnosis.json").exists() else {}
        collapse = next((c for c in diag.get("verdicts", []) if c["name"] == "posterior_collapse"), {})
        rows.append({"preset": name, "status": s["status"], "elbo": v.get("elbo"), "recon": v.get("recon"),
                     "kl": v.get("kl"), "kl_dim_min": min(kl), "kl_dim_median": statistics.median(kl),
                     "kl_dim_max": max(kl), "dims_above_0.01": sum(k > 0.01 for k in kl),
                     "active_units": v.get("active_units"), "latent_dim": len(kl), "nll_iw": v.get("nll_iw"),
                     "shuffle_penalty": collapse.get("evidence", {}).get("shuffle_penalty"),
                     "verdict": collapse.get("verdict"), "wall_time_s": round(time.time() - t, 1),
                     "device": s.get("device")})
        grids = sorted((run / "samples").glob("step_*.png"))
        if grids:
            shutil.copy(grids[-1], out / f"{name}_samples.png")
        if (run / "pictures" / "latents.png").exists():
            shutil.copy(run / "pictures" / "latents.png", out / f"{name}_latents.png")
        curves[name] = [(r["step"], r["kl"]) for r in RunFolder(run).read_metrics("val")]
        print(json.dumps(rows[-1]))
    (out / "collapse_study.json").write_text(json.dumps(rows, indent=2))
    kl_figure(curves).savefig(out / "kl_curves.png", dpi=110, bbox_inches="tight")
    samples_figure(out).savefig(out / "samples.png", dpi=110, bbox_inches="tight")
    cols = ["preset", "elbo", "recon", "kl", "kl_dim_min", "kl_dim_median", "kl_dim_max", "dims_above_0.01",
            "active_units", "nll_iw", "shuffle_penalty", "wall_time_s"]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
    md = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    md += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    (out / "collapse_study.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
