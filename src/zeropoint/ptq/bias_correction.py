"""Bias correction: remove the expected output error that quantizing the weights introduces
(Nagel et al. 2019, "Data-Free Quantization", §4.2; Finkelstein et al. 2019 and NNCF's fast bias
correction for the empirical form).

Quantization errors of the weights do not average out: with ε = W̃ − W the output of a layer is
off by E[ε·x] = ε·E[x] per output channel — a bias, which the layer's bias can absorb:

    b ← b − (E[ỹ] − E[y])          (per output channel c: the mean over samples and positions)

Empirical (`correct_bias`, with data), layer by layer in execution order so that each layer sees
the already-corrected prefix:
  mode="model": y from the float model on the same samples — removes the mean error that the
                whole quantized prefix has accumulated at this layer's output (as AIMET's
                empirical bias correction and NNCF do);
  mode="layer": y = W·x̂ + b on this layer's own quantized input x̂ — removes only the bias this
                layer's weight error adds (DFQ's E[W̃x] − E[Wx]).

Analytic (`correct_bias_analytic`, no data): when a layer's input is f(BN(·)) — a batch norm
followed by ReLU, ReLU6, a per-channel clip or nothing — the batch norm says its pre-activation
is N(β, γ²) per channel, so E[x] is the mean of a clipped normal (`clipped_normal_mean`) and
the correction is ε·E[x] (summed over the kernel; zero padding at the borders is ignored, as in
DFQ).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.ptq.adaround import MARK as ADAROUND_MARK
from zeropoint.ptq.equalize import channel_stats, set_tensor, tensor_attr, weight_of
from zeropoint.ptq.layer_io import float_simulation, quantizers_off, take_samples
from zeropoint.ptq.topology import BATCHNORMS, ChannelClip, analyse, find_input_sources

CORRECTION_KEY = "_zeropoint_bias_correction"


def clipped_normal_mean(
    mean: Tensor, std: Tensor, lo: Tensor | float, hi: Tensor | float
) -> Tensor:
    """E[clip(z, lo, hi)] for z ~ N(mean, std²), elementwise (float64):

        μ·(Φ(b) − Φ(a)) + σ·(φ(a) − φ(b)) + lo·Φ(a) + hi·(1 − Φ(b)),  a = (lo − μ)/σ, b = (hi − μ)/σ

    (lo = −∞ or hi = ∞ drop their term; σ = 0 gives clip(μ, lo, hi))."""
    mu = torch.as_tensor(mean, dtype=torch.float64)
    sigma = torch.as_tensor(std, dtype=torch.float64).abs()
    lo_t = torch.as_tensor(lo, dtype=torch.float64).expand_as(mu)
    hi_t = torch.as_tensor(hi, dtype=torch.float64).expand_as(mu)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    a = (lo_t - mu) / safe
    b = (hi_t - mu) / safe
    cdf_a, cdf_b = torch.special.ndtr(a), torch.special.ndtr(b)
    pdf_a = torch.exp(-0.5 * a.nan_to_num(posinf=1e300, neginf=-1e300).clamp(-1e150, 1e150) ** 2)
    pdf_b = torch.exp(-0.5 * b.nan_to_num(posinf=1e300, neginf=-1e300).clamp(-1e150, 1e150) ** 2)
    pdf_a, pdf_b = pdf_a / math.sqrt(2 * math.pi), pdf_b / math.sqrt(2 * math.pi)
    low_term = torch.where(torch.isinf(lo_t), torch.zeros_like(mu), lo_t * cdf_a)
    high_term = torch.where(torch.isinf(hi_t), torch.zeros_like(mu), hi_t * (1 - cdf_b))
    out = mu * (cdf_b - cdf_a) + safe * (pdf_a - pdf_b) + low_term + high_term
    return torch.where(sigma > 0, out, torch.minimum(torch.maximum(mu, lo_t), hi_t))


# --------------------------------------------------------------------------- empirical


def correct_bias(
    model_q: nn.Module,
    data: Any,
    float_model: nn.Module | None = None,
    *,
    mode: str = "model",
    num_samples: int | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Empirical bias correction of a converted model (see the module doc); returns the model
    (a copy unless ``inplace``).

    ``data``: samples (a tensor or batches; the first ``num_samples``, default all, are fed as
    one batch — memory grows with it). ``float_model``: the float model that was quantized; it
    gives the reference outputs and the float weights. Without it the reference is the model
    itself with its quantizers off (right unless its float weights were replaced, as AdaRound
    does — then ``float_model`` is required)."""
    if mode not in ("model", "layer"):
        raise ValueError(f"mode={mode!r} is unknown: expected 'model' or 'layer'")
    layers = _quantized_layers(model_q)
    x = take_samples(data, num_samples)
    reference = _reference(model_q, float_model, layers)
    model_q = model_q if inplace else copy.deepcopy(model_q)
    layers = _quantized_layers(model_q)
    ref_means: dict[str, Tensor] = {}
    if mode == "model":
        ref_means = _output_means(
            reference if reference is not None else model_q, x, layers, reference is None
        )
    corrections: dict[str, Tensor] = {}
    handles = []
    for name, layer in layers.items():

        def hook(mod: nn.Module, args: Any, out: Tensor, name: str = name) -> Tensor:
            dim = _channel_dim(mod)
            mean_q = _channel_mean(out, dim)
            if mode == "model":
                ref = ref_means[name]
            else:
                ref = _channel_mean(_float_layer_output(mod, reference, name, args[0]), dim)
            eps = mean_q - ref
            # the layer adds its bias as S_b·round(b / S_b): shift the bias it really adds, and
            # pass on the shift it really applies after rounding (|applied + eps| ≤ S_b / 2)
            before = _effective_bias(mod)
            if before is None:
                before = torch.zeros_like(eps, dtype=torch.float64)
            set_tensor(mod, "bias", before - eps)
            after = _effective_bias(mod)
            applied = (after if after is not None else before) - before
            corrections[name] = eps
            shape = [1] * out.dim()
            shape[dim] = -1
            return out + applied.reshape(shape).to(out.dtype)

        handles.append(layer.register_forward_hook(hook))
    try:
        with torch.no_grad(), float_simulation(model_q):  # pre-activation outputs, not the kernels'
            model_q(x)
    finally:
        for h in handles:
            h.remove()
    model_q.__dict__[CORRECTION_KEY] = corrections
    return model_q


def _quantized_layers(model: nn.Module) -> dict[str, QuantMixin]:
    layers = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, QuantMixin)
        and m.weight_quant is not None
        and not isinstance(m, nn.Embedding)
    }
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no quantized layers: bias correction works on a model "
            "converted by zp.quantize_static / adaround / omse"
        )
    for name, m in layers.items():
        if getattr(m, "output_quant", None) is not None:
            raise ValueError(f"layer {name} quantizes its own output: its bias cannot be corrected")
    return layers


def _reference(
    model_q: nn.Module, float_model: nn.Module | None, layers: dict[str, QuantMixin]
) -> nn.Module | None:
    """The float model, batch norms folded where ``model_q`` folded them (None: use model_q
    with its quantizers off)."""
    if float_model is None:
        if ADAROUND_MARK in model_q.__dict__:
            raise ValueError(
                "this model's float weights were replaced by AdaRound: pass the float model it "
                "was quantized from (float_model=...) as the reference"
            )
        return None
    reference = copy.deepcopy(float_model).eval()
    _fold_like(reference, model_q)
    for name, layer in layers.items():
        try:
            ref = reference.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"the float model has no layer {name!r} (the quantized model does)"
            ) from None
        if getattr(ref, "weight", None) is None or ref.weight.shape != layer.float_weight.shape:
            raise ValueError(
                f"the float model's {name!r} does not match the quantized layer's weight"
            )
    return reference


def _fold_like(reference: nn.Module, model_q: nn.Module) -> None:
    from zeropoint.fold import fold_bn

    topo = analyse(reference)
    for layer_name, bn_name in topo.bn_after.items():
        try:
            folded = isinstance(model_q.get_submodule(bn_name), nn.Identity)
        except AttributeError:
            folded = False
        if folded:
            fold_bn(reference.get_submodule(layer_name), reference.get_submodule(bn_name))  # type: ignore[arg-type]
            reference.set_submodule(bn_name, nn.Identity())


def _channel_dim(layer: nn.Module) -> int:
    return -1 if isinstance(layer, nn.Linear) else 1


def _channel_mean(y: Tensor, dim: int) -> Tensor:
    """Per-channel mean of ``y`` (float64); under a torch.distributed process group, over every
    rank's samples (sums and counts all-reduced: each rank feeds its shard and every rank
    applies the correction of all the data)."""
    from zeropoint.distributed import RankGroup, is_distributed

    dims = [d for d in range(y.dim()) if d != dim % y.dim()]
    total = y.double().sum(dim=dims)
    count = torch.tensor([y.numel() / max(y.shape[dim % y.dim()], 1)], dtype=torch.float64)
    if is_distributed():
        ranks = RankGroup()
        total = ranks.all_reduce(total, "sum", "bias correction statistics")
        count = ranks.all_reduce(count, "sum", "bias correction statistics")
    return total / count


def _output_means(
    model: nn.Module, x: Tensor, layers: dict[str, QuantMixin], off: bool
) -> dict[str, Tensor]:
    means: dict[str, Tensor] = {}
    handles = []
    for name in layers:
        module = model.get_submodule(name)

        def hook(mod: nn.Module, args: Any, out: Tensor, name: str = name) -> None:
            means[name] = _channel_mean(out, _channel_dim(mod))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            if off:
                with quantizers_off(model):
                    model(x)
            else:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return means


def _float_layer_output(
    layer: nn.Module, reference: nn.Module | None, name: str, x: Tensor
) -> Tensor:
    """W·x̂ + b: the float layer on the quantized layer's own input."""
    assert isinstance(layer, QuantMixin)
    iq = layer.input_quant
    if iq is not None:
        x = iq(x)
    if reference is not None:
        return reference.get_submodule(name)(x)  # type: ignore[no-any-return]
    wq = layer.weight_quant
    assert isinstance(wq, FakeQuant)
    saved_in, saved_mode = layer.input_quant, wq.mode
    layer.input_quant, wq.mode = None, "off"
    try:
        return layer.forward(x)  # type: ignore[no-any-return]
    finally:
        layer.input_quant, wq.mode = saved_in, saved_mode


def _effective_bias(layer: nn.Module) -> Tensor | None:
    """The bias the layer adds, as its forward pass uses it (quantized where it is)."""
    bias = layer.quantized_bias() if isinstance(layer, QuantMixin) else tensor_attr(layer, "bias")
    return None if bias is None else bias.detach().double()


def _shift_bias(layer: nn.Module, delta: Tensor) -> None:
    bias = tensor_attr(layer, "bias")
    base = bias.double() if bias is not None else torch.zeros_like(delta, dtype=torch.float64)
    set_tensor(layer, "bias", base + delta)


# --------------------------------------------------------------------------- analytic


def correct_bias_analytic(
    model_q: nn.Module, float_model: nn.Module, *, inplace: bool = False
) -> nn.Module:
    """Data-free bias correction (DFQ §4.2) of a converted model; ``float_model`` is the float
    model it was quantized from (with its batch norms, or equalized: `equalize` records their
    statistics). Layers whose input is not f(BN(·)) are left alone and listed in the result's
    ``model.__dict__["_zeropoint_bias_correction"]`` as missing."""
    layers = _quantized_layers(model_q)
    inputs = input_distributions(float_model)
    usable = {n: inputs[n] for n in layers if n in inputs}
    if not usable:
        raise ValueError(
            "analytic bias correction needs batch norms: each corrected layer's input must be "
            "BN(·) followed by ReLU, ReLU6 or nothing, whose γ and β give E[x]; "
            f"{type(float_model).__name__} has no quantized layer fed that way (pass the float "
            "model before its batch norms are folded, or use correct_bias(model_q, data))"
        )
    reference = _reference_weights(model_q, float_model, layers)
    model_q = model_q if inplace else copy.deepcopy(model_q)
    layers = _quantized_layers(model_q)
    corrections: dict[str, Tensor] = {}
    for name, (mean, std, lo, hi) in usable.items():
        layer = layers[name]
        expected = clipped_normal_mean(mean, std, lo, hi)
        dw = layer.quantized_weight().detach().double() - reference[name]
        groups = int(getattr(layer, "groups", 1))
        view = dw.reshape(groups, dw.shape[0] // groups, dw.shape[1], -1)
        eps = (view * expected.reshape(groups, 1, dw.shape[1], 1)).sum(dim=(2, 3)).reshape(-1)
        _shift_bias(layer, -eps)
        corrections[name] = eps
    model_q.__dict__[CORRECTION_KEY] = corrections
    return model_q


def input_distributions(model: nn.Module) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per layer whose input is f(N(μ, σ²)) per channel: (μ, σ, lo, hi) — the normal from the
    batch norm (β, |γ|) or from a folded/equalized layer's record, and f's clip [lo, hi]."""
    topo = analyse(model)
    stats = channel_stats(model)
    out: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    for layer, (kind, source, act) in find_input_sources(model, topo).items():
        if kind == "bn":
            bn = model.get_submodule(source)
            assert isinstance(bn, BATCHNORMS)
            n = bn.num_features
            mean = (
                bn.bias.detach().double()
                if bn.bias is not None
                else torch.zeros(n, dtype=torch.float64)
            )
            std = (
                bn.weight.detach().double().abs()
                if bn.weight is not None
                else torch.ones(n, dtype=torch.float64)
            )
        elif source in stats:
            mean, std = stats[source]
        else:
            continue
        lo = torch.full_like(mean, -math.inf)
        hi = torch.full_like(mean, math.inf)
        if act.kind in ("relu", "relu6", "clip"):
            lo = torch.zeros_like(mean)
        if act.kind == "relu6":
            hi = torch.full_like(mean, 6.0)
        if act.kind == "clip" and act.module is not None:
            clip = model.get_submodule(act.module)
            assert isinstance(clip, ChannelClip)
            hi = clip.upper.detach().double()
        if act.kind not in ("identity", "relu", "relu6", "clip"):
            continue
        out[layer] = (mean, std, lo, hi)
    return out


def _reference_weights(
    model_q: nn.Module, float_model: nn.Module, layers: dict[str, QuantMixin]
) -> dict[str, Tensor]:
    reference = _reference(model_q, float_model, layers)
    assert reference is not None
    return {n: weight_of(reference.get_submodule(n)).detach().double() for n in layers}


__all__ = ["clipped_normal_mean", "correct_bias", "correct_bias_analytic", "input_distributions"]
