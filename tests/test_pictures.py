"""Looking inside trained runs: sample/traverse/interpolate/latents pictures for every model, the
end-of-training pictures, and the Python API's round trip (load_run(path).model() reproduces the
validation ELBO the run recorded)."""
from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from conftest import TINY, compose
from vaerun import commands, load_run, pictures
from vaerun.runs import RunFolder
from vaerun.session import train

MODELS = {
    "mlp": ["model=mlp"],
    "conv": ["model=conv"],
    "autoregressive": ["model=autoregressive", "model.ar_layers=2", "model.ar_kernel=3", "model.ar_width=8",
                       "model.ar_cond_channels=2", "dataset.image_size=8"],
}


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request, tmp_path_factory):
    """A tiny completed run per model (12 steps; the AR model on 8x8 images)."""
    name = request.param
    cfg, resolved = compose([*TINY, *MODELS[name], "max_steps=12", "model.latent_dim=5"])
    folder = RunFolder(tmp_path_factory.mktemp(name) / "run")
    summary = train(cfg, folder, resolved)
    assert summary["status"] == "completed"
    return name, folder.path


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
        return im.size


def test_end_of_training_pictures(trained):
    name, path = trained
    folder = RunFolder(path)
    have = folder.pictures()
    assert "latents" in have and png_size(have["latents"])[0] > 0
    # the traversal is on by default, except for a pixel-by-pixel decoder on the CPU
    assert ("traverse" in have) == (name != "autoregressive")


def test_sample_grid_sizes(trained):
    run = load_run(trained[1])
    gen = torch.Generator().manual_seed(0)
    for n, rows, cols in [(10, 3, 4), (16, 4, 4), (1, 1, 1)]:
        grid = pictures.sample_grid(run.model(), n, 0.7, gen)
        assert (grid.rows, grid.cols) == (rows, cols)
        assert grid.images.shape[2:] == run.data().shape
        real = grid.images.flatten(0, 1)[:n]
        assert real.min() >= 0 and real.max() <= 1
    # the temperature scales z: T = 0 decodes the prior mean for every sample (non-AR decoders)
    if trained[0] != "autoregressive":
        flat = pictures.sample_grid(run.model(), 4, 0.0, gen).images.flatten(0, 1)
        torch.testing.assert_close(flat[0], flat[3])


def test_traversal_rows_follow_kl(trained):
    run = load_run(trained[1])
    model, data = run.model(), run.data()
    post = pictures.posterior(model, data, "val")
    kl = post["kl_per_dim"]
    assert kl.shape == (5,) and post["mu"].shape == (len(data.val), 5)
    grid = pictures.traversal(model, kl, dims="auto", steps=6, threshold=0.0, max_dims=3,
                              generator=torch.Generator().manual_seed(0))
    assert (grid.rows, grid.cols) == (3, 6)
    assert grid.meta["kl"] == sorted(grid.meta["kl"], reverse=True)
    assert all("nats" in label for label in grid.row_labels)
    picked = pictures.traversal(model, kl, dims=[4, 0], steps=5, generator=torch.Generator().manual_seed(0))
    assert (picked.rows, picked.cols) == (2, 5) and set(picked.meta["dims"]) == {0, 4}
    # a threshold above every KL: nothing is informative, the top dims are shown with a warning
    none = pictures.traversal(model, kl, dims="auto", steps=3, threshold=1e9, generator=torch.Generator())
    assert none.rows == 3 and "no dim is informative" in none.note
    with pytest.raises(ValueError, match="out of range"):
        pictures.traversal(model, kl, dims=[7])


def test_traversal_sweeps_only_its_own_dimension():
    """With an MLP decoder, row r varies only in z_d: the middle column is the origin's image."""
    from vaerun.likelihoods import build_likelihood
    from vaerun.models import build_vae

    torch.manual_seed(0)
    vae = build_vae("mlp", (1, 6, 6), build_likelihood("bernoulli", 1), latent_dim=3, hidden=[8],
                    channels=[4], kernel=4)
    grid = pictures.traversal(vae, torch.tensor([0.5, 2.0, 1.0]), dims="auto", steps=5, threshold=0.01)
    assert grid.meta["dims"] == [1, 2, 0]
    centre = vae.generate(torch.zeros(1, 3))[0]
    for r in range(3):
        torch.testing.assert_close(grid.images[r, 2], centre)
        assert not torch.allclose(grid.images[r, 0], grid.images[r, 4])


def test_interpolation_grid_and_endpoints(trained):
    run = load_run(trained[1])
    model, data = run.model(), run.data()
    x = data.prepare(data.val.images[:6])
    for mode in ("linear", "slerp"):
        grid = pictures.interpolation(model, x[:3], x[3:], steps=4, mode=mode, generator=torch.Generator())
        assert (grid.rows, grid.cols) == (3, 6)
        torch.testing.assert_close(grid.images[:, 0], x[:3])
        torch.testing.assert_close(grid.images[:, -1], x[3:])


def test_slerp_stays_on_the_arc():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    path = pictures.slerp(a, b, torch.linspace(0, 1, 5))[0]          # (5, 2)
    torch.testing.assert_close(path[0], a[0])
    torch.testing.assert_close(path[-1], b[0])
    angles = torch.atan2(path[:, 1], path[:, 0])
    torch.testing.assert_close(angles, torch.linspace(0, math.pi / 2, 5))   # equal angular steps
    torch.testing.assert_close(path.norm(dim=1), torch.full((5,), 2.0))     # on the circle, unlike lerp
    same = pictures.slerp(a, 3 * a, torch.tensor([0.5]))[0, 0]       # parallel: falls back to linear
    torch.testing.assert_close(same, torch.tensor([4.0, 0.0]))


def test_latent_map(trained):
    run = load_run(trained[1])
    post = pictures.posterior(run.model(), run.data(), "val")
    fig, info = pictures.latent_map_figure(post, run.data().label_names, "x", 0.01)
    assert info["n"] == len(run.data().val) and info["sigma_hist_shape"] == [50, 5]
    assert info["color_by"] == "x" and len(fig.axes) >= 3
    assert info["kl_sorted"] == sorted(info["kl_sorted"], reverse=True)
    with pytest.raises(ValueError, match="not a factor"):
        pictures.latent_map_figure(post, run.data().label_names, "colour", 0.01)


def test_picture_commands_write_pngs(trained, tmp_path, capsys):
    name, path = trained
    runs = [(commands.sample_main, ["--n", "6"], "sample.png"),
            (commands.traverse_main, ["--steps", "3", "--max-dims", "2", "--from", "data"], "traverse.png"),
            (commands.interpolate_main, ["--pairs", "2", "--steps", "3", "--mode", "slerp"], "interpolate.png"),
            (commands.latents_main, [], "latents.png")]
    for main, args, file in runs:
        assert main([str(path), *args]) == 0
        assert png_size(path / "pictures" / file)[0] > 50
    out = tmp_path / "elsewhere.png"
    assert commands.sample_main([str(path), "--n", "4", "--checkpoint", "last", "--out", str(out)]) == 0
    assert png_size(out)[0] > 0 and f"wrote {out}" in capsys.readouterr().out
    assert commands.traverse_main([str(path), "--checkpoint", "last", "--steps", "2"]) == 0
    assert (path / "pictures" / "traverse_last.png").exists()
    for z in ("gaussian", "gmm"):  # z from a density fitted to the training codes: its own file, judged in nats
        assert commands.sample_main([str(path), "--n", "4", "--z", z, "--components", "3"]) == 0
        assert png_size(path / "pictures" / f"sample_{z}.png")[0] > 0
        assert "mean log density is" in capsys.readouterr().out
    run = load_run(path)
    assert run.sample(3, seed=0, z="gmm", components=2).shape == (3, *run.data().shape)
    density, fit = run.latent_density("gaussian")
    assert fit["gain"] == pytest.approx(fit["fitted_ll"] - fit["prior_ll"]) and fit["n_val"] == len(run.data().val)


def test_fitted_densities_match_what_they_were_fitted_to():
    """The moment-matched Gaussian has the aggregate posterior's mean and covariance (Cov(μ) +
    E[σ²]); EM recovers a well-separated two-component mixture; the prior's log density is
    N(0, I)'s; samples follow the fitted density, their spread scaled by the temperature."""
    from vaerun.priors import fit, fit_gmm, moment_matched, standard_normal

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4000, 2, generator=g) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]]) + torch.tensor([2.0, -1.0])
    logvar = torch.full_like(mu, math.log(0.25))
    m = moment_matched(mu, logvar)
    cov = m.scale_tril[0] @ m.scale_tril[0].T
    assert torch.allclose(m.means[0], mu.double().mean(0))
    assert torch.allclose(cov, torch.cov(mu.double().T, correction=0) + 0.25 * torch.eye(2), atol=1e-5)
    z = m.sample(200_000, generator=g).double()
    assert torch.allclose(z.mean(0), m.means[0], atol=0.02) and torch.allclose(torch.cov(z.T), cov, atol=0.03)
    assert torch.allclose(torch.cov((m.sample(200_000, 0.5, g).double()).T), 0.25 * cov, atol=0.01)
    prior = standard_normal(2)
    x = torch.randn(5, 2, generator=g)
    assert torch.allclose(prior.log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x.double()).sum(1))
    both = torch.cat([torch.randn(3000, 2, generator=g) * 0.3 + 4, torch.randn(1000, 2, generator=g) * 0.5 - 4])
    gmm = fit_gmm(both, 2, seed=1)
    order = gmm.means[:, 0].argsort()
    assert torch.allclose(gmm.weights[order], torch.tensor([0.25, 0.75], dtype=torch.float64), atol=0.01)
    assert torch.allclose(gmm.means[order], torch.tensor([[-4.0, -4.0], [4.0, 4.0]], dtype=torch.float64), atol=0.05)
    one = moment_matched(both, torch.full_like(both, -20))
    assert float(gmm.log_prob(both).mean()) > float(one.log_prob(both).mean()) + 1      # two modes beat one
    assert torch.equal(fit_gmm(both, 2, seed=1).means, gmm.means)                       # deterministic for a seed
    assert fit("gmm", both, torch.full_like(both, -4.0), components=2).weights.shape == (2,)


def test_picture_command_errors_name_the_fix(trained, capsys):
    path = str(trained[1])
    assert commands.guarded(commands.traverse_main, [path, "--dims", "0,9"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert commands.guarded(commands.interpolate_main, [path, "--pairs", "500"]) == 2
    assert "--pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        commands.sample_main([path, "--n", "0"])


def test_round_trip_reproduces_the_recorded_val_elbo(trained):
    """load_run(path).model() is the best checkpoint; evaluating it like training did gives the
    validation ELBO recorded in metrics.jsonl (same data, same seed)."""
    run = load_run(trained[1])
    best = run.summary["best_val"]
    recorded = [r for r in run.metrics if r["split"] == "val" and r["step"] == best["step"]][-1]
    res = run.evaluate()
    assert res["elbo"] == pytest.approx(recorded["elbo"], rel=1e-6, abs=1e-5)
    assert res["kl_per_dim"] == pytest.approx(recorded["kl_per_dim"], rel=1e-5, abs=1e-6)
    assert run.model().training is False
    last = [r for r in run.metrics if r["split"] == "val"][-1]
    assert run.evaluate(checkpoint="last")["elbo"] == pytest.approx(last["elbo"], rel=1e-6, abs=1e-5)


def test_the_pca_panel_has_two_coordinates_whatever_the_shapes():
    """The latent map's projection is (N, 2) for one latent dim, for one example (a single
    direction: the second coordinate is 0) and in general, and its first axis carries the most
    variance."""
    from vaerun.pictures import project_2d

    torch.manual_seed(0)
    mu = torch.randn(200, 4) * torch.tensor([0.1, 3.0, 1.0, 0.2])
    p = project_2d(mu)
    assert p.shape == (200, 2) and p[:, 0].var() > p[:, 1].var() > 0.5
    assert p[:, 0].var() == pytest.approx(mu[:, 1].var().item(), rel=0.05)   # the dim with σ = 3
    assert project_2d(torch.randn(7, 1)).shape == (7, 2)
    one = project_2d(torch.randn(1, 5))
    assert one.shape == (1, 2) and torch.all(one == 0)                   # a single point sits at the mean


def test_a_failing_picture_or_diagnosis_never_fails_the_run(tmp_path, monkeypatch, caplog):
    """The model is trained and saved before the end-of-training diagnosis and pictures: if one
    fails, the run is still completed (the error in summary.json, a warning saying how to retry)."""
    from vaerun import diagnose

    def broken(*args, **kwargs):
        raise IndexError("index 1 is out of bounds")

    monkeypatch.setattr(pictures, "end_of_training", broken)
    monkeypatch.setattr(diagnose, "z_dependence", broken)
    cfg, resolved = compose([*TINY, "max_steps=4"])
    folder = RunFolder(tmp_path / "run")
    with caplog.at_level("WARNING", logger="vaerun"):
        summary = train(cfg, folder, resolved)
    assert summary["status"] == "completed" and folder.read_summary()["status"] == "completed"
    assert folder.read_summary()["pictures_error"] == "IndexError: index 1 is out of bounds"
    assert any("end-of-training pictures failed" in r.getMessage() and "vaerun latents" in r.getMessage()
               for r in caplog.records)
    assert folder.read_summary()["diagnosis"] == {"overall": "unknown", "error": "IndexError: index 1 is out of bounds"}
    assert any("diagnosis failed" in r.getMessage() and "vaerun diagnose" in r.getMessage() for r in caplog.records)


def test_color_by_on_classes_or_no_labels_is_an_error_not_ignored():
    """--color-by rotation on MNIST once drew the class map and said nothing."""
    post = {"mu": torch.randn(40, 3), "logvar": torch.zeros(40, 3), "kl_per_dim": torch.rand(3),
            "labels": torch.arange(40) % 10}
    fig, info = pictures.latent_map_figure(post, [str(i) for i in range(10)], None, 0.01)
    assert info["color_by"] == "class"
    assert pictures.latent_map_figure(post, (), "class", 0.01)[1]["color_by"] == "class"
    with pytest.raises(ValueError, match="classes, not generative factors"):
        pictures.latent_map_figure(post, [str(i) for i in range(10)], "rotation", 0.01)
    del post["labels"]
    assert pictures.latent_map_figure(post, (), None, 0.01)[1]["color_by"] is None
    with pytest.raises(ValueError, match="no labels"):
        pictures.latent_map_figure(post, (), "class", 0.01)


def test_the_colour_key_names_categories_and_keeps_a_bar_for_many_values():
    """The default shapes map was coloured by shape id on a 0..2 colour bar with ticks at 0.25:
    a few categories get a legend of names, many values a colour bar (cyclic for a rotation)."""
    from vaerun.data import CLASS_NAMES, SHAPES_FACTORS

    n = 60
    factors = torch.stack([torch.arange(n) % 3, 0.6 + 0.08 * (torch.arange(n) % 6),
                           (2 * math.pi / 40) * (torch.arange(n) % 40), torch.rand(n), torch.rand(n)], 1).float()
    post = {"mu": torch.randn(n, 3), "logvar": torch.zeros(n, 3), "kl_per_dim": torch.rand(3), "labels": factors}
    value_names = {"shape": ("square", "ellipse", "heart")}
    fig, info = pictures.latent_map_figure(post, SHAPES_FACTORS, None, 0.01, value_names)
    assert info["color_by"] == "shape" and info["legend"] == ["square", "ellipse", "heart"]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["square", "ellipse", "heart"]
    assert len(fig.axes) == 3                                                # no colour bar beside the legend
    assert pictures.latent_map_figure(post, SHAPES_FACTORS, "scale", 0.01, value_names)[1]["legend"] == \
        ["0.6", "0.68", "0.76", "0.84", "0.92", "1"]
    fig, info = pictures.latent_map_figure(post, SHAPES_FACTORS, "rotation", 0.01, value_names)
    assert info["legend"] is None and len(fig.axes) == 4                     # 40 values: a colour bar
    assert fig.axes[1].collections[0].get_cmap().name == "twilight"          # an angle wraps around
    classes = {"mu": torch.randn(n, 3), "logvar": torch.zeros(n, 3), "kl_per_dim": torch.rand(3),
               "labels": torch.arange(n) % 10}
    assert pictures.latent_map_figure(classes, CLASS_NAMES["fashion_mnist"], None, 0.01)[1]["legend"][-1] == "Ankle boot"
    folder = {**classes, "labels": torch.tensor([-1, 0, 1] * 20)}           # image_folder: a top-level file is -1
    assert pictures.latent_map_figure(folder, ("cats", "dogs"), None, 0.01)[1]["legend"] == ["(none)", "cats", "dogs"]
