"""Quantization-aware training: prepare_qat → train as usual → freeze_bn → convert.

    model_q = zp.prepare_qat(model, zp.w4a4_qat("lsq"), example_inputs=x[:64])
    ... train model_q with any optimizer (the quantizers' scales are parameters too) ...
    zp.freeze_bn(model_q)        # late in training: running statistics from now on
    model_q = zp.convert(model_q) # frozen (S, Z); lowers to integers and exports like PTQ

Weights are fake-quantized from their float shadow on every forward pass (the shadow is what the
optimizer updates); gradients pass the rounding by the straight-through estimator. Quantizers:

  learnable=None   weights: per-channel min-max of the current weights; activations: moving-
                   average min-max observers (Jacob et al. 2018)
  learnable="lsq"  weights and activations: LSQ (learned step size)
  learnable="lsq+" weights LSQ, activations LSQ+ (learned step and offset)
  learnable="pact" weights LSQ, activations PACT (learned clip α; add `pact_regularizer`)

Conv + batch norm pairs are folded in the QAT form (`zeropoint.nn.convbn`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zeropoint.nn.convbn import QuantConvBn2d
from zeropoint.nn.learnable import LSQ, PACT, LSQPlus
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.qparams import Scheme
from zeropoint.workflows.config import QuantConfig, w4a4_qat
from zeropoint.workflows.graph import instrument, state_of


def prepare_qat(
    model: nn.Module,
    config: QuantConfig | None = None,
    example_inputs: Any = None,
    inplace: bool = False,
) -> nn.Module:
    """A copy of ``model`` ready for QAT (training mode). ``example_inputs`` (a batch, or a
    tuple of arguments) initialises the quantizers — LSQ/LSQ+ scales from data — before you
    build the optimizer; without it they initialise on the first training step."""
    config = config or w4a4_qat()
    was_training = model.training
    model.eval()  # trace and fold in inference form first; training resumes below
    sizes = {name: _out_channels(m) for name, m in model.named_modules()}

    def weight_quant(scheme: Scheme, name: str) -> nn.Module:
        if config.learnable is None:
            return FakeQuant(scheme, config.weight_observer, mode="track")
        channels = sizes.get(name, 1) if scheme.axis is not None else 1
        return LSQ(scheme, channels)

    def act_quant(scheme: Scheme, name: str) -> nn.Module:
        kind = config.learnable
        if kind is None:
            obs = config.activation_observer
            return FakeQuant(scheme, obs, config.observer_options, mode="learn")
        if kind == "pact" and not scheme.signed:
            return PACT(scheme)
        if kind in ("lsq+", "pact"):
            return LSQPlus(scheme)
        return LSQ(scheme)

    model_q = instrument(
        model, config, "qat", weight_quant, act_quant, batchnorm="qat", inplace=inplace
    )
    if not inplace:
        model.train(was_training)
    model_q.train()
    if example_inputs is not None:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        with torch.no_grad():
            model_q(*args)
    return model_q


def _out_channels(module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return 1
    return weight.shape[1] if isinstance(module, nn.ConvTranspose2d) else weight.shape[0]


def freeze_bn(model: nn.Module) -> nn.Module:
    """Switch every QAT conv+bn from batch to running statistics (Jacob et al.: late in
    training, so the last steps train with the folding inference will use)."""
    for m in model.modules():
        if isinstance(m, QuantConvBn2d):
            m.freeze_bn()
    return model


def finalize_qat(model: nn.Module) -> nn.Module:
    """Fold QAT conv+bn pairs with their running statistics and replace learnable quantizers by
    frozen `FakeQuant`s with the same (S, Z) (called by `zp.convert`)."""
    state = state_of(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantConvBn2d):
            model.set_submodule(name, module.to_conv())
    for name, module in list(model.named_modules()):
        if isinstance(module, LSQ | LSQPlus | PACT | FakeQuant) and module is not model:
            if isinstance(module, FakeQuant):
                if module.mode == "learn":  # keeps the range its observer holds now
                    module.mode = "quantize"
                continue
            frozen = FakeQuant(module.scheme, mode="quantize")
            frozen.set_qparams(module.qparams())
            model.set_submodule(name, frozen)
    state.workflow = "qat"
    return model
