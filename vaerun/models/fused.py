"""The MLP VAE's training pass written out: forward and backward without an autograd graph.

For the MLP model eager autograd costs more than its arithmetic: each of the ~30 small operations
of a step (activations, reparameterization, KL, the likelihood, the loss) records a node, keeps
its inputs and runs its own backward kernel. Writing the pass out (the layer gradients from the
matrix products, the likelihood's gradient in closed form) makes an MNIST MLP step 12-16 %
shorter on 2 CPU cores (docs/performance.md). The numbers are autograd's to float rounding:
the same ε draws, the same ATen backward kernels for the activations, the objective's own
gradient (:func:`vaerun.objectives.kl_weights`); tests/test_fused.py compares every gradient
with autograd's, for every activation, likelihood and objective option.

Applies to MLP encoders and decoders built from Linear layers and the activations of
``layers.ACTIVATIONS``, with a likelihood that owns no trainable parameters; :func:`fused_pass`
returns None for anything else and training uses autograd.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn as nn

from vaerun.models.decoders import MLPDecoder
from vaerun.models.encoders import MLPEncoder
from vaerun.models.vae import VAE
from vaerun.objectives import Terms, gaussian_kl, gaussian_kl_grad, kl_weights, training_loss

_aten = torch.ops.aten


def _act_backward(act: nn.Module, g: torch.Tensor, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """The activation's backward, as autograd's derivative formula calls it (same ATen kernel)."""
    if isinstance(act, nn.ReLU):
        return _aten.threshold_backward(g, post, 0)
    if isinstance(act, nn.LeakyReLU):
        return _aten.leaky_relu_backward(g, pre, act.negative_slope, False)
    if isinstance(act, nn.ELU):
        return _aten.elu_backward(g, act.alpha, 1, 1, False, pre)
    if isinstance(act, nn.GELU):
        return _aten.gelu_backward(g, pre, approximate=act.approximate)
    if isinstance(act, nn.SiLU):
        return _aten.silu_backward(g, pre)
    return _aten.tanh_backward(g, post)  # nn.Tanh


_ACTS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh)


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without its dispatch (~3 us) where ``t`` has that dtype already."""
    return t if t.dtype == dtype else t.to(dtype)


class Stack:
    """A chain of Linear layers, each optionally followed by an activation, run without autograd.

    ``forward`` returns the output and what ``backward`` needs; ``backward`` writes every
    weight's and bias's ``.grad`` and returns the gradient of the input (when asked)."""

    def __init__(self, modules: list[nn.Module]):
        self.layers: list[tuple[nn.Linear, Optional[nn.Module]]] = []
        for m in modules:
            if isinstance(m, nn.Linear):
                self.layers.append((m, None))
            elif isinstance(m, _ACTS) and self.layers and self.layers[-1][1] is None and not getattr(m, "inplace", False):
                self.layers[-1] = (self.layers[-1][0], m)
            else:
                raise TypeError(f"no fused pass for {type(m).__name__}")

    def forward(self, h: torch.Tensor, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, list]:
        """``dtype`` (e.g. torch.bfloat16): each layer runs as under autocast to it (input, weight
        and bias cast, the product and the activation in that dtype); the output is in it."""
        saved = []
        for lin, act in self.layers:
            w, b = lin.weight, lin.bias
            if dtype is not None:
                h, w, b = _as(h, dtype), w.to(dtype), b.to(dtype) if b is not None else None
            pre = torch.addmm(b, h, w.t()) if b is not None else h.mm(w.t())
            if act is None:
                post = pre
            elif isinstance(act, nn.ReLU):  # the output is the mask relu's backward reads: no copy kept
                post = pre = torch.relu_(pre)
            else:
                post = act(pre)
            saved.append((h, pre, post, w))
            h = post
        return h, saved

    def backward(self, saved: list, g: torch.Tensor, need_input: bool, factors: list) -> Optional[torch.Tensor]:
        """``factors`` gets each layer's (g, h): its weight gradient is g^T h, its bias gradient g
        summed. ``g`` is cast to the forward's dtype first, and each parameter's gradient back to the
        parameter's dtype (what autograd does through autocast's casts)."""
        g = _as(g, saved[-1][0].dtype)
        for i in range(len(self.layers) - 1, -1, -1):
            (lin, act), (h, pre, post, w) = self.layers[i], saved[i]
            if act is not None:
                g = _act_backward(act, g, pre, post)
            factors.append((g, h))
            lin.weight.grad = _as(g.t().mm(h), lin.weight.dtype)    # (out, in)
            if lin.bias is not None:
                lin.bias.grad = _as(g.sum(0), lin.bias.dtype)        # (out,)
            if i > 0 or need_input:
                g = g.mm(w)                                           # (B, in)
        return g if need_input else None


def fused_pass(model: VAE, autocast: Optional[torch.dtype] = None) -> Optional[Callable]:
    """``pass_(x, beta, free_bits, capacity) -> (loss, terms)`` that also writes every
    parameter's ``.grad`` (the gradient of ``loss``, as ``loss.backward()`` would after
    zero_grad), or None where the model is not an MLP VAE this pass covers.

    ``autocast`` (torch.bfloat16 for ``precision=bf16``): the encoder and decoder layers run as
    under ``torch.autocast`` to that dtype and everything between them in float32, as
    :func:`vaerun.objectives.elbo_terms` with ``autocast`` does: μ and log σ² are float32 copies
    of the encoder's output, z is cast at the decoder's first product, the likelihood reads the
    decoder's output in float32, and each gradient passes the same casts backwards.

    ``pass_.gradient_bound()`` then bounds every gradient of that call without reading them:
    a float B with |every entry| ≤ B, and |every partial sum formed on the way| ≤ B. Each
    layer's weight gradient is g^T h over the batch, so by Cauchy-Schwarz
    |Σ_b g_bo h_bi| ≤ ‖g‖‖h‖; its bias gradient |Σ_b g_bo| ≤ √n‖g‖ (n examples). The norms
    of these (B, width) factors cost a fraction of a pass over the gradients (the MLP's are
    2.6 MB), and any NaN or inf in a factor makes the bound inf. The training step's
    finiteness guard reads ``pass_.factor_norms()`` (one foreach call) in the same host sync
    as the loss and takes ``pass_.bound_of`` of them (:func:`vaerun.train.train_step`)."""
    enc, dec = model.encoder, model.decoder
    if (type(enc) is not MLPEncoder or type(dec) is not MLPDecoder or any(True for _ in model.likelihood.parameters())
            or not enc.body or not isinstance(enc.body[0], nn.Flatten)):
        return None
    try:
        body = Stack([*list(enc.body)[1:], enc.head])                  # Flatten, (Linear, act)*, head
        net = Stack(list(dec.net))
    except TypeError:
        return None

    last: list = []  # the last call's (g, h) factors, for gradient_bound
    batch = [1]      # and its batch size n
    # rounding: of the factors to the compute dtype (bf16 rounds ‖g‖ ≤ 1/n up by up to 2^-8), of
    # the products' and sums' outputs and of the norms: a few units of that dtype's epsilon
    slack = 1.0 + 4 * torch.finfo(autocast or torch.float32).eps

    def pass_(x: torch.Tensor, beta: float, free_bits: float, capacity: Optional[tuple[float, float]] = None,
              unit_input: bool = False):
        """``unit_input``: x is known to lie in [0, 1] (what ``Data.prepare`` returns), so the bound
        takes ‖x‖ ≤ √(x.numel()) and, for a likelihood whose gradient is then at most 1 per entry
        (``unit_gradient``: Bernoulli's x − σ(η)), the output layer's ‖g‖ ≤ √(numel)/n, without
        reading either (their norms were a quarter each of the bound's memory traffic)."""
        with torch.no_grad():
            b = x.shape[0]
            out, enc_saved = body.forward(x.flatten(1), autocast)     # (B, 2D)
            mu, logvar = _as(out, x.dtype).chunk(2, dim=1)            # (B, D) each
            std = torch.exp(0.5 * logvar)
            eps = torch.randn_like(mu)                                # the draw VAE.reparameterize makes
            z = mu + std * eps                                        # (B, D)
            params, dec_saved = net.forward(z, autocast)
            params = _as(params, x.dtype).view(b, *dec.out_shape)     # (B, C*K, H, W)
            log_p, g_params = model.likelihood.log_prob_grad(params, x)
            terms = Terms(-log_p, gaussian_kl(mu, logvar), mu, logvar)
            loss = training_loss(terms, beta, free_bits, capacity)
            last.clear()
            batch[0] = b
            g_z = _as(net.backward(dec_saved, g_params.view(b, -1).neg_().div_(b), need_input=True,
                                   factors=last), z.dtype)                                     # d loss / d z
            w = kl_weights(terms.kl_per_dim, beta, free_bits, capacity, terms.batch_means()[1])  # d loss / d KL_bd
            g_kl_mu, g_kl_logvar = gaussian_kl_grad(mu, logvar)
            g_out = torch.cat([g_z + w * g_kl_mu, g_z * eps * 0.5 * std + w * g_kl_logvar], dim=1)  # (B, 2D)
            body.backward(enc_saved, g_out, need_input=False, factors=last)
            if unit_input:  # factors whose norm is known: a float in place of the tensor
                last[-1] = (last[-1][0], math.sqrt(x.numel()))                     # the first layer's input x
                if model.likelihood.unit_gradient and net.layers[-1][1] is None:  # logits straight out
                    last[0] = (math.sqrt(g_params.numel()) / b, last[0][1])        # the output layer's g
        return loss, terms

    def factor_norms() -> list[torch.Tensor]:
        """The norms of the last call's factors that are not known already (0-d tensors, in the
        order of ``last``), in one foreach call."""
        with torch.no_grad():
            return torch._foreach_norm([t for pair in last for t in pair if isinstance(t, torch.Tensor)])

    def bound_of(norms: list[float]) -> float:
        """The bound from :func:`factor_norms` read as floats: max over layers of ‖g‖·max(‖h‖, √n),
        inf where any norm is not finite."""
        if not all(map(math.isfinite, norms)):
            return math.inf
        given, root_n, bound = iter(norms), math.sqrt(batch[0]), 0.0
        for g, h in last:
            g_norm = next(given) if isinstance(g, torch.Tensor) else g
            h_norm = next(given) if isinstance(h, torch.Tensor) else h
            bound = max(bound, g_norm * max(h_norm, root_n))
        return bound * slack

    def gradient_bound() -> float:
        return bound_of(torch.stack(factor_norms()).tolist())

    pass_.factor_norms, pass_.bound_of = factor_norms, bound_of
    pass_.gradient_bound = gradient_bound
    return pass_
