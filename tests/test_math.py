"""Known values: log-probs and KL against torch.distributions, schedules at their boundaries,
free bits as documented."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli as TBernoulli
from torch.distributions import Normal, kl_divergence

from vaerun.likelihoods import Bernoulli, Gaussian
from vaerun.objectives import Terms, gaussian_kl, kl_penalty, training_loss
from vaerun.schedules import Constant, Cyclical, Linear, Sigmoid, build_schedule

torch.manual_seed(0)


def test_bernoulli_log_prob_matches_torch():
    logits = torch.randn(5, 2, 4, 3) * 3
    x = torch.bernoulli(torch.full_like(logits, 0.4))
    expected = TBernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), expected)


def test_bernoulli_log_prob_on_grey_levels_is_cross_entropy():
    logits, x = torch.randn(3, 1, 2, 2), torch.rand(3, 1, 2, 2)
    p = torch.sigmoid(logits)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), expected)


@pytest.mark.parametrize("mode", ["none", "global", "channel"])
def test_gaussian_log_prob_matches_torch(mode):
    g = Gaussian(channels=3, sigma=0.3, learn_sigma=mode)
    if mode != "none":
        with torch.no_grad():
            g.log_sigma.copy_(torch.linspace(-1.0, 0.5, g.log_sigma.numel()))
    mu, x = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    sigma = g.log_sigma.exp().view(1, -1, 1, 1)
    expected = Normal(mu, sigma.expand_as(mu)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(g.log_prob(mu, x), expected)


def test_gaussian_pixel_sigma_uses_channel_major_layout():
    g = Gaussian(channels=2, learn_sigma="pixel")
    assert g.params_per_channel == 2
    mu, log_sigma = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4) * 0.5
    params = torch.stack([mu, log_sigma], dim=2).flatten(1, 2)  # (B, C*K, H, W), channel-major
    x = torch.randn(3, 2, 4, 4)
    expected = Normal(mu, log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(g.log_prob(params, x), expected)
    torch.testing.assert_close(g.mean(params), mu)


def test_gaussian_log_sigma_is_clamped():
    g = Gaussian(channels=1, learn_sigma="pixel", min_log_sigma=-2.0, max_log_sigma=1.0)
    mu, x = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5)
    params = torch.cat([mu, torch.full_like(mu, -50.0)], dim=1)
    expected = Normal(0.0, math.exp(-2.0)).log_prob(torch.tensor(0.5))
    torch.testing.assert_close(g.log_prob(params, x), expected.view(1))


def test_gaussian_fixed_sigma_has_no_parameters():
    assert list(Gaussian(channels=1, sigma=0.1).parameters()) == []
    assert len(list(Gaussian(channels=3, learn_sigma="channel").parameters())) == 1


def test_gaussian_kl_matches_torch():
    mu, logvar = torch.randn(6, 5), torch.randn(6, 5)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)
    assert torch.all(gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_constant_schedule():
    assert Constant(2.5)(0) == 2.5 and Constant(2.5)(10**6) == 2.5


def test_linear_schedule_boundaries():
    s = Linear(beta=2.0, beta_start=0.5, warmup_steps=100, delay_steps=20)
    assert s(0) == 0.5 and s(20) == 0.5
    assert s(70) == pytest.approx(1.25)
    assert s(120) == 2.0 and s(10**6) == 2.0


def test_sigmoid_schedule_boundaries_are_exact():
    s = Sigmoid(beta=4.0, beta_start=1.0, warmup_steps=100, delay_steps=10)
    assert s(0) == 1.0 and s(10) == pytest.approx(1.0, abs=1e-12)
    assert s(60) == pytest.approx(2.5)            # symmetric: the midpoint is halfway
    assert s(110) == pytest.approx(4.0, abs=1e-12) and s(500) == 4.0
    assert all(s(t) <= s(t + 1) for t in range(0, 120))


def test_cyclical_schedule_boundaries():
    s = Cyclical(beta=1.0, beta_start=0.0, total_steps=400, cycles=4, ratio=0.5)
    assert s(0) == 0.0
    assert s(25) == pytest.approx(0.5)
    assert s(50) == 1.0 and s(99) == 1.0          # held at β for the rest of the cycle
    assert s(100) == 0.0 and s(150) == 1.0        # the next cycle starts again from beta_start
    assert s(399) == 1.0 and s(400) == 1.0 and s(10**5) == 1.0


def test_build_schedule_uses_top_level_beta():
    for name in ("constant", "linear", "sigmoid", "cyclical"):
        assert build_schedule(name, beta=3.0, warmup_steps=10, total_steps=100)(10**6) == 3.0
    with pytest.raises(ValueError, match="constant, linear"):
        build_schedule("nope", beta=1.0)


def test_free_bits_off_is_the_batch_mean_kl():
    kl = torch.rand(8, 4)
    torch.testing.assert_close(kl_penalty(kl, 0.0), kl.sum(1).mean())


def test_free_bits_floors_each_dimension_and_stops_its_gradient():
    kl = torch.tensor([[0.1, 2.0], [0.3, 1.0]], requires_grad=True)  # per-dim batch means: 0.2, 1.5
    out = kl_penalty(kl, 0.5)
    assert out.item() == pytest.approx(0.5 + 1.5)                     # dim 0 floored at λ = 0.5
    out.backward()
    assert torch.all(kl.grad[:, 0] == 0)                               # no pressure below λ
    torch.testing.assert_close(kl.grad[:, 1], torch.full((2,), 0.5))  # d mean / d element


def test_training_loss_is_recon_plus_beta_kl():
    t = Terms(recon=torch.tensor([10.0, 20.0]), kl_per_dim=torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
              mu=torch.zeros(2, 2), logvar=torch.zeros(2, 2))
    assert training_loss(t, beta=0.5, free_bits=0.0).item() == pytest.approx(15.0 + 0.5 * 5.0)
    torch.testing.assert_close(t.elbo, torch.tensor([-13.0, -27.0]))


# ---------------------------------------------------------------- continuous Bernoulli, discretized logistic
def test_continuous_bernoulli_against_torch_distributions_and_quadrature():
    from vaerun.likelihoods import ContinuousBernoulli

    cb = ContinuousBernoulli()
    eta = torch.tensor([-9.0, -5.0, -1.0, -0.02, -0.004, 0.0, 0.003, 0.5, 3.0, 9.0], dtype=torch.float64)
    x = torch.rand(10, dtype=torch.float64)
    ref = torch.distributions.ContinuousBernoulli(logits=eta)
    params, xx = eta.view(1, 10, 1, 1), x.view(1, 10, 1, 1)
    torch.testing.assert_close(cb.log_prob(params, xx), ref.log_prob(x).sum().view(1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(cb.mean(params).flatten(), ref.mean, rtol=1e-9, atol=1e-9)
    # the normaliser by quadrature, also where torch's probs clamp would bite (|η| = 30)
    grid = torch.linspace(0, 1, 400001, dtype=torch.float64)
    for e in (-30.0, -0.005, 0.7, 30.0):
        kernel = torch.exp(grid * e - torch.nn.functional.softplus(torch.tensor(e, dtype=torch.float64)))
        z = torch.trapezoid(kernel, grid)
        assert float(cb.log_norm(torch.tensor(e, dtype=torch.float64))) == pytest.approx(-math.log(z), abs=1e-6)
    # float32 near η = 0 (the closed form cancels there): finite and continuous
    near = torch.tensor([-1e-3, -1e-6, 0.0, 1e-6, 1e-3])
    assert torch.isfinite(cb.log_norm(near)).all() and (cb.log_norm(near) - math.log(2)).abs().max() < 1e-6
    # samples by inverse CDF: their mean matches, for moderate and extreme η
    g = torch.Generator().manual_seed(0)
    for e in (-40.0, -2.0, 0.0, 2.0, 40.0):
        p = torch.full((1, 1, 400, 500), e, dtype=torch.float64)
        s = cb.sample(p, generator=g)
        assert s.min() >= 0 and s.max() <= 1
        assert float(s.mean()) == pytest.approx(float(cb.mean(p[:, :, :1, :1])), abs=3e-3)


@pytest.mark.parametrize("mixtures", [1, 4])
def test_discretized_logistic_is_a_mass_on_256_levels(mixtures):
    from vaerun.likelihoods import DiscretizedLogistic

    torch.manual_seed(mixtures)
    lik = DiscretizedLogistic(1, mixtures=mixtures)
    n = lik.params_per_channel                                           # K logits (none for K = 1), K means, K log-scales
    assert n == (2 if mixtures == 1 else 3 * mixtures)
    params = torch.randn(5, n, 1, 1, dtype=torch.float64) * 2
    params[:, n - mixtures:] -= 2.5                                      # some sharp components
    levels = torch.arange(256, dtype=torch.float64) / 255
    probs = torch.stack([lik.log_prob(params, torch.full((5, 1, 1, 1), float(v), dtype=torch.float64))
                         for v in levels]).exp()                         # (256, 5)
    torch.testing.assert_close(probs.sum(0), torch.ones(5, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    # independent: Σ_k π_k (F(upper) − F(lower)) with the tails in the edge bins
    k = mixtures
    pi = torch.softmax(params[:, :k, 0, 0], 1) if k > 1 else torch.ones(5, 1, dtype=torch.float64)
    mu, s = torch.tanh(params[:, n - 2 * k:n - k, 0, 0]), params[:, n - k:, 0, 0].clamp(min=-7).exp()
    for i in (0, 1, 77, 128, 254, 255):
        xs = 2 * float(levels[i]) - 1
        upper = torch.tensor(math.inf if i == 255 else xs + 1 / 255, dtype=torch.float64)
        lower = torch.tensor(-math.inf if i == 0 else xs - 1 / 255, dtype=torch.float64)
        want = (pi * (torch.sigmoid((upper - mu) / s) - torch.sigmoid((lower - mu) / s))).sum(1)
        torch.testing.assert_close(probs[i], want, rtol=1e-4, atol=1e-6)
    # samples land on the 256 levels, and the mean is the mixture mean
    x = lik.sample(params[:1].expand(1, -1, 300, 300).contiguous(), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x * 255, (x * 255).round()) and x.min() >= 0 and x.max() <= 1
    assert float(x.mean()) == pytest.approx(float(lik.mean(params[:1])), abs=0.01)
    # 3 channels are independent mixtures in the channel-major layout
    rgb = DiscretizedLogistic(3, mixtures=mixtures)
    p3 = torch.randn(2, 3 * n, 4, 4, dtype=torch.float64)
    x3 = torch.randint(0, 256, (2, 3, 4, 4)).double() / 255
    split = sum(lik.log_prob(p3[:, c * n:(c + 1) * n], x3[:, c:c + 1]) for c in range(3))
    torch.testing.assert_close(rgb.log_prob(p3, x3), split)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_one_logistics_closed_form_gradient_is_autograds(dtype, tol):
    """DiscretizedLogistic.log_prob_grad at K = 1 is written out (the written-out MLP pass's
    output gradient); it must be autograd's through log_prob in every branch: the edge bins,
    inner bins by the CDF difference and by the centre density, log-scales below the floor and
    softplus past its linear threshold."""
    from vaerun.likelihoods import DiscretizedLogistic, Likelihood

    torch.manual_seed(0)
    lik = DiscretizedLogistic(2, mixtures=1)
    x = torch.randint(0, 256, (48, 2, 6, 6)).to(dtype) / 255
    x[:8], x[8:16] = 0, 1                                                   # edge bins
    p = torch.randn(48, 4, 6, 6, dtype=dtype) * 2
    p[16:24, 1::2] = -9                                                     # log-scales below the floor (-7)
    p[24:32, 0::2], p[24:32, 1::2] = 3, -6.9                                # sharp, far from x: centre density
    p[32:40] *= 15                                                          # softplus beyond 20
    lp, grad = lik.log_prob_grad(p, x)
    want_lp, want = Likelihood.log_prob_grad(lik, p, x)
    torch.testing.assert_close(lp, want_lp, rtol=tol, atol=tol)
    torch.testing.assert_close(grad, want, rtol=tol, atol=tol * float(want.abs().max()))
    # every branch was taken
    q = p.view(48, 2, 2, 6, 6)
    mu, inv_s = torch.tanh(q[:, :, 0]), torch.exp(-q[:, :, 1].clamp(min=-7))
    c, inner = 2 * x - 1 - mu, (x > 0) & (x < 1)
    delta = torch.sigmoid(inv_s * (c + 1 / 255)) - torch.sigmoid(inv_s * (c - 1 / 255))
    assert (inner & (delta > 1e-5)).any() and (inner & (delta <= 1e-5)).any() and (q[:, :, 1] < -7).any()
    assert (inv_s * (c + 1 / 255) > 20).any() and (inv_s * (c - 1 / 255) > 20).any()


def test_capacity_annealing_pulls_kl_towards_c():
    """Burgess et al. 2018: recon + γ|KL − C|; its gradient pushes KL up below C, down above it."""
    from vaerun.schedules import Capacity

    c = Capacity(c_max=10.0, steps=100, delay_steps=20)
    assert [c(0), c(20), c(70), c(120), c(500)] == [0.0, 0.0, 5.0, 10.0, 10.0]
    for kl_value, sign in ((2.0, -1), (9.0, 1)):
        kl = torch.full((4, 3), kl_value / 3, requires_grad=True)
        t = Terms(torch.full((4,), 50.0), kl, torch.zeros(4, 3), torch.zeros(4, 3))
        loss = training_loss(t, beta=1.0, free_bits=0.0, capacity=(100.0, 5.0))
        assert float(loss.detach()) == pytest.approx(50.0 + 100.0 * abs(kl_value - 5.0), rel=1e-6)
        loss.backward()
        assert torch.sign(kl.grad).unique().tolist() == [sign]   # descent raises KL below C, lowers it above
    # β scales the whole capacity term; free bits feed it the clamped KL
    t = Terms(torch.zeros(2), torch.full((2, 4), 0.01), torch.zeros(2, 4), torch.zeros(2, 4))
    assert float(training_loss(t, 0.5, 0.25, (10.0, 3.0))) == pytest.approx(0.5 * 10.0 * abs(4 * 0.25 - 3.0))
    assert float(training_loss(t, 1.0, 0.0, None)) == pytest.approx(0.04)
