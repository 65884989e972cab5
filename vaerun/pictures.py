"""Looking inside a trained VAE: prior samples, latent traversals, interpolations, latent maps.

Each function takes a model and tensors (never the config) and returns a :class:`Grid` of images
or a matplotlib figure; the run-folder module writes them (``RunFolder.save_picture``) and
`vaerun sample|traverse|interpolate|latents` are thin front ends (vaerun/commands.py). Images are
decoded with ``VAE.generate``: the likelihood's mean for the MLP and conv decoders, a pixel-by-pixel
sample for the autoregressive decoder (whose "mean image" does not exist without teacher forcing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from vaerun.data import Data
from vaerun.models import VAE
from vaerun.objectives import gaussian_kl


@dataclass
class Grid:
    """A rows × cols table of images, with a label per row (may be empty)."""

    images: torch.Tensor                      # (rows, cols, C, H, W) in [0, 1]
    title: str = ""
    row_labels: list[str] = field(default_factory=list)
    note: str = ""                            # one line for the user (e.g. dims dropped as inactive)
    meta: dict = field(default_factory=dict)  # numbers behind the picture (dims, KL per row, ...)

    @property
    def rows(self) -> int:
        return self.images.shape[0]

    @property
    def cols(self) -> int:
        return self.images.shape[1]


# ---------------------------------------------------------------- posterior statistics
@torch.no_grad()
def posterior(model: VAE, data: Data, split: str = "val", max_examples: Optional[int] = None,
              batch_size: int = 500, seed: int = 0) -> dict:
    """q(z|x) over (the first ``max_examples`` of) a split: ``mu``/``logvar`` (N, D), ``labels``
    (N,) or (N, F) or None, ``kl_per_dim`` (D,) nats averaged over the examples. Dynamic
    binarization uses a fixed seed, as in evaluation."""
    model.eval()
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed + 104729)
    part = data.split(split).head(max_examples)
    mus, logvars = [], []
    for start in range(0, len(part), batch_size):
        mu, logvar = model.encode(data.prepare(part.images[start:start + batch_size], gen))
        mus.append(mu)
        logvars.append(logvar)
    mu, logvar = torch.cat(mus), torch.cat(logvars)                 # (N, D)
    return {"mu": mu, "logvar": logvar, "labels": part.labels, "kl_per_dim": gaussian_kl(mu, logvar).mean(0)}


def informative_dims(kl_per_dim: torch.Tensor, threshold: float) -> tuple[list[int], list[int]]:
    """(dims above ``threshold`` nats sorted by KL, largest first; the rest, also sorted)."""
    order = torch.argsort(kl_per_dim, descending=True).tolist()
    return [d for d in order if kl_per_dim[d] > threshold], [d for d in order if kl_per_dim[d] <= threshold]


# ---------------------------------------------------------------- grids
@torch.no_grad()
def sample_grid(model: VAE, n: int = 64, temperature: float = 1.0,
                generator: Optional[torch.Generator] = None, density=None) -> Grid:
    """n samples decoded from z ~ N(0, T²·I), or from ``density`` (a priors.Mixture fitted to
    the aggregate posterior, its spread scaled by T); ceil(sqrt(n)) per row (the last row padded
    grey)."""
    device = next(model.parameters()).device
    model.eval()
    if density is None:
        z = temperature * torch.randn(n, model.latent_dim, generator=generator, device=device)  # (n, D)
    else:
        z = density.sample(n, temperature, generator).to(device)
    images = model.generate(z, generator=generator).cpu()          # (n, C, H, W)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pad = torch.full((rows * cols - n, *images.shape[1:]), 0.5)
    source = "prior samples" if density is None or density.kind == "prior" else f"samples, z from {density.describe()}"
    return Grid(torch.cat([images, pad]).unflatten(0, (rows, cols)), title=f"{n} {source}, T = {temperature:g}",
                meta={"n": n, "temperature": temperature})


@torch.no_grad()
def traversal(model: VAE, kl_per_dim: torch.Tensor, *, dims: str | Sequence[int] = "auto", span: float = 2.5,
              steps: int = 7, origin: Optional[torch.Tensor] = None, threshold: float = 0.01,
              max_dims: int = 10, generator: Optional[torch.Generator] = None) -> Grid:
    """One row per latent dimension: z_d swept over ``steps`` values from origin_d − span to
    origin_d + span with every other coordinate held at ``origin`` (the prior mean 0 when None,
    or an encoded image's posterior mean). Rows are sorted by the dimension's KL (nats, beside
    each row). ``dims="auto"``: the informative dims (KL > ``threshold``), at most ``max_dims``;
    when none is informative, the top 3 anyway so the picture shows that nothing moves."""
    device = next(model.parameters()).device
    d_all = kl_per_dim.shape[0]
    if isinstance(dims, str):
        if dims != "auto":
            raise ValueError(f"dims must be 'auto' or a list of ints, not {dims!r}")
        active, inactive = informative_dims(kl_per_dim, threshold)
        chosen = active[:max_dims]
        note = (f"{len(active)} of {d_all} dims informative (KL > {threshold:g} nats); "
                f"{len(inactive)} dropped as inactive")
        if len(active) > max_dims:
            note += f", {len(active) - max_dims} informative ones beyond max_dims={max_dims} not shown"
        if not chosen:
            chosen = inactive[:min(3, d_all)]
            note = f"no dim is informative (all KL <= {threshold:g} nats): the top {len(chosen)} shown, expect no change"
    else:
        bad = [d for d in dims if not 0 <= int(d) < d_all]
        if bad or not dims:
            raise ValueError(f"latent dims {list(bad)} out of range: the model has dims 0..{d_all - 1}")
        chosen = sorted({int(d) for d in dims}, key=lambda d: -float(kl_per_dim[d]))
        note = f"{len(chosen)} of {d_all} dims, sorted by KL"
    base = torch.zeros(d_all, device=device) if origin is None else origin.to(device).flatten()  # (D,)
    offsets = torch.linspace(-span, span, steps, device=device)     # (K,)
    z = base.repeat(len(chosen), steps, 1)                          # (R, K, D)
    for r, d in enumerate(chosen):
        z[r, :, d] = base[d] + offsets
    model.eval()
    images = model.generate(z.flatten(0, 1), generator=generator).cpu()  # (R·K, C, H, W)
    labels = [f"z{d}  {float(kl_per_dim[d]):.2f} nats" for d in chosen]
    where = "prior mean" if origin is None else "a validation image's posterior mean"
    return Grid(images.unflatten(0, (len(chosen), steps)), title=f"traversals around the {where}, ±{span:g}",
                row_labels=labels, note=note,
                meta={"dims": chosen, "kl": [float(kl_per_dim[d]) for d in chosen], "span": span, "steps": steps})


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (P, D) at fractions t (K,): (P, K, D).
    Falls back to linear where a and b are (anti)parallel."""
    an, bn = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12), b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    omega = torch.acos((an * bn).sum(-1).clamp(-1, 1))[:, None, None]  # (P, 1, 1)
    t = t[None, :, None]                                                # (1, K, 1)
    so = torch.sin(omega)
    lin = (1 - t) * a[:, None] + t * b[:, None]
    sph = (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / so.clamp_min(1e-12)
    return torch.where(so > 1e-6, sph, lin)


@torch.no_grad()
def interpolation(model: VAE, x_a: torch.Tensor, x_b: torch.Tensor, *, steps: int = 8, mode: str = "linear",
                  generator: Optional[torch.Generator] = None) -> Grid:
    """One row per pair: x_a, then ``steps`` images decoded along the path between the posterior
    means of x_a and x_b (endpoints included), then x_b. x_a, x_b (P, C, H, W) model inputs."""
    if mode not in ("linear", "slerp"):
        raise ValueError(f"mode must be linear or slerp, not {mode!r}")
    model.eval()
    mu_a, _ = model.encode(x_a)                                     # (P, D)
    mu_b, _ = model.encode(x_b)
    t = torch.linspace(0, 1, steps, device=mu_a.device)             # (K,)
    if mode == "linear":
        z = (1 - t)[None, :, None] * mu_a[:, None] + t[None, :, None] * mu_b[:, None]  # (P, K, D)
    else:
        z = slerp(mu_a, mu_b, t)
    images = model.generate(z.flatten(0, 1), generator=generator).cpu().unflatten(0, z.shape[:2])  # (P, K, C, H, W)
    rows = torch.cat([x_a.cpu()[:, None], images, x_b.cpu()[:, None]], dim=1)                     # (P, K + 2, ...)
    return Grid(rows, title=f"{mode} interpolation between posterior means (inputs at both ends)",
                row_labels=[f"pair {i}" for i in range(rows.shape[0])], meta={"mode": mode, "steps": steps})


def grid_figure(grid: Grid):
    """A matplotlib figure of the grid, row labels on the left, the note under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vaerun.runs import image_grid

    pad = 2
    c, h, w = grid.images.shape[2:]
    image = image_grid(grid.images.flatten(0, 1).float().clamp(0, 1), nrow=grid.cols, padding=pad)  # (C, H', W')
    scale = max(0.45, 0.9 * h / 28)
    fig, ax = plt.subplots(figsize=(grid.cols * scale + (2.2 if grid.row_labels else 0.4),
                                    grid.rows * scale + 0.9))
    ax.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(grid.rows)] if grid.row_labels else [])
    if grid.row_labels:
        ax.set_yticklabels(grid.row_labels, fontsize=9)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(grid.title, fontsize=10)
    if grid.note:
        ax.set_xlabel(grid.note, fontsize=8)
    return fig


# ---------------------------------------------------------------- latent map
def project_2d(mu: torch.Tensor) -> torch.Tensor:
    """Principal-component projection of the posterior means (N, D) -> (N, 2)."""
    centred = (mu - mu.mean(0)).double()
    if mu.shape[1] == 1:
        return torch.cat([centred, torch.zeros_like(centred)], 1).float()
    _, _, v = torch.linalg.svd(centred, full_matrices=False)        # v (min(N, D), D): rows are directions
    proj = centred @ v[:2].T                                        # (N, 2), or (N, 1) from a single example
    return torch.cat([proj, torch.zeros(len(proj), 2 - proj.shape[1], dtype=proj.dtype)], 1).float()


CATEGORIES_MAX = 10  # a colour key with up to this many values is a legend of names; more: a colour bar


def _colour_key(labels: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Distinct label values as indices 0..k-1 and a name for each: names[value] for integer
    values that index ``names`` (classes, the shape of a shape), else the value itself."""
    values, index = torch.unique(labels, return_inverse=True)
    whole = bool((values == values.round()).all())
    key = []
    for v in values.tolist():
        if whole and 0 <= v < len(names):
            key.append(str(names[int(v)]))
        elif whole:
            key.append("(none)" if v == -1 and names else str(int(v)))    # image_folder: a top-level file
        else:
            key.append(f"{v:.3g}")
    return index, key


def latent_map_figure(post: dict, label_names: Sequence[str] = (), color_by: Optional[str] = None,
                      threshold: float = 0.01, value_names: Optional[dict] = None):
    """Three panels: the posterior means on the two most informative dims; a 2-D PCA projection
    of all dims; per dimension, a histogram of posterior σ against the prior's σ = 1 (a collapsed
    dim has all its mass at 1). Points coloured by class, or by one generative factor
    (``color_by``; the first factor by default; "class" or None for class labels, None without
    labels: a ValueError otherwise). Up to ten distinct values get a legend of names (class names,
    ``value_names[factor]``, or the values), more a colour bar (cyclic for a rotation). Returns
    (figure, numbers behind it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mu, sigma, kl = post["mu"].float().cpu(), post["logvar"].float().mul(0.5).exp().cpu(), post["kl_per_dim"].cpu()
    n, d = mu.shape
    order = torch.argsort(kl, descending=True).tolist()
    top = order[:2] if d >= 2 else order * 2
    labels, colour_name, value_label_names = post.get("labels"), None, tuple(label_names)
    if labels is not None:
        labels = labels.cpu()
        if labels.ndim == 2:                                        # generative factors (N, F)
            names = list(label_names) or [f"factor{i}" for i in range(labels.shape[1])]
            pick = color_by or names[0]
            if pick not in names:
                raise ValueError(f"color_by={pick!r} is not a factor of this dataset; choose one of {', '.join(names)}")
            labels, colour_name = labels[:, names.index(pick)], pick
            value_label_names = tuple((value_names or {}).get(pick, ()))
        elif color_by not in (None, "class"):
            raise ValueError(f"color_by={color_by!r}: this dataset's labels are classes, not generative factors "
                             "(its points are coloured by class)")
        else:
            colour_name = "class"
    elif color_by is not None:
        raise ValueError(f"color_by={color_by!r}: this dataset has no labels to colour by")
    proj = project_2d(mu)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    kw = dict(s=6, alpha=0.7, linewidths=0)
    key = None
    if labels is not None:
        index, names = _colour_key(labels.float(), value_label_names)
        if len(names) <= CATEGORIES_MAX:
            key = names
            palette = matplotlib.colormaps["tab10"].colors[:len(names)]
            kw.update(c=index.numpy(), cmap=matplotlib.colors.ListedColormap(palette), vmin=-0.5,
                      vmax=len(names) - 0.5)
        else:
            kw.update(c=labels.float().numpy(), cmap="twilight" if colour_name == "rotation" else "viridis")
    axes[0].scatter(mu[:, top[0]].numpy(), mu[:, top[1]].numpy(), **kw)
    axes[0].set_xlabel(f"μ of z{top[0]} (KL {float(kl[top[0]]):.2f} nats)")
    axes[0].set_ylabel(f"μ of z{top[1]} (KL {float(kl[top[1]]):.2f} nats)")
    axes[0].set_title("the two most informative dims")
    sc = axes[1].scatter(proj[:, 0].numpy(), proj[:, 1].numpy(), **kw)
    axes[1].set_xlabel("PC 1")
    axes[1].set_ylabel("PC 2")
    axes[1].set_title(f"all {d} dims, projected (PCA)")
    if key is not None:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", markersize=5, color=kw["cmap"](i)) for i in range(len(key))]
        axes[1].legend(handles, key, title=colour_name, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                       title_fontsize=9, frameon=False, handletextpad=0.2, borderaxespad=0.0)
    elif labels is not None:
        fig.colorbar(sc, ax=axes[1], label=colour_name)
    top_sigma = min(max(1.25, 1.05 * float(sigma.max())), 3.0)     # the prior's 1 always in view
    hist = torch.stack([torch.histc(sigma[:, k].clamp(0, top_sigma * (1 - 1e-6)), bins=50, min=0, max=top_sigma)
                        for k in order], 1) / n                     # (50 bins, D) fraction of examples
    axes[2].imshow(hist.sqrt().numpy(), origin="lower", aspect="auto", cmap="magma",
                   extent=(-0.5, d - 0.5, 0, top_sigma))            # sqrt: thin tails stay visible
    axes[2].axhline(1.0, color="cyan", linestyle="--", linewidth=1, label="prior σ = 1")
    axes[2].set_xticks(range(d))
    axes[2].set_xticklabels([f"z{k}" for k in order], rotation=90, fontsize=7)
    axes[2].set_ylabel("posterior σ")
    active = int((kl > threshold).sum())
    axes[2].set_title(f"posterior σ per dim, by KL ({active}/{d} informative)")
    axes[2].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"latent map of {n} validation examples", fontsize=11)
    fig.tight_layout()
    info = {"n": n, "top_dims": top, "kl_sorted": [float(kl[k]) for k in order], "dims_order": order,
            "informative": active, "color_by": colour_name, "sigma_hist_shape": list(hist.shape), "legend": key}
    return fig, info


def end_of_training(run, model: VAE, data: Data, *, traverse: bool, latents: bool, steps: int, span: float,
                    max_dims: int, threshold: float, label_names: Sequence[str] = (), seed: int = 0) -> dict:
    """The traversal and latent-map pictures of a finished run into ``run`` (a RunFolder), made
    from the model as given (the session passes a copy with the best checkpoint's weights; it is
    left in eval mode). Returns {kind: path}. Uses its own generator: nothing else's randomness
    moves."""
    import matplotlib.pyplot as plt

    if not (traverse or latents):
        return {}
    post = posterior(model, data, "val", max_examples=5000, seed=seed)
    written = {}
    if traverse:
        gen = torch.Generator(device=data.train.images.device).manual_seed(seed + 7919)
        fig = grid_figure(traversal(model, post["kl_per_dim"], steps=steps, span=span, threshold=threshold,
                                    max_dims=max_dims, generator=gen))
        written["traverse"] = run.save_figure(fig, run.picture_file("traverse"))
        plt.close(fig)
    if latents:
        fig, _ = latent_map_figure(post, label_names, None, threshold, data.value_names)
        written["latents"] = run.save_figure(fig, run.picture_file("latents"))
        plt.close(fig)
    return written
