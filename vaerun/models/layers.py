"""Small shared pieces of the encoders and decoders: activations, init, conv geometry."""
from __future__ import annotations

import torch.nn as nn

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU,
               "silu": nn.SiLU, "tanh": nn.Tanh}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: list[int], act: str) -> list[nn.Module]:
    """Linear layers between consecutive sizes, each followed by the activation."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), activation(act)]
    return layers


def conv_sizes(image_size: int, stages: int, kernel: int) -> list[int]:
    """Spatial sizes through ``stages`` stride-2 convs with padding (kernel-1)//2, input first.
    Raises ValueError when the image becomes too small for the stack."""
    pad, sizes = (kernel - 1) // 2, [image_size]
    for _ in range(stages):
        s = (sizes[-1] + 2 * pad - kernel) // 2 + 1
        if s < 1:
            raise ValueError(f"a {image_size}px image cannot pass {stages} stride-2 stages of kernel {kernel}")
        sizes.append(s)
    return sizes


def transpose_output_padding(src: int, dst: int, kernel: int) -> int:
    """output_padding that makes a stride-2 ConvTranspose map size ``src`` back to ``dst``."""
    pad = (kernel - 1) // 2
    op = dst - ((src - 1) * 2 - 2 * pad + kernel)
    if op not in (0, 1):
        raise ValueError(f"cannot map {src}px back to {dst}px with kernel {kernel}")
    return op


def initialize(module: nn.Module, scheme: str) -> None:
    """default: PyTorch's own init; xavier: Glorot-uniform; kaiming: He-normal. Biases -> 0."""
    if scheme == "default":
        return
    if scheme not in ("xavier", "kaiming"):
        raise ValueError(f"unknown init {scheme!r}; choose default, xavier or kaiming")
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
