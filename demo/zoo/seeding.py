"""Seeded weight initialisation without the global RNG: the zoo's models are built, then their
parameters are drawn again from a `torch.Generator` with PyTorch's own default rules."""

from __future__ import annotations

import math

import torch
from torch import nn


def seeded_init(model: nn.Module, seed: int | torch.Generator) -> nn.Module:
    """Re-initialise ``model``'s linear/conv layers in place from ``seed`` (an int or a
    generator) by PyTorch's default rule — W ~ kaiming_uniform(a=√5), i.e. U(−1/√fan_in,
    1/√fan_in), and b ~ U(−1/√fan_in, 1/√fan_in) — and reset batch norms (γ = 1, β = 0, running
    statistics cleared). The global RNG is neither read nor seeded. Returns ``model``."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=g)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
    return model
