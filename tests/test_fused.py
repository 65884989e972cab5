"""The MLP VAE's written-out training pass gives autograd's loss, terms and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from vaerun.likelihoods import LIKELIHOODS, build_likelihood
from vaerun.models import build_vae
from vaerun.models.fused import fused_pass
from vaerun.models.layers import ACTIVATIONS
from vaerun.objectives import elbo_terms, training_loss


def _vae(activation="relu", likelihood="bernoulli", hidden=(32, 16), shape=(1, 6, 5), **lk):
    torch.manual_seed(0)
    lik = build_likelihood(likelihood, shape[0], **lk)
    return build_vae("mlp", shape, lik, latent_dim=4, hidden=list(hidden), channels=[8], kernel=3,
                     activation=activation)


def _data(likelihood, shape=(1, 6, 5), b=7):
    g = torch.Generator().manual_seed(1)
    x = torch.rand((b, *shape), generator=g)
    return x.round() if likelihood == "bernoulli" else (x * 255).round() / 255


def _compare(vae, x, beta=1.0, free_bits=0.0, capacity=None, rtol=1e-10, dtype=torch.float64):
    """In float64 the written-out pass and autograd agree to rounding (1e-10); float32 below."""
    vae, x = vae.to(dtype), x.to(dtype)
    torch.manual_seed(7)
    terms = elbo_terms(vae, x)
    loss = training_loss(terms, beta, free_bits, capacity)
    ref = torch.autograd.grad(loss, list(vae.parameters()))
    pass_ = fused_pass(vae)
    assert pass_ is not None
    for p in vae.parameters():
        p.grad = None
    torch.manual_seed(7)  # the same ε
    floss, fterms = pass_(x, beta, free_bits, capacity)
    torch.testing.assert_close(floss, loss.detach(), rtol=rtol, atol=0.0)
    for a, b in ((fterms.recon, terms.recon), (fterms.kl_per_dim, terms.kl_per_dim), (fterms.mu, terms.mu)):
        torch.testing.assert_close(a, b.detach(), rtol=rtol, atol=rtol)
    for (name, p), g in zip(vae.named_parameters(), ref):
        assert p.grad is not None, name
        assert p.grad.is_contiguous() and p.grad.shape == p.shape, name
        # entries that are sums with cancellation differ more than rtol: bound them by the tensor's scale
        atol = rtol * float(g.abs().max())
        torch.testing.assert_close(p.grad, g, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_matches_autograd(activation):
    _compare(_vae(activation), _data("bernoulli"))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "continuous_bernoulli", "logistic"])
def test_every_likelihood_without_parameters_matches_autograd(likelihood):
    vae = _vae(likelihood=likelihood, shape=(3, 4, 4))
    _compare(vae, _data(likelihood, (3, 4, 4)))


def test_pixel_sigma_gaussian_matches_autograd():  # the decoder predicts log σ: two maps per channel
    vae = _vae(likelihood="gaussian", shape=(2, 4, 4), learn_sigma="pixel")
    _compare(vae, _data("gaussian", (2, 4, 4)))


@pytest.mark.parametrize("beta,free_bits,capacity", [(0.3, 0.0, None), (4.0, 0.5, None), (1.0, 2.0, None),
                                                     (2.0, 0.0, (10.0, 3.0)), (1.0, 0.2, (5.0, 50.0))])
def test_objective_options_match_autograd(beta, free_bits, capacity):
    vae = _vae()
    x = _data("bernoulli")
    _compare(vae, x, beta, free_bits, capacity)


def test_free_bits_zero_the_kl_gradient_of_dimensions_below_lambda():
    from vaerun.objectives import kl_weights

    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # batch means 0.2 and 3.0
    w = kl_weights(kl, 2.0, 0.5)
    assert torch.equal(w, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_float32_mnist_sized_pass_matches_autograd():  # the training case: float32, 784-400-20, batch 128
    vae = _vae(hidden=(400,), shape=(1, 28, 28))
    _compare(vae, _data("bernoulli", (1, 28, 28), b=128), rtol=1e-5, dtype=torch.float32)


def test_one_hidden_layer_and_deep_stacks():
    _compare(_vae(hidden=(16,)), _data("bernoulli"))
    _compare(_vae(hidden=(24, 16, 12, 8)), _data("bernoulli"))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_bf16_pass_is_autocast_autograd_bit_for_bit(activation, likelihood):
    """precision=bf16: the layers' products, activations and their backward in bfloat16 with
    autocast's casts, everything between the networks in float32. The same ATen kernels on the
    same inputs as autograd through ``elbo_terms(..., torch.bfloat16)``: identical loss, terms and
    gradients (float32 tensors), and not those of the float32 pass."""
    vae = _vae(activation, likelihood, hidden=(48, 24), shape=(1, 12, 10))
    x = _data(likelihood, (1, 12, 10), b=32)
    torch.manual_seed(7)
    terms = elbo_terms(vae, x, torch.bfloat16)
    loss = training_loss(terms, 0.7, 0.05)
    ref = torch.autograd.grad(loss, list(vae.parameters()))
    for dtype, same in ((torch.bfloat16, True), (None, False)):
        pass_ = fused_pass(vae, dtype)
        for p in vae.parameters():
            p.grad = None
        torch.manual_seed(7)
        floss, fterms = pass_(x, 0.7, 0.05)
        assert fterms.mu.dtype == floss.dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 and p.grad.is_contiguous() for p in vae.parameters())
        assert torch.equal(floss, loss.detach()) is same
        assert torch.equal(fterms.mu, terms.mu.detach()) is same
        assert torch.equal(fterms.recon, terms.recon.detach()) is same
        for (name, p), g in zip(vae.named_parameters(), ref):
            if same:
                assert torch.equal(p.grad, g), name
            else:  # float32 differs from bf16 by its rounding (up to ~5 % here: ReLU masks flip), not more
                assert float((p.grad - g).norm()) <= 0.1 * float(g.norm()), name
        if not same:
            assert not all(torch.equal(p.grad, g) for p, g in zip(vae.parameters(), ref))


@pytest.mark.parametrize("case", ["conv", "learned_sigma"])
def test_no_pass_where_it_does_not_apply(case):
    if case == "conv":
        torch.manual_seed(0)
        vae = build_vae("conv", (1, 8, 8), build_likelihood("bernoulli", 1), latent_dim=4, hidden=[16],
                        channels=[4, 8], kernel=3)
    else:
        vae = _vae(likelihood="gaussian", learn_sigma="global")
    assert fused_pass(vae) is None


def test_likelihood_registry_is_covered():
    assert {"bernoulli", "gaussian", "continuous_bernoulli", "logistic"} <= set(LIKELIHOODS)


@pytest.mark.parametrize("overrides,used", [([], True), (["fused_mlp=false"], False), (["model=conv"], False),
                                            (["compile=true"], False), (["precision=bf16"], True),
                                            (["likelihood=gaussian", "likelihood.learn_sigma=global"], False)])
def test_build_uses_the_pass_for_mlp_models_unless_switched_off(overrides, used):
    from conftest import TINY, compose
    from vaerun.train import build

    cfg, _ = compose([*TINY, *overrides])
    assert (build(cfg).fused is not None) is used


@pytest.mark.parametrize("activation", ["relu", "tanh", "elu"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("unit_input", [False, True])
@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_gradient_bound_bounds_every_gradient(activation, likelihood, unit_input, autocast):
    """The finiteness guard trusts gradient_bound(): no gradient entry may exceed it, also where
    it takes the norms of x in [0, 1] and of Bernoulli's x − σ(η) as known (unit_input), and
    in bf16, whose factors and products are rounded to 8 bits."""
    vae = _vae(activation, likelihood, hidden=(32, 16), shape=(2, 4, 4))
    pass_ = fused_pass(vae, autocast)
    for scale in (1.0, 4.0, 0.1):  # ordinary, large and small weights
        with torch.no_grad():
            for p in vae.parameters():
                p.mul_(scale)
        x = _data(likelihood, (2, 4, 4), b=9)
        torch.manual_seed(5)
        pass_(x, 1.0, 0.0, unit_input=unit_input)
        bound = float(pass_.gradient_bound())
        largest = max(float(p.grad.abs().max()) for p in vae.parameters())
        assert math.isfinite(bound) and largest <= bound
        torch.manual_seed(5)
        pass_(x, 1.0, 0.0)
        assert bound >= float(pass_.gradient_bound())  # known norms are upper bounds of the read ones


def test_the_known_bernoulli_gradient_norm_covers_a_saturated_output():
    """Every output logit at +12 while every pixel is 0: each entry of x − σ(η) is about −1, so each
    output-bias gradient is about 1 (the batch mean): the largest gradient there can be, and the
    bound, which takes ‖x − σ(η)‖/n as √(numel)/n without reading it, must still cover it."""
    for autocast, b in ((None, 16), (torch.bfloat16, 48)):  # 1/48 is not a bf16 number: it rounds up
        vae = _vae("relu", hidden=(8,), shape=(1, 6, 5))
        with torch.no_grad():
            vae.decoder.net[-1].weight.zero_(), vae.decoder.net[-1].bias.fill_(12.0)
        pass_ = fused_pass(vae, autocast)
        pass_(torch.zeros(b, 1, 6, 5), 1.0, 0.0, unit_input=True)
        largest = float(vae.decoder.net[-1].bias.grad.abs().max())
        assert largest > 0.99
        assert largest <= float(pass_.gradient_bound())


def _tanh_step(need_norm: bool, w_out: float):
    """One train_step of a tanh MLP whose decoder output layer has weights w_out and whose
    hidden decoder layer outputs 0 (zero weights and biases): the loss stays log 2 per pixel,
    but the signal back through the output layer, 0.5/B * 30 pixels * w_out, overflows float32
    for w_out = 1e38 and the hidden layer's gradients become inf or NaN."""
    from vaerun.optim import build_optimizer
    from vaerun.train import train_step

    vae = _vae("tanh", hidden=(8,), shape=(1, 6, 5))
    last, hidden = vae.decoder.net[-1], vae.decoder.net[0]
    with torch.no_grad():
        hidden.weight.zero_(), hidden.bias.zero_(), last.bias.zero_(), last.weight.fill_(w_out)
    opt = build_optimizer(vae.parameters(), "adam", lr=1e-3)
    before = [p.detach().clone() for p in vae.parameters()]
    torch.manual_seed(3)
    pass_ = fused_pass(vae)
    loss, _, norm, ok = train_step(vae, opt, torch.ones(2, 1, 6, 5), 1.0, 0.0, 0.0, fused=pass_, need_norm=need_norm)
    moved = any(not torch.equal(a, p) for a, p in zip(before, vae.parameters()))
    return float(loss), norm, ok, moved, float(pass_.gradient_bound()), vae


def test_the_guard_uses_the_bound_only_where_it_proves_the_gradients_finite():
    # ordinary weights: the bound proves them finite, no norm is computed, the same step is taken
    loss, norm, ok, moved, bound, vae = _tanh_step(False, 0.1)
    _, norm_ref, ok_ref, _, _, vae_ref = _tanh_step(True, 0.1)
    assert ok and moved and norm is None and bound <= 1e15
    assert max(float(p.grad.abs().max()) for p in vae.parameters()) <= bound  # the output bias: h = 0 there
    assert ok_ref and float(norm_ref) > 0
    for p, q in zip(vae.parameters(), vae_ref.parameters()):
        assert torch.equal(p, q)
    # the backward overflows with a finite loss: the bound is not finite, the norm decides, no step
    loss, norm, ok, moved, bound, _ = _tanh_step(False, 1e38)
    assert math.isfinite(loss) and not math.isfinite(bound)
    assert not ok and not moved and norm is not None and not math.isfinite(float(norm))


def test_gradient_bound_covers_a_bias_whose_layer_input_is_zero():
    """Only the decoder's output bias gets a gradient (every weight and the encoder's head are
    zero): its g^T h bound is 0, the bias's √n‖g‖ is not."""
    vae = _vae("tanh", hidden=(8,), shape=(1, 6, 5))
    with torch.no_grad():
        for p in [*vae.decoder.parameters(), *vae.encoder.head.parameters()]:
            p.zero_()
    pass_ = fused_pass(vae)
    pass_(torch.ones(4, 1, 6, 5), 1.0, 0.0)
    nonzero = [name for name, p in vae.named_parameters() if p.grad.abs().max() > 0]
    assert nonzero == ["decoder.net.2.bias"]
    assert float(vae.decoder.net[2].bias.grad.abs().max()) <= float(pass_.gradient_bound())


def test_a_bf16_run_through_the_pass_is_the_autograd_bf16_run(tmp_path):
    """precision=bf16 with the written-out pass (fused_mlp=true) and through autograd
    (fused_mlp=false): the same logged losses, terms and validation numbers, step for step
    (the pass is autocast autograd's arithmetic; tests/test_reference.py compares float32 runs
    with a plain loop)."""
    from conftest import TINY, compose
    from vaerun.runs import RunFolder
    from vaerun.session import train

    runs = {}
    for fused in ("true", "false"):
        cfg, resolved = compose([*TINY, "precision=bf16", f"fused_mlp={fused}", "max_steps=12", "log_every=1",
                                 "eval_every=6", "sample_every=1000", "schedule=linear", "schedule.warmup_steps=4",
                                 "free_bits=0.05", "optimizer.lr=3e-3", "pictures.latents=false",
                                 "pictures.traverse=false"])
        assert train(cfg, RunFolder(tmp_path / fused), resolved)["status"] == "completed"
        runs[fused] = RunFolder(tmp_path / fused)
    keys = ("loss", "recon", "kl", "kl_per_dim")
    for split, n in (("train", 12), ("val", 2)):
        a, b = runs["true"].read_metrics(split), runs["false"].read_metrics(split)
        assert len(a) == len(b) == n
        assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b], split
    train_loss = [r["recon"] for r in runs["true"].read_metrics("train")]
    assert train_loss[-1] < train_loss[0]  # a real trajectory: it trains
