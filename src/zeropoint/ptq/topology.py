"""Which layer follows which: read from the model's own forward, traced with torch.fx.

The post-training algorithms need three facts about a model's structure, all found here:

* the **batch norm** that directly follows a conv/linear (to fold it, and to read the normal
  distribution N(β, γ²) of the layer's pre-activation output, DFQ §4.2);
* the **activation** f_a that follows a layer (AdaRound reconstructs f_a(W·x), not W·x);
* **consecutive pairs** layer₁ → [BN] → activation → layer₂ whose connecting tensor has no other
  user, which cross-layer equalization rescales (and what lies between, when it cannot).

The trace is of the model class's ``forward`` with every simulated layer, quantizer and batch
norm kept as a leaf, so float models and models returned by ``zp.quantize_static`` (their
layers swapped in place, batch norms replaced by ``nn.Identity``) read the same way. Nothing here
depends on the graph a workflow builds for itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from zeropoint.nn.channel_clip import ChannelClip
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant

#: Layers whose weight the algorithms change (channels on weight dimension 0, inputs on 1).
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Layers a batch norm can be folded into (`zeropoint.fold.fold_bn`).
FOLDABLE = (*LAYERS, nn.ConvTranspose1d, nn.ConvTranspose2d)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
IDENTITY_MODULES = (nn.Identity, nn.Dropout)
IDENTITY_FUNCTIONS: set[Any] = {F.dropout}


@dataclass(frozen=True)
class Activation:
    """An activation between layers: its kind and the clip range [lo, hi] it applies.

    kind: "identity", "relu", "relu6" (clip to [0, 6]), "clip" (`ChannelClip`), "leaky_relu"
    (positively homogeneous, not a clip), or "other" (not positively homogeneous).
    ``module``: the module path when the activation is a module call (None for functions)."""

    kind: str
    module: str | None = None
    name: str = ""

    @property
    def homogeneous(self) -> bool:
        """f(s·x) = s·f(x) for every s > 0 (what equalization needs)."""
        return self.kind != "other"


@dataclass
class Pair:
    """layer₁ → [bn] → activation → layer₂, connected by tensors with no other user."""

    first: str
    second: str
    bn: str | None
    activation: Activation
    through: list[str] = field(default_factory=list)  # max pools etc. on the way


@dataclass
class Topology:
    """What `analyse` found: folding candidates, activations after layers, equalizable pairs,
    and the pairs that are connected but cannot be equalized (with the reason)."""

    graph: fx.Graph | None
    reason: str = ""
    bn_after: dict[str, str] = field(default_factory=dict)  # layer → batch norm it feeds
    activation_after: dict[str, Activation] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    blocked: list[tuple[str, str, str]] = field(default_factory=list)  # (first, second, why)
    input_source: dict[str, tuple[str, str, Activation]] = field(default_factory=dict)
    module_calls: dict[str, int] = field(default_factory=dict)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (QuantMixin, FakeQuant, ChannelClip, *FOLDABLE, *BATCHNORMS)):
            return True
        if not isinstance(m, nn.Sequential | nn.ModuleList | nn.ModuleDict) and any(
            isinstance(p, nn.Parameter) for p in m.parameters(recurse=False)
        ):
            return True  # other modules holding parameters: opaque
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> tuple[fx.Graph | None, str]:
    """The graph of ``type(model).forward`` (layers, quantizers, batch norms as leaves), or
    (None, why tracing failed)."""
    try:
        return _LeafTracer().trace(model), ""
    except Exception as exc:  # any failure: the caller reports it
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"{type(exc).__name__}: {first}"


def _module(model: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return model.get_submodule(str(node.target))


def classify_activation(model: nn.Module, node: fx.Node) -> Activation | None:
    """The `Activation` a node applies, or None when the node is not an element-wise
    single-input activation (a layer, a merge, a reshape ...)."""
    m = _module(model, node)
    name = node.name
    if m is not None:
        path = str(node.target)
        if isinstance(m, IDENTITY_MODULES):
            return Activation("identity", path, name)
        if isinstance(m, nn.ReLU):
            return Activation("relu", path, name)
        if isinstance(m, nn.ReLU6) or (
            isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0)
        ):
            return Activation("relu6", path, name)
        if isinstance(m, ChannelClip):
            return Activation("clip", path, name)
        if isinstance(m, nn.LeakyReLU):
            return Activation("leaky_relu", path, name)
        elementwise = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
                       nn.Hardtanh, nn.ELU, nn.Softplus, nn.Mish, nn.PReLU, nn.SELU, nn.CELU)  # fmt: skip
        if isinstance(m, elementwise):
            return Activation("other", path, name)
        return None
    if node.op == "call_function":
        target = node.target
        if target in IDENTITY_FUNCTIONS:
            return Activation("identity", None, name)
        if target in (F.relu, torch.relu):
            return Activation("relu", None, name)
        if target is F.relu6:
            return Activation("relu6", None, name)
        if target is F.leaky_relu:
            return Activation("leaky_relu", None, name)
        others = (F.gelu, F.silu, torch.sigmoid, torch.tanh, F.hardswish, F.hardsigmoid,
                  F.hardtanh, F.elu, F.softplus, F.mish, torch.clamp, torch.exp)  # fmt: skip
        if target in others:
            return Activation("other", None, name)
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return Activation("relu", None, name)
        if node.target in ("sigmoid", "tanh", "clamp", "exp", "clamp_"):
            return Activation("other", None, name)
    return None


def _is_maxpool(model: nn.Module, node: fx.Node) -> bool:
    m = _module(model, node)
    if m is not None:
        return isinstance(m, nn.MaxPool1d | nn.MaxPool2d)
    return node.op == "call_function" and node.target in (F.max_pool1d, F.max_pool2d)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _is_layer(model: nn.Module, node: fx.Node) -> bool:
    return isinstance(_module(model, node), FOLDABLE)


def analyse(model: nn.Module) -> Topology:
    """Trace ``model`` and collect the structure the PTQ algorithms need (see module doc)."""
    graph, reason = trace(model)
    topo = Topology(graph, reason)
    if graph is None:
        return topo
    for node in graph.nodes:
        if node.op == "call_module":
            key = str(node.target)
            topo.module_calls[key] = topo.module_calls.get(key, 0) + 1
    for node in graph.nodes:
        if not _is_layer(model, node):
            continue
        _follow(model, node, topo)
    return topo


def _follow(model: nn.Module, layer: fx.Node, topo: Topology) -> None:
    """Walk forward from ``layer`` through single-user nodes: [BN] → activation → layer₂."""
    first = str(layer.target)
    bn: str | None = None
    act: Activation | None = None
    through: list[str] = []
    obstacle: str | None = None
    prev, node = layer, _single_user(layer)
    if node is not None and isinstance(_module(model, node), BATCHNORMS) and len(node.args) == 1:
        bn = str(node.target)
        topo.bn_after[first] = bn
        prev, node = node, _single_user(node)
    while node is not None:
        if _is_layer(model, node):
            if len(node.all_input_nodes) != 1 or node.args[0] is not prev:
                return
            if act is not None and act.kind == "other":
                obstacle = f"{act.name} is not positively homogeneous (f(s·x) ≠ s·f(x))"
            if not isinstance(_module(model, layer), LAYERS) or not isinstance(
                _module(model, node), LAYERS
            ):
                obstacle = obstacle or "transposed convolutions are not equalized"
            if obstacle is not None:
                topo.blocked.append((first, str(node.target), obstacle))
                return
            topo.pairs.append(
                Pair(first, str(node.target), bn, act or Activation("identity"), through)
            )
            return
        found = classify_activation(model, node)
        if found is not None and found.kind == "identity":
            pass
        elif found is not None and act is None:
            act = found
            if not through and obstacle is None:
                topo.activation_after[first] = found
        elif found is not None:
            obstacle = obstacle or f"two activations ({act.name if act else ''}, {found.name})"
        elif _is_maxpool(model, node):
            through.append(node.name)
        elif node.op in ("call_module", "call_function", "call_method"):
            if len(node.all_input_nodes) != 1 or node.target is operator.getitem:
                return  # a merge (residual add, concat) or a tuple access: not a pair
            obstacle = obstacle or f"{node.name} ({_describe(model, node)}) lies between them"
        else:
            return
        prev, node = node, _single_user(node)


def _describe(model: nn.Module, node: fx.Node) -> str:
    m = _module(model, node)
    if m is not None:
        return type(m).__name__
    return getattr(node.target, "__name__", str(node.target))


def activation_function(model: nn.Module, act: Activation | None) -> Callable[[Tensor], Tensor]:
    """A callable applying ``act`` to a tensor whose channel axis is 1 (identity for None)."""
    if act is None or act.kind in ("identity", "other"):
        return lambda x: x
    if act.module is not None:
        m = model.get_submodule(act.module)
        if isinstance(m, nn.ReLU | nn.ReLU6 | nn.Hardtanh | nn.LeakyReLU) and getattr(
            m, "inplace", False
        ):
            kind = act.kind
            if kind == "relu":
                return F.relu
            if kind == "relu6":
                return F.relu6
            slope = float(getattr(m, "negative_slope", 0.01))
            return lambda x: F.leaky_relu(x, slope)
        if isinstance(m, ChannelClip):
            return lambda y: m(y) if y.dim() > 2 else m.rows(y)
        return m
    if act.kind == "relu":
        return F.relu
    if act.kind == "relu6":
        return F.relu6
    if act.kind == "leaky_relu":
        return F.leaky_relu
    return lambda x: x


def find_input_sources(model: nn.Module, topo: Topology) -> dict[str, tuple[str, str, Activation]]:
    """For each layer whose input is ``activation(source)`` — source a batch norm or a layer,
    joined through single-user identity nodes — (kind "bn"/"layer", source path, activation).
    Used by analytic bias correction: the source's output is normal, the activation clips it."""
    found: dict[str, tuple[str, str, Activation]] = {}
    if topo.graph is None:
        return found
    for node in topo.graph.nodes:
        if not isinstance(_module(model, node), LAYERS) or not node.args:
            continue
        if not isinstance(node.args[0], fx.Node):
            continue
        act: Activation | None = None
        cur: fx.Node = node.args[0]
        while True:
            if len(cur.users) != 1:
                break
            kind = classify_activation(model, cur)
            m = _module(model, cur)
            if isinstance(m, BATCHNORMS):
                found[str(node.target)] = ("bn", str(cur.target), act or Activation("identity"))
                break
            if _is_layer(model, cur):
                found[str(node.target)] = ("layer", str(cur.target), act or Activation("identity"))
                break
            if kind is None or kind.kind in ("other", "leaky_relu"):
                break
            if kind.kind != "identity":
                if act is not None:
                    break
                act = kind
            prev = cur.args[0] if cur.args else None
            if not isinstance(prev, fx.Node):
                break
            cur = prev
    return found


__all__ = [
    "Activation",
    "ChannelClip",
    "Pair",
    "Topology",
    "activation_function",
    "analyse",
    "classify_activation",
    "find_input_sources",
    "trace",
]
