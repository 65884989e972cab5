"""The PixelCNN decoder: the autoregressive property, channel ordering for RGB, every likelihood,
sampling pixel by pixel for a whole batch."""
from __future__ import annotations

import random

import pytest
import torch

from vaerun.likelihoods import build_likelihood
from vaerun.models import build_vae
from vaerun.models.autoregressive import MaskedConv2d, PixelCNNDecoder


def decoder(c=1, k=1, layers=4, kernel=5, size=8, cond="spatial"):
    torch.manual_seed(0)
    return PixelCNNDecoder(3, (c, size, size), k, width=12, layers=layers, kernel=kernel, cond_channels=4,
                           cond=cond).double()


def flat(c: int, size: int, pos: int) -> tuple[int, int, int]:
    """Raster order with channels innermost: position -> (row, col, channel)."""
    pix, ch = divmod(pos, c)
    return pix // size, pix % size, ch


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("layers,kernel,cond", [(1, 3, "spatial"), (4, 5, "spatial"), (6, 3, "spatial"),
                                                (4, 5, "global")])
def test_outputs_never_depend_on_the_current_or_later_inputs(c, layers, kernel, cond):
    size, dec = 6, None
    dec = decoder(c=c, k=2, layers=layers, kernel=kernel, size=size, cond=cond)
    z = torch.randn(2, 3, dtype=torch.float64)
    rng = random.Random(c * 100 + layers)
    for _ in range(8):
        pos = rng.randrange(c * size * size)
        i, j, ch = flat(c, size, pos)
        x = torch.rand(2, c, size, size, dtype=torch.float64)
        y = x.clone()
        for later in range(pos, c * size * size):   # change input pos and everything after it
            a, b, d = flat(c, size, later)
            y[:, d, a, b] = torch.rand(2, dtype=torch.float64)
        out_x, out_y = dec(z, x), dec(z, y)          # (B, C·K, H, W), channel-major
        for before in range(pos + 1):                # outputs at positions <= pos (pos predicts itself from x_<pos)
            a, b, d = flat(c, size, before)
            torch.testing.assert_close(out_x[:, d * 2:(d + 1) * 2, a, b], out_y[:, d * 2:(d + 1) * 2, a, b])


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
@pytest.mark.parametrize("mask,groups", [("A", 1), ("B", 1), ("A", 3), ("B", 3)])
def test_the_band_convolution_is_the_full_masked_convolution(kernel, mask, groups):
    """MaskedConv2d skips the kernel rows below the centre (all masked): its output and every
    gradient are those of the whole masked kernel, on images that are not square."""
    torch.manual_seed(kernel)
    conv = MaskedConv2d(6, 9, kernel, mask, groups).double()
    x = torch.randn(2, 6, 7, 10, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 9, 7, 10, dtype=torch.float64)
    out = conv(x)
    grads = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    ref = torch.nn.functional.conv2d(x, conv.weight * conv.mask, conv.bias, padding=kernel // 2)
    ref_grads = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    assert out.shape == ref.shape == (2, 9, 7, 10)
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert grads[1][:, :, kernel // 2 + 1:].abs().sum() == 0  # masked rows get no gradient


@pytest.mark.parametrize("c", [1, 3])
def test_changing_a_pixel_changes_later_outputs(c):
    size = 6
    dec = decoder(c=c, layers=4, kernel=5, size=size)
    z = torch.randn(2, 3, dtype=torch.float64)
    x = torch.rand(2, c, size, size, dtype=torch.float64)
    i, j, ch = 2, 2, 0
    y = x.clone()
    y[:, ch, i, j] += 1.0
    diff = (dec(z, x) - dec(z, y)).abs().amax(dim=0)  # (C, H, W)
    if c == 3:
        assert diff[1, i, j] > 0 and diff[2, i, j] > 0  # G and B of the same pixel see R
    assert diff[:, i, j + 1].max() > 0 and diff[:, i + 1, j].max() > 0
    assert diff[:, :i].max() == 0 and diff[ch, i, j] == 0


def test_receptive_field_grows_with_layers_and_kernel():
    def reach(layers, kernel):
        dec = decoder(layers=layers, kernel=kernel, size=16)
        z = torch.randn(1, 3, dtype=torch.float64)
        x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
        y = x.clone()
        y[0, 0, 0, 0] += 1
        changed = (dec(z, x) - dec(z, y)).abs()[0, 0] > 0
        return int(changed.sum())

    assert reach(1, 3) < reach(3, 3) < reach(3, 5)


def test_global_conditioning_cannot_say_where():
    """ar_cond=global: z moves every position by the same conditioning vector (a function of z
    alone), so z's effect on the first layer's pre-activations is the same everywhere; the
    spatial map varies by position."""
    def first_layer_cond(cond):
        dec = decoder(layers=1, kernel=3, size=6, cond=cond)
        z = torch.randn(2, 3, dtype=torch.float64)
        c = dec.cond_map(z).view(2, dec.cond_channels, *dec.cond_hw)
        return dec.layers[0].cond(c)                         # (B, 2·width, H|1, W|1)

    g, s = first_layer_cond("global"), first_layer_cond("spatial")
    assert g.shape[-2:] == (1, 1) and s.shape[-2:] == (6, 6)
    assert s.std(dim=(-2, -1)).max() > 0
    with pytest.raises(ValueError, match="spatial or global"):
        decoder(cond="everywhere")


@pytest.mark.parametrize("lik,kw", [("bernoulli", {}), ("gaussian", {"learn_sigma": "pixel"}),
                                    ("gaussian", {"learn_sigma": "global"}), ("continuous_bernoulli", {}),
                                    ("logistic", {"mixtures": 2})])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)])
def test_vae_with_the_pixelcnn_decoder_trains_and_samples(lik, kw, shape):
    torch.manual_seed(0)
    likelihood = build_likelihood(lik, shape[0], **kw)
    vae = build_vae("autoregressive", shape, likelihood, latent_dim=2, hidden=[16], channels=[4], kernel=4,
                    ar_layers=2, ar_kernel=3, ar_width=8, ar_cond_channels=2)
    x = torch.rand(4, *shape).round()
    from vaerun.objectives import elbo_terms

    t = elbo_terms(vae, x)
    (t.recon.mean() + t.kl.mean()).backward()
    assert torch.isfinite(t.recon).all() and all(p.grad is not None for p in vae.parameters())
    samples = vae.sample(3)
    assert samples.shape == (3, *shape) and samples.min() >= 0 and samples.max() <= 1
    assert vae.reconstruct(x).shape == x.shape


# ---------------------------------------------------------------- the collapse-study presets
from conftest import SHARED_DATA, compose, needs_mnist  # noqa: E402
from vaerun.confcheck import available_options  # noqa: E402

PRESETS = [p for p in available_options("experiment") if p.startswith("collapse/")]


def test_the_collapse_presets_exist_and_compose():
    assert {f"collapse/{n}" for n in ("ar_beta1", "ar_warmup", "ar_freebits", "ar_cyclical", "ar_weak")} <= set(PRESETS)
    cfgs = {p: compose([f"experiment={p}", f"dataset.root={SHARED_DATA}"])[0] for p in PRESETS}
    for cfg in cfgs.values():
        assert cfg.dataset.name.value == "mnist" and cfg.model.name.value == "autoregressive" and cfg.beta == 1.0
    assert cfgs["collapse/ar_warmup"].schedule.name.value == "linear"
    assert cfgs["collapse/ar_cyclical"].schedule.name.value == "cyclical"
    assert cfgs["collapse/ar_freebits"].free_bits == 0.5
    assert all(c.model.ar_cond.value == "global" for c in cfgs.values())
    assert cfgs["collapse/ar_weak"].model.ar_layers == 1 < cfgs["collapse/ar_beta1"].model.ar_layers


@pytest.mark.slow
@needs_mnist
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_trains_a_few_steps(tmp_path, preset):
    from vaerun.runs import RunFolder
    from vaerun.session import train

    cfg, resolved = compose([f"experiment={preset}", f"dataset.root={SHARED_DATA}", "dataset.subset=128",
                             "dataset.val_size=64", "max_steps=3", "num_samples=1", "eval_batch_size=64",
                             "progress=log"])
    summary = train(cfg, RunFolder(tmp_path / "run"), resolved)
    assert summary["status"] == "completed" and summary["steps"] == 3


@pytest.mark.parametrize("lik,c,cond", [("bernoulli", 1, "spatial"), ("gaussian", 3, "global")])
def test_cropped_sampling_equals_whole_image_sampling(lik, c, cond):
    """generate() runs each pass through the cone of rows a pixel depends on; with the same
    random stream it draws exactly the images the whole-image passes draw."""
    torch.manual_seed(0)
    likelihood = build_likelihood(lik, c, **({"learn_sigma": "pixel"} if lik == "gaussian" else {}))
    dec = PixelCNNDecoder(3, (c, 9, 7), likelihood.params_per_channel, width=6, layers=2, kernel=3,
                          cond_channels=2, cond=cond)
    assert dec.reach == 2
    z = torch.randn(4, 3)
    rows = []
    handle = dec.head.register_forward_hook(lambda m, i, o: rows.append(o.shape[2]))
    a = dec.generate(z, likelihood, torch.Generator().manual_seed(5))          # default on a CPU: the cone
    b = dec.generate(z, likelihood, torch.Generator().manual_seed(5), crop=False)
    handle.remove()
    n = 9 * 7 * c                                                               # one pass per row, column, channel
    assert rows == [1] * n + [9] * n
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c,layers,kernel,cond", [(1, 3, 5, "spatial"), (3, 2, 3, "global"), (1, 4, 3, "spatial"),
                                                  (1, 1, 7, "spatial")])
def test_a_row_through_the_cone_equals_the_whole_image_pass(c, layers, kernel, cond):
    """row(i) computes each layer only on the rows later layers read (zeros above the image's
    top edge, none below row i): for every row, rows near the top and deep inside alike, the
    same parameters as the whole-image pass, whatever x holds below row i."""
    dec = decoder(c=c, k=2, layers=layers, kernel=kernel, size=11, cond=cond)
    z = torch.randn(3, 3, dtype=torch.float64)
    x = torch.rand(3, c, 11, 11, dtype=torch.float64).round()
    cond_map = dec.condition(z)
    whole = dec.run(cond_map, x)                                      # (B, C·K, H, W)
    for i in range(11):
        below = x.clone()
        below[:, :, i + 1:] = torch.rand_like(below[:, :, i + 1:])   # never read
        row = dec.row(cond_map, below, i)
        assert row.shape == (3, 2 * c, 1, 11)
        torch.testing.assert_close(row[:, :, 0], whole[:, :, i])
