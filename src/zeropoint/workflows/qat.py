"""Quantization-aware training: prepare_qat → train as usual → freeze_bn → convert.

    model_q = zp.prepare_qat(model, zp.w4a4_qat("lsq"), example_inputs=x[:64])
    opt = torch.optim.AdamW(zp.qat_param_groups(model_q, weight_decay=1e-4), lr=1e-3)
    ... train model_q (the quantizers' steps and clips are parameters too) ...
    zp.freeze_bn(model_q)        # late in training: running statistics from now on
    model_q = zp.convert(model_q) # frozen (S, Z); lowers to integers and exports like PTQ

Weights are fake-quantized from their float shadow on every forward pass (the shadow is what the
optimizer updates); gradients pass the rounding by the straight-through estimator. Quantizers:

  learnable=None   weights: per-channel min-max of the current weights; activations: moving-
                   average min-max observers (Jacob et al. 2018)
  learnable="lsq"  weights and activations: LSQ (learned step size)
  learnable="lsq+" weights LSQ, activations LSQ+ (learned step and offset)
  learnable="pact" weights LSQ, activations PACT (learned clip α; add `pact_regularizer`)

Every learnable activation quantizer is signed or unsigned by the data it sees first (the
example inputs): model inputs, logits and other tensors with negative values keep them; post-
ReLU tensors use all levels on [0, max) (`zeropoint.nn.learnable`). Weight quantizers keep the
weight scheme's sign, and their step has a floor relative to the channel's weights.

Weight decay pulls a learned step towards 0: `qat_param_groups` puts the quantizers' parameters
in a group without it (the default), the other parameters in a group with it.

Conv + batch norm pairs are folded in the QAT form (`zeropoint.nn.convbn`).

Stochastic rounding (a scheme with rounding="stochastic", and ``QuantConfig(seed=...)``): each
quantizer draws from its own generator (`QuantConfig.generator_for`); it rounds stochastically
while training and to nearest in eval mode, and `convert` makes every quantizer round to nearest
(the deployed model: ONNX QuantizeLinear and the integer engine round to nearest).

Float formats (fp8 / fp4 schemes) train with learnable=None: the weights' scale follows their
amax, the activations' their moving-average amax (the learnable quantizers refuse them).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zeropoint.nn.convbn import QuantConvBn2d
from zeropoint.nn.learnable import LSQ, PACT, LSQPlus, quantizer_parameters
from zeropoint.nn.quantizers import FakeQuant, nearest
from zeropoint.qparams import QParams, Scheme
from zeropoint.workflows.config import QuantConfig, resolve_config
from zeropoint.workflows.graph import instrument, state_of
from zeropoint.workflows.static import restored_on_failure


def prepare_qat(
    model: nn.Module,
    config: QuantConfig | str | None = None,
    example_inputs: Any = None,
    inplace: bool = False,
    concrete_args: dict[str, Any] | None = None,
) -> nn.Module:
    """A copy of ``model`` ready for QAT (training mode). ``concrete_args``: forward's Python
    arguments to capture the graph with (default: their default values). ``config``: a QuantConfig, a preset
    name ("w4a4_qat") or None (w4a4_qat()). ``example_inputs`` (a batch, or a tuple of
    arguments) initialises the quantizers — LSQ/LSQ+ scales from data, and the sign of every
    learnable activation quantizer — before you build the optimizer; without it they initialise
    on the first training step. With ``inplace=True`` a failure restores ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"prepare_qat needs an nn.Module, got {type(model).__name__}")
    config = resolve_config(config, "qat")
    with restored_on_failure(model, inplace):
        return _prepare_qat(model, config, example_inputs, inplace, concrete_args)


def _prepare_qat(
    model: nn.Module,
    config: QuantConfig,
    example_inputs: Any,
    inplace: bool,
    concrete_args: dict[str, Any] | None = None,
) -> nn.Module:
    was_training = model.training
    model.eval()  # trace and fold in inference form first; training resumes below
    sizes = {name: _out_channels(m) for name, m in model.named_modules()}

    def weight_quant(scheme: Scheme, name: str) -> nn.Module:
        gen = config.generator_for(f"{name}.weight")
        if config.learnable is None:
            return FakeQuant(scheme, config.weight_observer, mode="track", generator=gen)
        channels = sizes.get(name, 1) if scheme.axis is not None else 1
        return LSQ(scheme, channels, signed=scheme.signed, weight=True, generator=gen)

    def act_quant(scheme: Scheme, name: str) -> nn.Module:
        kind, gen = config.learnable, config.generator_for(name)
        if kind is None:
            obs = config.activation_observer
            return FakeQuant(scheme, obs, config.observer_options, mode="learn", generator=gen)
        if kind == "pact":
            return PACT(scheme, generator=gen)
        if kind == "lsq+":
            return LSQPlus(scheme, generator=gen)
        return LSQ(scheme, generator=gen)

    try:
        model_q = instrument(
            model, config, "qat", weight_quant, act_quant, batchnorm="qat", inplace=inplace,
            concrete_args=concrete_args,
        )  # fmt: skip
    finally:
        if not inplace:
            model.train(was_training)
    model_q.train()
    if example_inputs is not None:
        args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        with torch.no_grad():
            model_q(*args)
    return model_q


def qat_param_groups(
    model: nn.Module, weight_decay: float = 0.0, quantizer_weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for a QAT model: the learnable quantizers' parameters (LSQ
    steps, LSQ+ offsets, PACT clips) with ``quantizer_weight_decay`` (default 0: weight decay
    would pull a step towards 0 and let it collapse), every other trainable parameter with
    ``weight_decay``::

        opt = torch.optim.AdamW(zp.qat_param_groups(model_q, weight_decay=1e-2), lr=1e-3)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"qat_param_groups needs an nn.Module, got {type(model).__name__}")
    for what, value in (("weight_decay", weight_decay), ("quantizer_weight_decay", quantizer_weight_decay)):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ValueError(f"{what}={value!r} must be a number >= 0")
    quant = [p for p in quantizer_parameters(model) if p.requires_grad]
    ids = {id(p) for p in quant}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": rest, "weight_decay": float(weight_decay)}]
    if quant:
        groups.append({"params": quant, "weight_decay": float(quantizer_weight_decay)})
    return groups


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
    frozen `FakeQuant`s with the same (S, Z), every quantizer rounding to nearest (called by
    `zp.convert`)."""
    state = state_of(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantConvBn2d):
            model.set_submodule(name, module.to_conv())
    for name, module in list(model.named_modules()):
        if isinstance(module, LSQ | LSQPlus | PACT | FakeQuant) and module is not model:
            if isinstance(module, FakeQuant):
                if module.mode == "learn":  # keeps the range its observer holds now
                    module.mode = "quantize"
                module.to_nearest()
                continue
            qp = module.qparams()
            scheme = nearest(qp.scheme)
            frozen = FakeQuant(scheme, mode="quantize")
            frozen.set_qparams(QParams(qp.scale, qp.zero_point, scheme, qp.axis))
            model.set_submodule(name, frozen)
    state.workflow = "qat"
    return model
