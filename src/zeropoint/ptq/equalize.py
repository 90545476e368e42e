"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", §4.1 and §4.3).

For consecutive layers y = f(W₁x + b₁), z = W₂y + b₂ with a positively homogeneous f
(f(s·v) = s·f(v) for s > 0: ReLU, LeakyReLU, identity, max pooling), any positive diagonal
S = diag(s) gives the same function:

    W₁' = S⁻¹W₁,  b₁' = S⁻¹b₁,  W₂' = W₂S      (output channel i of W₁ divided by sᵢ,
                                                input channel i of W₂ multiplied by sᵢ)

Equalization picks sᵢ = √(r₁ᵢ / r₂ᵢ) with r₁ᵢ = max|W₁[i, ·]| and r₂ᵢ = max|W₂[·, i]|, which
makes both ranges √(r₁ᵢ r₂ᵢ) — the choice that maximises Σᵢ (r₁ᵢ'/R₁')(r₂ᵢ'/R₂') , the
per-tensor precision of both layers (DFQ eq. 8-10). Chains (the depthwise-separable
expand → depthwise → project of MobileNet) share layers between pairs, so the pairs are swept
repeatedly until no scale moves by more than ``tol`` (relative).

ReLU6 is not positively homogeneous (it clips at 6): after scaling, channel i must clip at
6/sᵢ. ``relu6="clip"`` replaces the ReLU6 module by a `ChannelClip` with those bounds — the
float function is unchanged; quantized, the layer before it requantizes onto the grid after
it and the per-channel clamp runs on those codes (exact; `zeropoint.nn.channel_clip`).
``relu6="relu"`` replaces it by ReLU, as DFQ and AIMET do (the float model changes),
``relu6="skip"`` leaves such pairs alone. Each choice is reported.

Batch norms first: the ranges are those of the folded weights W·γ/√(σ² + ε) — what will be
quantized. The model keeps its batch norms, though: layer₁'s scaling is written into its batch
norm (γ' = γ/s, β' = β/s: the same folded layer, exactly), so that a workflow folds them as
usual, the graph keeps its shape (the activation fuses with the layer), and ZeroQ and analytic
bias correction still read the statistics. ``fold=True`` folds them into the layers instead
(`fold_batchnorms`; DFQ's literal order). Without a batch norm, W₁ and b₁ are scaled.

High-bias absorption (DFQ §4.3): a channel whose pre-activation is N(μᵢ, σᵢ²) (its batch norm's
β, |γ|) is ≥ cᵢ = max(0, μᵢ − 3σᵢ) for all but 0.13% of inputs, where f(v − c) = f(v) − c for
ReLU (and for the clip, with its bound lowered by c). So

    β₁' = β₁ − c (or b₁' = b₁ − c),   b₂' = b₂ + W₂c

leaves the function unchanged wherever v ≥ c and shrinks the activation range by c. A padded
convolution as layer₂ would see the shift at its borders too (zero padding is not shifted), so
absorption into a padded layer is skipped unless ``absorb_padded=True`` (reported either way).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from zeropoint.fold import bn_scale_shift, fold_bn
from zeropoint.nn.modules import QuantMixin
from zeropoint.ptq.topology import LAYERS, ChannelClip, Pair, Topology, analyse

#: Key under which a model carries the normal model N(mean, std) of each layer's output channels
#: (from folded batch norms, updated by equalization and absorption): read by analytic bias
#: correction and by a second equalization.
STATS_KEY = "_zeropoint_channel_stats"
REPORT_KEY = "_zeropoint_equalization"


@dataclass
class EqualizationReport:
    """What `equalize` did: folded batch norms, equalized pairs with their scales, absorbed
    biases, activations replaced, and every pair it left alone with the reason."""

    folded: list[tuple[str, str]] = field(default_factory=list)
    pairs: list[tuple[str, str, str]] = field(default_factory=list)  # (first, second, act)
    scales: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    sweeps: int = 0
    converged: bool = False
    absorbed: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    replaced: list[tuple[str, str]] = field(default_factory=list)  # (module path, new type)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (first, second, why)

    def __str__(self) -> str:
        lines = [
            f"batch norms folded: {len(self.folded)}; pairs equalized: {len(self.pairs)} "
            f"({self.sweeps} sweeps, {'converged' if self.converged else 'NOT converged'}); "
            f"biases absorbed: {len(self.absorbed)}; activations replaced: {len(self.replaced)}"
        ]
        lines += [f"  replaced {path} by {kind}" for path, kind in self.replaced]
        lines += [f"  skipped {a} → {b}: {why}" for a, b, why in self.skipped]
        return "\n".join(lines)


def channel_stats(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """The recorded normal model (mean, std) of each layer's output channels (float64)."""
    stats = model.__dict__.get(STATS_KEY)
    return stats if isinstance(stats, dict) else {}


def equalization_report(model: nn.Module) -> EqualizationReport:
    """The report `equalize` left on ``model`` (or on the copy a workflow made of it)."""
    report = model.__dict__.get(REPORT_KEY)
    if not isinstance(report, EqualizationReport):
        raise ValueError(f"{type(model).__name__} was not equalized (zeropoint.ptq.equalize)")
    return report


def fold_batchnorms(
    model: nn.Module, inplace: bool = False, report: EqualizationReport | None = None
) -> nn.Module:
    """Fold every batch norm that directly follows a conv/linear (its only user) into it
    (`zeropoint.fold.fold_bn`) and replace it by ``nn.Identity``; record N(β, |γ|) — the
    distribution batch norm gives the folded layer's output channels — for later steps."""
    model = model if inplace else copy.deepcopy(model)
    topo = _topology(model, "batch-norm folding")
    stats = dict(channel_stats(model))
    for layer_name, bn_name in topo.bn_after.items():
        if topo.module_calls.get(bn_name, 0) != 1 or topo.module_calls.get(layer_name, 0) != 1:
            continue
        layer = model.get_submodule(layer_name)
        bn = model.get_submodule(bn_name)
        assert isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d)
        var = torch.ones(bn.num_features, dtype=torch.float64)
        gamma = bn.weight.detach().double() if bn.weight is not None else var
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
        bn_scale_shift(bn)  # raises for a batch norm without running statistics
        fold_bn(layer, bn)  # type: ignore[arg-type]
        model.set_submodule(bn_name, nn.Identity())
        stats[layer_name] = (beta.clone(), gamma.abs().clone())
        if report is not None:
            report.folded.append((layer_name, bn_name))
    model.__dict__[STATS_KEY] = stats
    return model


def equalize(
    model: nn.Module,
    *,
    iterations: int = 100,
    tol: float = 1e-6,
    absorb_bias: bool = True,
    relu6: str = "clip",
    absorb_padded: bool = False,
    fold: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Equalize every consecutive pair of layers (on their batch-norm-folded weights, to
    convergence) and absorb high biases; returns the model (a copy unless ``inplace``) with an
    `EqualizationReport`
    (`equalization_report(model)`). The float function is unchanged except where the report
    says otherwise (``relu6="relu"``, ``absorb_padded=True``; absorption's 3σ assumption).

    relu6: "clip" (exact, per-channel `ChannelClip`), "relu" (replace by ReLU, DFQ's choice) or
    "skip" (leave pairs joined by ReLU6 unequalized)."""
    if relu6 not in ("clip", "relu", "skip"):
        raise ValueError(f"relu6={relu6!r} is unknown: expected 'clip', 'relu' or 'skip'")
    if iterations < 1:
        raise ValueError(f"iterations={iterations} must be at least 1")
    if any(isinstance(m, QuantMixin) for m in model.modules()):
        raise ValueError(
            "equalize a float model, before quantizing it: this model already has quantized "
            "layers (equalize, then zp.quantize_static / adaround / omse)"
        )
    model = model if inplace else copy.deepcopy(model)
    report = EqualizationReport()
    if fold:
        fold_batchnorms(model, inplace=True, report=report)
    topo = _topology(model, "cross-layer equalization")
    for first, second, why in topo.blocked:
        report.skipped.append((first, second, why))
    pairs = [p for p in topo.pairs if _usable(model, topo, p, relu6, report)]
    stats = channel_stats(model)
    clips = {p.first: _prepare_activation(model, p, relu6, report) for p in pairs}
    total = {
        (p.first, p.second): torch.ones(_channels(model, p), dtype=torch.float64) for p in pairs
    }
    for sweep in range(1, iterations + 1):
        worst = 0.0
        for p in pairs:
            s = _equalize_pair(model, topo, p, clips.get(p.first), stats)
            total[(p.first, p.second)] *= s
            worst = max(worst, float(s.log().abs().max()))
        report.sweeps = sweep
        if worst <= tol:
            report.converged = True
            break
    for p in pairs:
        report.pairs.append((p.first, p.second, p.activation.kind))
        report.scales[(p.first, p.second)] = total[(p.first, p.second)]
    if absorb_bias:
        for p in pairs:
            _absorb(model, p, clips.get(p.first), stats, absorb_padded, report)
    model.__dict__[STATS_KEY] = stats
    model.__dict__[REPORT_KEY] = report
    return model


# --------------------------------------------------------------------------- internals


def _topology(model: nn.Module, what: str) -> Topology:
    topo = analyse(model)
    if topo.graph is None:
        raise ValueError(
            f"{what} needs the model's structure, but torch.fx could not trace "
            f"{type(model).__name__}.forward ({topo.reason})"
        )
    return topo


def tensor_attr(module: nn.Module, name: str) -> Tensor | None:
    """``module.<name>`` as a tensor (a parameter or buffer), or None."""
    value = getattr(module, name, None)
    if value is not None and not isinstance(value, Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def set_tensor(module: nn.Module, name: str, value: Tensor) -> None:
    """Write ``value`` into the parameter ``module.<name>`` (created, as float32, if None)."""
    current = tensor_attr(module, name)
    with torch.no_grad():
        if current is None:
            setattr(module, name, nn.Parameter(value.detach().to(torch.float32).clone()))
        else:
            current.copy_(value.to(current.dtype))


def weight_of(module: nn.Module) -> Tensor:
    w = tensor_attr(module, "weight")
    if w is None:
        raise ValueError(f"{type(module).__name__} has no weight")
    return w


def _out_channels(layer: nn.Module) -> int:
    return int(weight_of(layer).shape[0])


def _in_channels(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    return int(layer.in_channels)  # type: ignore[arg-type]


def _channels(model: nn.Module, p: Pair) -> int:
    return _out_channels(model.get_submodule(p.first))


def _usable(
    model: nn.Module, topo: Topology, p: Pair, relu6: str, report: EqualizationReport
) -> bool:
    first, second = model.get_submodule(p.first), model.get_submodule(p.second)
    why = None
    if not isinstance(first, LAYERS) or not isinstance(second, LAYERS):
        why = "only Linear/Conv1d/Conv2d pairs are equalized"
    elif _out_channels(first) != _in_channels(second):
        why = f"{_out_channels(first)} output channels feed {_in_channels(second)} inputs"
    elif topo.module_calls.get(p.first, 0) != 1 or topo.module_calls.get(p.second, 0) != 1:
        why = "a layer is called more than once (shared weights)"
    elif p.activation.kind == "relu6":
        if relu6 == "skip":
            why = "ReLU6 between them (relu6='skip')"
        elif p.activation.module is None:
            why = "a functional relu6 cannot take per-channel bounds: use an nn.ReLU6 module"
        elif topo.module_calls.get(p.activation.module, 0) != 1:
            why = f"the ReLU6 module {p.activation.module} is shared by several call sites"
    elif p.activation.kind == "clip" and topo.module_calls.get(p.activation.module or "", 0) != 1:
        why = f"the clip module {p.activation.module} is shared by several call sites"
    if why is not None:
        report.skipped.append((p.first, p.second, why))
        return False
    return True


def _prepare_activation(
    model: nn.Module, p: Pair, relu6: str, report: EqualizationReport
) -> ChannelClip | None:
    """The per-channel clip that will carry the pair's scales (ReLU6 replaced), or None."""
    act = p.activation
    if act.kind == "relu6" and act.module is not None:
        if relu6 == "relu":
            model.set_submodule(act.module, nn.ReLU())
            report.replaced.append((act.module, "ReLU (changes the float model)"))
            return None
        first = model.get_submodule(p.first)
        trailing = 0 if isinstance(first, nn.Linear) else weight_of(first).dim() - 2
        clip = ChannelClip(torch.full((_channels(model, p),), 6.0), trailing)
        model.set_submodule(act.module, clip)
        report.replaced.append((act.module, "ChannelClip (exact)"))
        return clip
    if act.kind == "clip" and act.module is not None:
        m = model.get_submodule(act.module)
        assert isinstance(m, ChannelClip)
        return m
    return None


def _second_view(w: Tensor, groups: int) -> Tensor:
    """W₂ as (groups, out/groups, in/groups, rest): input channel i = [i // cpg, :, i % cpg]."""
    out, cpg = w.shape[0], w.shape[1]
    return w.reshape(groups, out // groups, cpg, -1)


def _bn(model: nn.Module, name: str | None) -> nn.BatchNorm1d | nn.BatchNorm2d | None:
    if name is None:
        return None
    bn = model.get_submodule(name)
    return bn if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d) else None


def _bn_factor(bn: nn.BatchNorm1d | nn.BatchNorm2d | None, n: int) -> Tensor:
    """γ/√(σ² + ε) per channel (ones without a batch norm): folded weight = W · factor."""
    if bn is None:
        return torch.ones(n, dtype=torch.float64)
    return bn_scale_shift(bn)[0]


def _equalize_pair(
    model: nn.Module,
    topo: Topology,
    p: Pair,
    clip: ChannelClip | None,
    stats: dict[str, tuple[Tensor, Tensor]],
) -> Tensor:
    first, second = model.get_submodule(p.first), model.get_submodule(p.second)
    bn1, bn2 = _bn(model, p.bn), _bn(model, topo.bn_after.get(p.second))
    w1 = weight_of(first).detach().double()
    w2 = weight_of(second).detach().double()
    f1 = _bn_factor(bn1, w1.shape[0])
    f2 = _bn_factor(bn2, w2.shape[0])
    groups = int(getattr(second, "groups", 1))
    r1 = w1.reshape(w1.shape[0], -1).abs().amax(1) * f1.abs()
    v2 = _second_view(w2, groups)
    folded2 = v2 * f2.abs().reshape(groups, -1, 1, 1)
    r2 = folded2.abs().amax(dim=(1, 3)).reshape(-1)
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp(min=1e-300)), 1.0)
    s = torch.where(torch.isfinite(s) & (s > 0), s, 1.0)
    if bn1 is not None:  # the folded layer's output channel i / sᵢ: γ and β of its batch norm
        set_tensor(bn1, "weight", _bn_gamma(bn1) / s)
        set_tensor(bn1, "bias", _bn_beta(bn1) / s)
    else:
        set_tensor(first, "weight", w1 / s.reshape([-1] + [1] * (w1.dim() - 1)))
        b1 = tensor_attr(first, "bias")
        if b1 is not None:
            set_tensor(first, "bias", b1.double() / s)
    scaled = v2 * s.reshape(groups, 1, v2.shape[2], 1)
    set_tensor(second, "weight", scaled.reshape(w2.shape))
    if clip is not None:
        set_tensor(clip, "upper", clip.upper.double() / s)
    if p.first in stats:
        mean, std = stats[p.first]
        stats[p.first] = (mean / s, std / s)
    return s


def _bn_gamma(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> Tensor:
    g = tensor_attr(bn, "weight")
    return (
        g.detach().double() if g is not None else torch.ones(bn.num_features, dtype=torch.float64)
    )


def _bn_beta(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> Tensor:
    b = tensor_attr(bn, "bias")
    return (
        b.detach().double() if b is not None else torch.zeros(bn.num_features, dtype=torch.float64)
    )


def _padded(layer: nn.Module) -> bool:
    padding = getattr(layer, "padding", 0)
    if isinstance(padding, str):
        kernel = getattr(layer, "kernel_size", (1,))
        return padding != "valid" and any(k > 1 for k in kernel)
    return any(int(q) != 0 for q in (padding if isinstance(padding, tuple) else (padding,)))


def _absorb(
    model: nn.Module,
    p: Pair,
    clip: ChannelClip | None,
    stats: dict[str, tuple[Tensor, Tensor]],
    absorb_padded: bool,
    report: EqualizationReport,
) -> None:
    if p.activation.kind not in ("relu", "relu6", "clip", "identity"):
        report.skipped.append(
            (p.first, p.second, f"bias absorption: {p.activation.kind} is not shift-equivariant")
        )
        return
    bn1 = _bn(model, p.bn)
    if bn1 is None and p.first not in stats:
        report.skipped.append(
            (p.first, p.second, "bias absorption: no batch norm gives this layer's statistics")
        )
        return
    second = model.get_submodule(p.second)
    if _padded(second) and not absorb_padded:
        report.skipped.append(
            (p.first, p.second, "bias absorption: zero padding of the second layer is not "
             "shifted (absorb_padded=True accepts the change at its borders)")
        )  # fmt: skip
        return
    first = model.get_submodule(p.first)
    mean, std = (_bn_beta(bn1), _bn_gamma(bn1).abs()) if bn1 is not None else stats[p.first]
    c = torch.clamp(mean - 3.0 * std, min=0.0)
    if clip is not None:
        c = torch.minimum(c, clip.upper.double())
    if not bool((c > 0).any()):
        return
    groups = int(getattr(second, "groups", 1))
    w2 = weight_of(second).detach().double()
    v2 = _second_view(w2, groups)
    shift = (v2 * c.reshape(groups, 1, v2.shape[2], 1)).sum(dim=(2, 3)).reshape(-1)
    if bn1 is not None:
        set_tensor(bn1, "bias", _bn_beta(bn1) - c)
    else:
        b1 = tensor_attr(first, "bias")
        set_tensor(first, "bias", (b1.double() if b1 is not None else torch.zeros_like(c)) - c)
        stats[p.first] = (mean - c, std)
    b2 = tensor_attr(second, "bias")
    set_tensor(second, "bias", (b2.double() if b2 is not None else torch.zeros_like(shift)) + shift)
    if clip is not None:
        set_tensor(clip, "upper", clip.upper.double() - c)
    report.absorbed[(p.first, p.second)] = c


__all__ = [
    "ChannelClip",
    "EqualizationReport",
    "channel_stats",
    "equalization_report",
    "equalize",
    "fold_batchnorms",
    "set_tensor",
    "tensor_attr",
    "weight_of",
]
