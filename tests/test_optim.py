"""optimizer_step: the fused Adam/AdamW kernel called directly is optimizer.step() bit for bit."""
from __future__ import annotations

import copy

import pytest
import torch

from vaerun import optim
from vaerun.optim import build_lr_scheduler, build_optimizer, optimizer_step, zero_grad


def _pair(name: str, weight_decay: float):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    opts = [build_optimizer(m.parameters(), name, lr=3e-3, weight_decay=weight_decay) for m in (model, twin)]
    return (model, twin), opts


def _backward(model, x):
    for p in model.parameters():
        p.grad = None
    model(x).square().sum().backward()


@pytest.mark.parametrize("name,weight_decay", [("adam", 0.0), ("adam", 0.01), ("adamw", 0.05)])
def test_direct_kernel_call_is_optimizer_step_bit_for_bit(name, weight_decay):
    (model, twin), (opt, opt_twin) = _pair(name, weight_decay)
    assert opt.param_groups[0]["fused"]
    scheds = [build_lr_scheduler(o, "cosine", total_steps=30) for o in (opt, opt_twin)]
    calls = []
    real = optim._fused_adam_calls
    for step in range(30):
        x = torch.randn(8, 12)
        for m in (model, twin):
            _backward(m, x)
        opt.step()
        calls.append(real(opt_twin) is not None)
        optimizer_step(opt_twin)
        for s in scheds:
            s.step()
        if step == 14:  # a reload replaces the state tensors: the next calls must use the new ones
            opt_twin.load_state_dict(copy.deepcopy(opt_twin.state_dict()))
    assert calls[0] is False and all(calls[1:])  # the first step creates the state through optimizer.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    a, b = opt.state_dict(), opt_twin.state_dict()
    for i in a["state"]:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][i][key], b["state"][i][key]), (i, key)
    assert a["param_groups"] == b["param_groups"]


def test_falls_back_to_optimizer_step_where_the_kernel_does_not_apply():
    (model, _), (opt, _) = _pair("adam", 0.0)
    x = torch.randn(8, 12)
    _backward(model, x)
    optimizer_step(opt)
    assert optim._fused_adam_calls(opt) is not None
    model[2].weight.grad = None  # aggressive training drops a part's gradients
    assert optim._fused_adam_calls(opt) is None
    before = model[2].weight.detach().clone()
    optimizer_step(opt)  # torch.optim skips the parameter without a gradient
    assert torch.equal(model[2].weight, before)
    _backward(model, x)
    handle = opt.register_step_post_hook(lambda *a: None)
    assert optim._fused_adam_calls(opt) is None  # hooks only run through optimizer.step()
    handle.remove()
    assert optim._fused_adam_calls(opt) is not None
    sgd = build_optimizer(model.parameters(), "sgd", lr=0.1)
    assert optim._fused_adam_calls(sgd) is None
    plain = build_optimizer(model.parameters(), "adam", lr=0.1, fused=False)
    plain.step()
    assert optim._fused_adam_calls(plain) is None


def test_zero_grad_sets_gradients_to_none():
    (model, _), (opt, _) = _pair("adam", 0.0)
    _backward(model, torch.randn(4, 12))
    zero_grad(opt)
    assert all(p.grad is None for p in model.parameters())


def test_moments_loaded_in_another_memory_layout_follow_their_parameters():
    """A checkpoint's Adam moments in NCHW loaded for channels-last conv weights (vaerun.models.place
    on a CPU): match_param_layouts gives them the weights' layout, so the fused kernel, which walks
    every tensor by memory position, pairs each moment with its own weight; the update then equals
    the NCHW run's."""
    torch.manual_seed(0)
    nchw = torch.nn.Conv2d(3, 8, 4)
    opts = [build_optimizer(nchw.parameters(), "adam", lr=1e-2)]
    _backward(nchw, torch.randn(2, 3, 9, 9))
    optimizer_step(opts[0])                                   # moments exist, NCHW
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)   # the weights as a resume loads them
    opts.append(build_optimizer(nhwc.parameters(), "adam", lr=1e-2))
    opts[1].load_state_dict(copy.deepcopy(opts[0].state_dict()))  # and the moments, as from a file
    optim.match_param_layouts(opts[1])
    moment = opts[1].state[nhwc.weight]["exp_avg"]
    assert moment.stride() == nhwc.weight.stride() != opts[0].state[nchw.weight]["exp_avg"].stride()
    for _ in range(3):
        x = torch.randn(2, 3, 9, 9)
        for m, o in zip((nchw, nhwc), opts):
            _backward(m, x)
            optimizer_step(o)
    torch.testing.assert_close(nhwc.weight, nchw.weight)
    torch.testing.assert_close(opts[1].state[nhwc.weight]["exp_avg_sq"], opts[0].state[nchw.weight]["exp_avg_sq"])
