"""Diagnostic metrics against exact values: a linear-Gaussian VAE (probabilistic PCA) has an exact
log p(x), so the ELBO must stay below it and the importance-weighted estimate must approach it."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaerun.likelihoods import build_likelihood
from vaerun.metrics import (active_units, aggregate_posterior_gap, aggregate_posterior_gap_full, bits_per_dim, iw_log_likelihood,
                            mutual_information)
from vaerun.models import build_vae
from vaerun.objectives import elbo_terms, gaussian_kl


def ppca_vae(seed: int = 0, d_x: int = 6, d_z: int = 2, sigma: float = 0.5):
    """A linear-Gaussian VAE: p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I); its encoder set to the
    exact posterior's mean and 3 x the diagonal of its covariance, so the ELBO has a clear gap."""
    torch.manual_seed(seed)
    lik = build_likelihood("gaussian", 1, sigma=sigma)
    vae = build_vae("mlp", (1, 1, d_x), lik, latent_dim=d_z, hidden=[], channels=[1], kernel=2)
    W, b = vae.decoder.net[0].weight.detach().double(), vae.decoder.net[0].bias.detach().double()  # (d_x, d_z)
    M = W.T @ W + sigma ** 2 * torch.eye(d_z, dtype=torch.float64)
    A = torch.linalg.solve(M, W.T)                                  # posterior mean = A (x − b)
    cov = sigma ** 2 * torch.linalg.inv(M)
    with torch.no_grad():
        head = vae.encoder.head                                     # Linear(d_x, 2 d_z)
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:d_z] = A.float()
        head.bias[:d_z] = (-A @ b).float()
        head.bias[d_z:] = (3 * cov.diagonal()).log().float()       # too wide on purpose: a real gap
    exact = MultivariateNormal(b, covariance_matrix=W @ W.T + sigma ** 2 * torch.eye(d_x, dtype=torch.float64))
    return vae, exact


def test_ppca_elbo_bounds_and_iw_converges():
    vae, exact = ppca_vae()
    x = exact.sample((64,)).float().view(64, 1, 1, -1)
    log_px = exact.log_prob(x.view(64, -1).double())                   # (64,) exact
    # the ELBO in closed form: E_q log N(x; Wz + b, σ²I) − KL(q || p)
    W, b = vae.decoder.net[0].weight.detach().double(), vae.decoder.net[0].bias.detach().double()
    sigma = 0.5
    with torch.no_grad():
        m, logvar = (t.double() for t in vae.encode(x))
    xf = x.view(64, -1).double()
    sq = (xf - m @ W.T - b).square().sum(1) + (logvar.exp() * W.square().sum(0)).sum(1)
    expected_loglik = -0.5 * xf.shape[1] * math.log(2 * math.pi * sigma ** 2) - sq / (2 * sigma ** 2)
    elbo = expected_loglik - gaussian_kl(m, logvar).sum(1)
    assert torch.all(elbo <= log_px + 1e-9)
    torch.manual_seed(1)
    mc = torch.stack([elbo_terms(vae, x).elbo.double() for _ in range(2000)]).mean(0)
    assert torch.allclose(mc, elbo, atol=0.15)                        # vaerun's ELBO estimates the same
    gaps = {}
    with torch.no_grad():
        for k in (1, 10, 100, 5000):
            gaps[k] = (log_px - iw_log_likelihood(vae, x, k)).mean().item()
    assert gaps[1] > gaps[10] > gaps[100] > gaps[5000] - 1e-3        # tighter with more samples
    assert abs(gaps[5000]) < 0.01                                     # within 0.01 nats of exact
    assert gaps[1] > 0.2                                              # the wide posterior is far from exact


def test_iw_chunking_does_not_change_the_estimate():
    vae, exact = ppca_vae(seed=3)
    x = exact.sample((8,)).float().view(8, 1, 1, -1)
    torch.manual_seed(0)
    a = iw_log_likelihood(vae, x, 100, chunk=100)
    torch.manual_seed(0)
    b = iw_log_likelihood(vae, x, 100, chunk=7)
    assert a.shape == (8,)
    assert torch.allclose(a, b, atol=0.3)  # different random draws, same target


def test_active_units_counts_dims_whose_mean_varies():
    mu = torch.zeros(1000, 3)
    mu[:, 0] = torch.randn(1000)            # varies: active
    mu[:, 1] = 0.05 * torch.randn(1000)     # variance 0.0025: inactive
    n, var = active_units(mu, 0.01)
    assert n == 1 and var[0] == pytest.approx(1.0, abs=0.15) and var[2] == 0.0


def test_mutual_information_is_zero_for_the_prior_and_large_for_sharp_posteriors():
    torch.manual_seed(0)
    prior_like = mutual_information(torch.zeros(500, 2), torch.zeros(500, 2))
    sharp = mutual_information(torch.randn(500, 2) * 3, torch.full((500, 2), -8.0))
    assert abs(prior_like) < 0.05   # not clamped: the estimate of a zero MI is noise around 0
    # capped by log N, up to the noise of E_q log q(z|x) taken in closed form (He et al.'s estimator):
    # 0.5 (‖ε‖² − D) per example, so a standard deviation of √(D / 2N) over N examples
    assert abs(sharp - math.log(500)) < 4 * math.sqrt(2 / (2 * 500))


def test_bits_per_dim_and_the_aggregate_gap():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(10 * math.log(2) * 8, 10) == pytest.approx(8.0)
    assert aggregate_posterior_gap(torch.randn(20000, 2) * 0.6, torch.full((20000, 2), math.log(0.64))) < 0.01
    assert aggregate_posterior_gap(torch.randn(5000, 2) * 3, torch.zeros(5000, 2)) > 1.0


def test_the_full_covariance_gap_sees_correlations_the_diagonal_one_cannot():
    """Codes along a diagonal band: each dim alone matches N(0, 1), so the diagonal gap is ~0, but
    together they cover a line: KL(N(0, Σ) || N(0, I)) = −½ log det Σ with Σ = [[1, ρ], [ρ, 1]]."""
    g = torch.Generator().manual_seed(0)
    rho, n = 0.95, 200_000
    a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
    mu = torch.stack([a, rho * a + math.sqrt(1 - rho ** 2) * b], 1) * math.sqrt(0.9)   # Cov(μ) = 0.9 Σ
    logvar = torch.full((n, 2), math.log(0.1))                                         # + 0.1 I from E[σ²]
    cov = 0.9 * torch.tensor([[1.0, rho], [rho, 1.0]]) + 0.1 * torch.eye(2)
    assert aggregate_posterior_gap(mu, logvar) < 0.01
    assert aggregate_posterior_gap_full(mu, logvar) == pytest.approx(-0.5 * math.log(torch.det(cov)), abs=0.01)
    independent = torch.randn(n, 3, generator=g) * 2
    lv = torch.zeros(n, 3)
    assert aggregate_posterior_gap_full(independent, lv) == pytest.approx(aggregate_posterior_gap(independent, lv),
                                                                          abs=0.01)


def test_mig_separates_disentangled_from_entangled_codes():
    from vaerun.metrics import mig

    g = torch.Generator().manual_seed(0)
    n = 20000
    f = torch.stack([torch.randint(0, 8, (n,), generator=g), torch.randint(0, 5, (n,), generator=g),
                     torch.zeros(n, dtype=torch.long)], 1).float()          # the third factor is constant
    noise = lambda: 0.05 * torch.randn(n, generator=g)                      # noqa: E731
    clean = torch.stack([f[:, 0] + noise(), f[:, 1] + noise(), torch.randn(n, generator=g)], 1)
    res = mig(clean, f, ["a", "b", "const"])
    assert set(res["mig_per_factor"]) == {"a", "b"}                         # constant factor skipped
    assert res["mig"] > 0.9 and res["mig_top_dims"]["a"][0] == 0 and res["mig_top_dims"]["b"][0] == 1
    mixed = torch.stack([f[:, 0] + 8 * f[:, 1], 8 * f[:, 1] - f[:, 0], torch.randn(n, generator=g)], 1)
    assert mig(mixed, f)["mig"] < 0.3                                        # both factors in both dims
    assert mig(torch.randn(n, 3, generator=g), f)["mig"] < 0.01              # no information
    # MI estimate: a dim that copies a uniform 8-valued factor carries its entropy, log 8
    from vaerun.metrics import _mutual_info_discrete

    v = f[:, 0].long()
    assert _mutual_info_discrete(v, v, 8, 8) == pytest.approx(math.log(8), abs=0.01)


@pytest.mark.parametrize("name", ["mlp", "conv", "autoregressive"])
def test_decoding_in_pieces_changes_no_number(monkeypatch, name):
    """Evaluation decodes large batches in pieces of bounded memory (VAE.decode_pieces): the ELBO
    terms and the importance weights are those of one whole-batch call, with the same draws."""
    import vaerun.models.vae as vae_module

    torch.manual_seed(0)
    vae = build_vae(name, (1, 8, 8), build_likelihood("bernoulli", 1), latent_dim=3, hidden=[16], channels=[4],
                    kernel=4, ar_layers=2, ar_kernel=3, ar_width=6, ar_cond_channels=2).double().eval()
    x = torch.rand(10, 1, 8, 8, dtype=torch.float64).round()
    whole, pieces = {}, {}
    for budget, out in ((2 ** 40, whole), (1, pieces)):  # 1 byte: one row per decoder call
        monkeypatch.setattr(vae_module, "DECODE_BYTES", {"cpu": budget})
        calls = []
        handle = vae.decoder.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
        torch.manual_seed(1)
        out["terms"] = elbo_terms(vae, x, pieces=True)
        torch.manual_seed(2)
        out["iw"] = iw_log_likelihood(vae, x, 7, chunk=3)
        handle.remove()
        out["calls"] = calls
    assert whole["calls"] == [1, 10, 30, 30, 10]  # the one-row measurement, then one call per batch / chunk
    assert set(pieces["calls"]) == {1} and len(pieces["calls"]) == 10 + 70
    for key in ("recon", "kl_per_dim", "mu"):
        torch.testing.assert_close(getattr(pieces["terms"], key), getattr(whole["terms"], key))
    torch.testing.assert_close(pieces["iw"], whole["iw"])


def test_the_piece_size_follows_the_widest_decoder_activation():
    vae = build_vae("autoregressive", (1, 28, 28), build_likelihood("bernoulli", 1), latent_dim=4, hidden=[16],
                    channels=[4], kernel=4, ar_layers=2, ar_kernel=5, ar_width=64, ar_cond_channels=8)
    z, x = torch.zeros(5, 4), torch.zeros(5, 1, 28, 28)
    assert vae._decoder_row_bytes(z, x) == 2 * 64 * 28 * 28 * 4   # the gated layers' conv output, float32
    mlp = build_vae("mlp", (1, 28, 28), build_likelihood("bernoulli", 1), latent_dim=4, hidden=[400], channels=[4],
                    kernel=4)
    assert mlp._decoder_row_bytes(torch.zeros(5, 4), None) == 784 * 4  # the 784 logits


def test_nll_iw_on_a_subset_comes_with_the_elbo_of_that_subset():
    """In training nll_iw covers the first ``iw_examples`` only, so the split's −elbo is not its
    bound; ``iw_elbo`` is the ELBO on exactly those examples (the same draws as the whole pass)."""
    from dataclasses import replace

    from vaerun.data import Data, Split
    from vaerun.train import evaluate

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(96, 1, 8, 8, generator=g) < 0.3).to(torch.uint8) * 255
    val = (torch.rand(96, 1, 8, 8, generator=g) < torch.linspace(0.05, 0.6, 96).view(-1, 1, 1, 1)).to(torch.uint8)
    data = Data("toy", Split(images), Split(val * 255), Split(images[:10]))   # val: sparse first, dense last
    torch.manual_seed(0)
    vae = build_vae("mlp", (1, 8, 8), build_likelihood("bernoulli", 1), latent_dim=3, hidden=[16],
                    channels=[1], kernel=2)
    with torch.no_grad():  # a near-point posterior: each example's ELBO barely depends on the draw of z
        vae.encoder.head.bias[3:] = -30.0
        vae.decoder.net[-1].bias.fill_(-2.0)   # pixels mostly off: an image's recon grows with its ink
    kw = dict(mi_examples=50, iw_samples=20)
    full = evaluate(vae, data, "val", 32, iw_examples=40, **kw)                   # 32 + 8 of the next batch
    head = evaluate(vae, replace(data, val=data.val.head(40)), "val", 32, **kw)   # the subset alone
    assert full["iw_n"] == 40 < full["n"] == 96
    assert full["iw_elbo"] == pytest.approx(head["elbo"], rel=1e-6)
    assert abs(full["iw_elbo"] - full["elbo"]) > 3                   # the subset's bound is not the split's
    assert full["nll_iw"] == pytest.approx(head["nll_iw"], rel=1e-6)
    assert full["nll_iw"] <= -full["iw_elbo"]                         # the IW bound is the tighter one
    whole = evaluate(vae, data, "val", 32, **kw)                      # every example: the same set
    assert whole["iw_n"] == whole["n"] and whole["iw_elbo"] == pytest.approx(whole["elbo"], rel=1e-9)


def test_the_val_log_line_puts_a_subset_nll_iw_beside_its_own_bound(caplog):
    from vaerun.progress import Reporter

    rec = {"step": 300, "elbo": -94.8, "recon": 75.6, "kl": 19.2, "kl_per_dim": [1.0] * 4, "active_units": 4,
           "mi": 3.0, "n": 1000, "nll_iw": 91.329, "iw_samples": 50, "iw_n": 256, "iw_elbo": -94.45}
    with caplog.at_level("INFO", logger="vaerun"):
        Reporter(300, bar=False).val(rec, best=True)
        Reporter(300, bar=False).val({**rec, "iw_n": 1000, "iw_elbo": -94.8}, best=False)
    subset, whole = (r.getMessage() for r in caplog.records)
    assert "elbo -94.800" in subset and "nll_iw(K=50) 91.329 on 256 ex (−elbo 94.450 there)" in subset
    assert whole.endswith("nll_iw(K=50) 91.329")   # the whole split: −elbo is the line's own


def test_the_train_log_line_says_the_time_left_validations_included(caplog, monkeypatch):
    """Steps at the training pace so far, plus the validations still to come at their measured
    cost; before one is timed, their number. A step's own validation comes after its line."""
    from vaerun import progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    r = progress.Reporter(1000, bar=False, eval_every=300)                 # validations at 300, 600, 900, 1000
    assert [r.validations_left(s) for s in (1, 299, 300, 301, 900, 901, 1000)] == [4, 4, 4, 3, 2, 1, 1]
    rec = {"epoch": 0.1, "loss": 1.0, "recon": 1.0, "kl": 0.0, "beta": 1.0, "lr": 1e-3, "examples_per_sec": 5e3}
    with caplog.at_level("INFO", logger="vaerun"):
        clock[0] = 110.0                                                    # 100 steps in 10 s
        r.train({**rec, "step": 100})
        clock[0] = 130.0
        r.train({**rec, "step": 300})
        clock[0] = 160.0                                                    # a validation of 30 s
        r.val({"step": 300, "elbo": -1.0, "recon": 1.0, "kl": 0.0, "kl_per_dim": [0.0], "active_units": 0,
               "mi": 0.0, "n": 10}, best=True, seconds=30.0)
        clock[0] = 170.0
        r.train({**rec, "step": 400})                                       # 600 steps at 0.1 s + 3 x 30 s
    lines = [x.getMessage() for x in caplog.records if x.getMessage().startswith("step")]
    assert lines[0].endswith("| 1m30s left + 4 validations")
    assert lines[1].endswith("| 1m10s left + 4 validations")
    assert lines[2].endswith("| 2m30s left")
    assert progress.Reporter(0, bar=False).time_left(0, 0.0) == ""            # nothing done yet: no guess
    assert [progress.duration(x) for x in (4.6, 65, 3725)] == ["5s", "1m05s", "1h02m"]
