"""Prior holes: how far each run's aggregate posterior misses the prior, and what that costs its samples.

    python3 benchmarks/prior_study.py DATA_ROOT OUT_DIR [extra overrides for every run...]
    RUNS=mnist_mlp,shapes python3 benchmarks/prior_study.py ...   # rerun some rows; the others are kept

Trains a handful of short runs on shapes, MNIST and Fashion-MNIST (MLP and conv, Bernoulli and
Gaussian, β and latent size varied) and, for each, reads the last validation record's
``aggregate_kl`` (diagonal moment match) and ``aggregate_kl_full`` (full covariance), fits the
Gaussian and the 10-component mixture of `vaerun sample --z` to 10,000 training codes and scores
held-out codes under them (their gain over the prior, nats per code), and judges samples with a
small classifier trained on the dataset's labels (MNIST, Fashion-MNIST: the class; shapes: the
shape): the mean confidence (largest softmax probability) of 2,000 decoded z from the prior, the
Gaussian and the mixture, beside that of reconstructions of validation images (what the decoder
draws where the data is), and the spread of their classes (entropy of the mean class
distribution, so that a sampler cannot score by drawing only its easiest class). A prior hole
shows as prior samples less recognisable than the same decoder's samples from the fitted
densities. Last, whether the prior draws that land where the data's codes are rare (below the
mixture density of 95 % of held-out codes) are the bad ones: their share and confidence.
Writes OUT_DIR/prior_study.json and .md and
OUT_DIR/prior_samples.png (per run: 16 samples from the prior, the Gaussian and the mixture).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

RUNS = {  # name: overrides (each a few minutes or less on 2 CPU cores)
    "shapes": [],
    "shapes_beta0.25": ["beta=0.25"],
    "shapes_beta4": ["beta=4"],
    "mnist_mlp": ["experiment=mnist_vae_examples"],
    "mnist_mlp_beta0.5": ["experiment=mnist_vae_examples", "beta=0.5"],
    "mnist_mlp_d2": ["experiment=mnist_vae_examples", "model.latent_dim=2"],
    "mnist_mlp_d64": ["experiment=mnist_vae_examples", "model.latent_dim=64"],
    "mnist_conv": ["dataset=mnist", "model=conv", "epochs=4"],
    "fashion_mlp_logistic": ["dataset=fashion_mnist", "model=mlp", "likelihood=logistic", "epochs=10"],
    "fashion_conv_gaussian": ["experiment=fashion_mnist_conv_gaussian", "epochs=4"],
}
N_SAMPLES = 2000


class Classifier(torch.nn.Module):
    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.LazyLinear(128), torch.nn.ReLU(), torch.nn.Linear(128, classes))

    def forward(self, x):
        return self.net(x)


def targets(labels: torch.Tensor) -> torch.Tensor:
    return (labels[:, 0] if labels.dim() == 2 else labels).long()  # shapes: factor 0 is the shape


def train_classifier(data, epochs: int = 2, seed: int = 0) -> tuple[Classifier, float]:
    """A small CNN on the training split's grey levels; returns it and its validation accuracy."""
    torch.manual_seed(seed)
    x, y = data.train.images, targets(data.train.labels)
    model = Classifier(x.shape[1], int(y.max()) + 1)
    model(x[:2].float() / 255)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0]).split(128):
            loss = torch.nn.functional.cross_entropy(model(x[idx].float() / 255), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        xv, yv = data.val.images, targets(data.val.labels)
        acc = torch.cat([model(c.float() / 255).argmax(1) for c in xv.split(1000)]).eq(yv).float().mean()
    return model, float(acc)


def scores(probs: torch.Tensor) -> tuple[float, float]:
    """(confidence, spread) of images from their class probabilities (:func:`class_probs`): the
    mean largest class probability (how recognisable each image is) and the entropy in nats of the
    mean class distribution (how many classes they cover: log 10 = 2.30 for ten equally drawn). A sampler that drew only its easiest
    class would gain confidence and lose spread."""
    marginal = probs.mean(0)
    return float(probs.max(1).values.mean()), float(-(marginal * marginal.clamp_min(1e-12).log()).sum())


@torch.no_grad()
def class_probs(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([classifier(c.float().clamp(0, 1)).softmax(1) for c in images.split(1000)])


@torch.no_grad()
def holes(run, mixture, z_prior: torch.Tensor, prior_probs: torch.Tensor) -> dict:
    """Are the prior draws that land where the data's codes are rare the bad samples? The share of
    prior draws whose density under the fitted mixture is below that of 95 % of held-out codes (one
    z ~ q(z|x) per validation image), and the mean confidence of those draws and of the rest."""
    from vaerun.pictures import posterior

    val = posterior(run.model(), run.data(), "val", max_examples=10000, seed=run.cfg.seed)
    gen = torch.Generator().manual_seed(5)
    z_val = val["mu"] + (0.5 * val["logvar"]).exp() * torch.randn(val["mu"].shape, generator=gen)
    rare = mixture.log_prob(z_prior) < torch.quantile(mixture.log_prob(z_val), 0.05)
    confidence = prior_probs.max(1).values
    return {"hole_share": float(rare.float().mean()), "conf_prior_in_holes": float(confidence[rare].mean()),
            "conf_prior_elsewhere": float(confidence[~rare].mean())}


def study_one(name: str, overrides: list[str], root: str, classifiers: dict, extra: list[str] = ()) -> tuple[dict, dict]:
    from vaerun.api import train_run

    tmp = tempfile.mkdtemp(prefix=f"prior_{name}_")
    t = time.time()
    run = train_run(*overrides, f"dataset.root={root}", "tensorboard=false", *extra, out_dir=tmp)
    wall = time.time() - t
    last = [r for r in run.metrics if r.get("split") == "val"][-1]
    data = run.data()
    key = run.config["dataset"]["name"]
    if key not in classifiers:
        classifiers[key] = train_classifier(data)
    classifier, accuracy = classifiers[key]
    row = {"overrides": overrides, "wall_s": round(wall, 1), "elbo": last["elbo"], "kl": last["kl"],
           "active_units": last.get("active_units"), "aggregate_kl": last["aggregate_kl"],
           "aggregate_kl_full": last["aggregate_kl_full"], "classifier_accuracy": round(accuracy, 4),
           "diagnosis": run.summary.get("diagnosis", {}).get("overall")}
    gen = torch.Generator().manual_seed(1)
    model = run.model()
    grids = {}
    mu, _ = model.encode(run.prepare(data.val.images[:N_SAMPLES], gen))
    row["conf_recon"], row["spread_recon"] = scores(class_probs(classifier, model.generate(mu)))
    row["conf_real"], row["spread_real"] = scores(class_probs(classifier, data.val.images[:N_SAMPLES].float() / 255))
    drawn = {}
    for kind in ("prior", "gaussian", "gmm"):
        density, fit = run.latent_density(kind)
        z = density.sample(N_SAMPLES, generator=torch.Generator().manual_seed(2))
        images = model.generate(z)
        probs = class_probs(classifier, images)
        row[f"conf_{kind}"], row[f"spread_{kind}"] = scores(probs)
        if kind != "prior":
            row[f"gain_{kind}"] = fit["gain"]
        drawn[kind] = density, z, probs
        grids[kind] = images[:16].clone()  # not a view: the saved grids would keep all the samples
    row.update(holes(run, drawn["gmm"][0], drawn["prior"][1], drawn["prior"][2]))
    return row, grids


def figure(grids: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(len(grids), 3, figsize=(10.5, 1.22 * len(grids)), squeeze=False)
    for row, (name, g) in zip(axes, grids.items()):
        for ax, kind in zip(row, ("prior", "gaussian", "gmm")):
            img = make_grid(g[kind].float().clamp(0, 1), nrow=8, padding=1, pad_value=1.0)
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(f"{name}: z from {kind}", fontsize=8, loc="left")
            ax.axis("off")
    fig.tight_layout(pad=0.3, h_pad=0.6)
    fig.savefig(path, dpi=110)


def markdown(rows: dict) -> str:
    lines = ["| run | elbo | AU | aggregate_kl | aggregate_kl_full | gain: gaussian | gain: gmm | "
             "confidence: recon | prior | gaussian | gmm | spread: prior | gmm | prior draws in holes | "
             "their confidence | the others' | diagnosis |", "|" + " --- |" * 17]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['elbo']:.2f} | {r['active_units']} | {r['aggregate_kl']:.2f} | "
                     f"{r['aggregate_kl_full']:.2f} | {r['gain_gaussian']:.2f} | {r['gain_gmm']:.2f} | "
                     f"{r['conf_recon']:.3f} | {r['conf_prior']:.3f} | {r['conf_gaussian']:.3f} | {r['conf_gmm']:.3f} | "
                     f"{r['spread_prior']:.2f} | {r['spread_gmm']:.2f} | {r['hole_share']:.0%} | "
                     f"{r['conf_prior_in_holes']:.3f} | {r['conf_prior_elsewhere']:.3f} | {r['diagnosis']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    root, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    path = out / "prior_study.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    chosen = os.environ.get("RUNS", "").split(",") if os.environ.get("RUNS") else list(RUNS)
    classifiers = {}
    grids = torch.load(out / "prior_grids.pt") if (out / "prior_grids.pt").exists() else {}
    for name in chosen:
        rows[name], grids[name] = study_one(name, RUNS[name], root, classifiers, sys.argv[3:])
        print(json.dumps({name: rows[name]}), flush=True)
        path.write_text(json.dumps(rows, indent=1))
        torch.save(grids, out / "prior_grids.pt")
    (out / "prior_study.md").write_text(markdown({k: rows[k] for k in RUNS if k in rows}))
    figure(grids, out / "prior_samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
