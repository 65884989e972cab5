"""Contracts over the registries: every model x likelihood, 1 and 3 channels, odd image sizes."""
from __future__ import annotations

import copy

import pytest
import torch

from vaerun.likelihoods import LIKELIHOODS, build_likelihood
from vaerun.models import MODELS, build_vae, place
from vaerun.objectives import elbo_terms

LIKELIHOOD_VARIANTS = [("bernoulli", {}), ("gaussian", {"learn_sigma": "none"}), ("gaussian", {"learn_sigma": "global"}),
                       ("gaussian", {"learn_sigma": "channel"}), ("gaussian", {"learn_sigma": "pixel"}),
                       ("continuous_bernoulli", {}), ("logistic", {"mixtures": 1}), ("logistic", {"mixtures": 3})]


def test_variants_cover_every_likelihood():
    assert {name for name, _ in LIKELIHOOD_VARIANTS} == set(LIKELIHOODS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("lik,kw", LIKELIHOOD_VARIANTS)
@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 17, 17), (1, 28, 28)])
def test_vae_shapes_and_gradients(model, lik, kw, shape):
    torch.manual_seed(0)
    likelihood = build_likelihood(lik, shape[0], **kw)
    vae = build_vae(model, shape, likelihood, latent_dim=3, hidden=[16], channels=[4, 8], kernel=4,
                    ar_layers=2, ar_kernel=3, ar_width=6, ar_cond_channels=2)
    x = torch.rand(5, *shape).round()
    params = vae.decode(torch.randn(5, 3), x)  # x: teacher forcing for the autoregressive decoder
    assert params.shape == (5, shape[0] * likelihood.params_per_channel, *shape[1:])
    t = elbo_terms(vae, x)
    assert t.recon.shape == (5,) and t.kl_per_dim.shape == (5, 3)
    (t.recon.mean() + t.kl.mean()).backward()
    assert all(p.grad is not None for p in vae.parameters())
    assert vae.sample(4).shape == (4, *shape)
    assert vae.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
@pytest.mark.parametrize("size", [8, 13, 28, 32])
def test_conv_decoder_restores_any_size(kernel, size):
    vae = build_vae("conv", (1, size, size), build_likelihood("bernoulli", 1), latent_dim=2, hidden=[],
                    channels=[4, 4], kernel=kernel)
    assert vae.decode(torch.randn(2, 2)).shape == (2, 1, size, size)


def test_conv_rejects_a_stack_too_deep_for_the_image():
    with pytest.raises(ValueError, match="stride-2 stages"):
        build_vae("conv", (1, 4, 4), build_likelihood("bernoulli", 1), latent_dim=2, hidden=[],
                  channels=[4, 4, 4, 4, 4], kernel=4)


@pytest.mark.parametrize("init", ["xavier", "kaiming"])
def test_init_schemes_change_weights_and_zero_biases(init):
    lik = build_likelihood("bernoulli", 1)
    torch.manual_seed(0)
    default = build_vae("mlp", (1, 8, 8), lik, latent_dim=2, hidden=[16], channels=[4], kernel=4)
    torch.manual_seed(0)
    other = build_vae("mlp", (1, 8, 8), lik, latent_dim=2, hidden=[16], channels=[4], kernel=4, init=init)
    w0, w1 = default.encoder.body[1].weight, other.encoder.body[1].weight
    assert not torch.equal(w0, w1)
    assert torch.all(other.encoder.body[1].bias == 0)


@pytest.mark.parametrize("lik,kw", LIKELIHOOD_VARIANTS)
def test_place_makes_the_conv_model_channels_last_on_a_cpu_and_changes_no_number(lik, kw):
    """place(): the conv model's 4-D weights channels-last on a CPU (oneDNN's NHWC kernels), the
    same ELBO terms and gradients as the NCHW model, and NCHW decoder outputs for the likelihood
    (C·K > 1 maps included); the other models are left as built."""
    torch.manual_seed(0)
    shape = (3, 16, 16)
    likelihood = build_likelihood(lik, 3, **kw)
    vae = build_vae("conv", shape, likelihood, latent_dim=3, hidden=[16], channels=[4, 8], kernel=4)
    nhwc = place(copy.deepcopy(vae), torch.device("cpu"))
    weights = [p for p in nhwc.parameters() if p.dim() == 4]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                           for p in weights)
    x = torch.rand(5, *shape).round()
    z = torch.randn(5, 3)
    out = nhwc.decode(z, x)
    assert out.is_contiguous() and out.shape == (5, 3 * likelihood.params_per_channel, 16, 16)
    torch.testing.assert_close(out, vae.decode(z, x))
    terms = []
    for m in (vae, nhwc):
        torch.manual_seed(1)
        t = elbo_terms(m, x)
        (t.recon.mean() + t.kl.mean()).backward()
        terms.append(t)
    torch.testing.assert_close(terms[1].recon, terms[0].recon)
    for a, b in zip(nhwc.parameters(), vae.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    for name in ("mlp", "autoregressive"):
        other = build_vae(name, shape, likelihood, latent_dim=3, hidden=[16], channels=[4, 8], kernel=4,
                          ar_layers=2, ar_kernel=3, ar_width=6, ar_cond_channels=2)
        assert all(p.is_contiguous() for p in place(other, torch.device("cpu")).parameters())
