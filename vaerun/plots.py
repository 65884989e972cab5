"""Figures drawn from metrics records (matplotlib, headless)."""
from __future__ import annotations


def style_axes(axes, titles) -> None:
    """One title per axis, `step` on x, a light grid: shared by every curves figure."""
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)


def curves_figure(records: list[dict]):
    """recon, KL and β against step: train records as thin lines, validation as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key in zip(axes, ("recon", "kl", "beta")):
        ax.plot([r["step"] for r in train], [r[key] for r in train], lw=1, label="train")
        if key != "beta" and val:
            ax.plot([r["step"] for r in val], [r[key] for r in val], "o-", ms=3, label="val")
    style_axes(axes, ("reconstruction −log p(x|z) [nats]", "KL(q(z|x) || p(z)) [nats]", "β"))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
