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
