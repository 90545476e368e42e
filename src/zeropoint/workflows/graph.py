"""Graph capture and instrumentation: where the quantizers go, read from the operator table.

The model is captured with torch.fx (`workflows.capture`: Python arguments such as a flag in
``forward`` become constants). Batch norms that follow a conv/linear are folded; one that cannot
be folded (e.g. after a ReLU) becomes an integer per-channel affine; every quantizable layer is
swapped for its simulation class. Then, walking the graph, each node's operator-table entry
(`zeropoint.ops`) says where activation quantizers go:

  * the model's floating-point inputs get one;
  * "layer" and "requant" ops (conv, linear, add, mul, cat, average pools, element-wise tables)
    get their float inputs quantized and one quantizer on their output — after the ReLU / ReLU6
    / clamp that follows, when the op fuses it (in integers a clip is a narrower clamp);
  * "shared" ops (max pool, reshape, slicing, padding, nearest up-sampling) keep their input's
    grid, and a ReLU on a quantized tensor does too;
  * anything the table does not know stays float; a quantized op that reads it quantizes it.

The result keeps the model's class: the model object gets the swapped layers and an
`act_quant` ModuleDict of activation quantizers, and its forward runs the instrumented graph.
Each quantized layer knows the quantizer that defines its input grid (`GridRef`), so the
simulation quantizes its bias exactly as the integer engine does.

A model that torch.fx cannot capture falls back to module-boundary quantization: each quantized
layer quantizes its own input, a warning names the construct and the module that stopped capture,
and lowering / export say the same.
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from zeropoint.fold import fold_bn
from zeropoint.nn.convbn import QuantConvBn2d
from zeropoint.nn.modules import (
    SIMULATION_MODULES,
    GridRef,
    QuantChannelAffine,
    QuantConv2d,
    QuantMixin,
)
from zeropoint.ops.table import find_op
from zeropoint.qparams import Scheme
from zeropoint.workflows.capture import capture
from zeropoint.workflows.config import QuantConfig

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
#: values that are never tensors: sizes, shapes, dtypes (no quantizer ever goes on them)
_META_METHODS = {"size", "dim", "numel", "item", "tolist", "__len__", "type", "get_device"}
_META_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}


@dataclass
class QuantState:
    """What a workflow did to a model (kept on the model as ``model._zeropoint``)."""

    config: QuantConfig
    workflow: str
    graph_module: fx.GraphModule | None = None
    capture: str = "fx"  # "fx", "fx (constants: ...)" or "module-boundary"
    reason: str = ""
    layers: dict[str, tuple[Scheme | None, Scheme | None]] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)
    edges: dict[str, str] = field(default_factory=dict)  # graph node → act_quant key
    concrete_args: dict[str, Any] = field(default_factory=dict)


def state_of(model: nn.Module) -> QuantState:
    """The QuantState of a model returned by a zeropoint workflow."""
    state = model.__dict__.get("_zeropoint")
    if not isinstance(state, QuantState):
        raise ValueError(
            f"{type(model).__name__} was not prepared by zeropoint (no quantization state): "
            "use zp.quantize_static / zp.prepare / zp.prepare_qat / zp.quantize_dynamic first"
        )
    return state


def module_of(root: nn.Module, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return root.get_submodule(str(node.target))


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The fx.Node arguments of ``node`` (flattening list arguments such as torch.cat's)."""
    found: list[fx.Node] = []

    def visit(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg((node.args, node.kwargs), visit)
    return found


def is_meta(node: fx.Node, constants: set[str]) -> bool:
    """Is ``node`` a Python value rather than a tensor (x.size(0), x.shape[1] * 2, a flag)?"""
    if node.op == "placeholder":  # fx names a constant argument's placeholder "<name>_<n>"
        name = str(node.target)
        return name in constants or name.rsplit("_", 1)[0] in constants
    if node.op == "call_method" and node.target in _META_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in _META_ATTRS
    args = tensor_inputs(node)
    if node.op == "call_function" and args and all(is_meta(a, constants) for a in args):
        return node.target in (operator.getitem, operator.add, operator.sub, operator.mul,
                               operator.floordiv, operator.truediv, len, int, float)  # fmt: skip
    return False


def fold_batchnorms(
    gm: fx.GraphModule, root: nn.Module, qat: bool = False
) -> list[tuple[str, str]]:
    """Fold every BN that directly follows a conv/linear whose output has no other user.

    qat=False: the inference form (`zeropoint.fold.fold_bn`, running statistics).
    qat=True: a QuantConv2d + BatchNorm2d pair becomes a `QuantConvBn2d` (batch statistics while
    training, Jacob et al. 2018); other pairs are folded in the inference form."""
    folded = []
    for node in list(gm.graph.nodes):
        bn = module_of(root, node)
        if not isinstance(bn, BATCHNORMS) or len(node.args) != 1:
            continue
        producer = node.args[0]
        if not isinstance(producer, fx.Node) or len(producer.users) != 1:
            continue
        layer = module_of(root, producer)
        if not isinstance(layer, FOLDABLE):
            continue
        if qat and isinstance(layer, QuantConv2d) and isinstance(bn, nn.BatchNorm2d):
            root.set_submodule(str(producer.target), QuantConvBn2d.from_conv_bn(layer, bn))
        else:
            fold_bn(layer, bn)
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        root.set_submodule(str(node.target), nn.Identity())
        folded.append((str(producer.target), str(node.target)))
    return folded


def _affine_batchnorms(
    gm: fx.GraphModule, root: nn.Module, config: QuantConfig,
    make_weight_quant: Callable[[Scheme, str], nn.Module], state: QuantState,
) -> set[str]:  # fmt: skip
    """Batch norms left after folding become `QuantChannelAffine` layers (integer per-channel
    affine, weights quantized per channel — exact: one value per channel)."""
    names = set()
    scheme = (config.weight or Scheme(bits=8, symmetric=True, narrow=True)).with_(
        axis=0, group_size=None
    )
    for node in gm.graph.nodes:
        bn = module_of(root, node)
        if not isinstance(bn, BATCHNORMS) or not bn.track_running_stats:
            continue
        name = str(node.target)
        affine = QuantChannelAffine.from_batchnorm(bn)
        affine.weight_quant = make_weight_quant(scheme, name)
        root.set_submodule(name, affine)
        state.layers[name] = (scheme, config.activation)
        names.add(name)
    return names


def _safe(name: str) -> str:
    return name.replace(".", "_")


def instrument(
    model: nn.Module,
    config: QuantConfig,
    workflow: str,
    make_weight_quant: Callable[[Scheme, str], nn.Module],
    make_act_quant: Callable[[Scheme, str], nn.Module],
    batchnorm: str = "fold",
    inplace: bool = False,
    concrete_args: dict[str, Any] | None = None,
) -> nn.Module:
    """Swap layers and place activation quantizers (see the module docstring)."""
    model = model if inplace else copy.deepcopy(model)
    config.check_names(model)
    state = QuantState(config, workflow)
    captured = capture(model, concrete_args)
    gm = captured.graph
    state.concrete_args = dict(captured.concrete_args)
    layers = _swap_layers(model, config, make_weight_quant, state)
    if gm is None or config.activation is None:
        if gm is None:
            state.capture, state.reason = "module-boundary", captured.reason
            if config.activation is not None:
                warnings.warn(
                    f"torch.fx could not capture {type(model).__name__} ({captured.reason}); "
                    "activations are quantized at the inputs of quantized layers "
                    "(module-boundary mode), not at functional operations such as residual "
                    "adds, and the model cannot be lowered to integers or exported",
                    stacklevel=3,
                )
        for name, (_, act) in state.layers.items():
            if act is not None:
                layer = model.get_submodule(name)
                assert isinstance(layer, QuantMixin)
                layer.input_quant = make_act_quant(act, name + ".input")
        model.__dict__["_zeropoint"] = state
        return model
    state.capture = captured.description
    if batchnorm != "keep" and config.fold_bn:
        state.folded = fold_batchnorms(gm, model, qat=batchnorm == "qat")
        layers |= _affine_batchnorms(gm, model, config, make_weight_quant, state)
    _Placer(gm, model, layers, config, make_act_quant, state).place()
    gm = fx.GraphModule(model, gm.graph, class_name=f"{type(model).__name__}Quantized")
    # The graph module looks its submodules up in the model's own module dict, so that a later
    # swap in the model (QAT conversion, loading) is what the graph runs: no stale copies.
    gm.__dict__["_modules"] = model._modules
    state.graph_module = gm
    model.__dict__["_zeropoint"] = state
    model.__dict__["forward"] = _forward_of(model, gm, set(captured.concrete_args))
    return model


def _forward_of(model: nn.Module, gm: fx.GraphModule, constants: set[str]) -> Callable[..., Any]:
    """The graph's forward as the model's, callable with the model's own argument names (torch.fx
    renames the placeholder of an argument taken as a constant: "flag" → "flag_1")."""
    renamed = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            name = str(node.target)
            base = name.rsplit("_", 1)[0]
            if name not in constants and base in constants:
                renamed[base] = name
    return GraphForward(model, gm, renamed)


class GraphForward:
    """The instrumented model's forward: its graph module, run on the model's own submodules.

    The graph module looks its submodules up in the model's module dict, so that a later swap in
    the model (QAT conversion, loading, post-training algorithms) is what the graph runs. It is
    an object holding the model, so that ``copy.deepcopy(model)`` gives a copy whose forward
    runs the copy's graph on the copy's modules (re-linked on every call: a deep copy of a
    GraphModule rebuilds its module dict)."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule, renamed: dict[str, str]) -> None:
        self.model, self.gm, self.renamed = model, gm, renamed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        link(self.model, self.gm)
        if self.renamed:
            kwargs = {self.renamed.get(k, k): v for k, v in kwargs.items()}
        return self.gm.forward(*args, **kwargs)


def link(model: nn.Module, gm: fx.GraphModule) -> fx.GraphModule:
    """Make ``gm`` run ``model``'s submodules (see `GraphForward`)."""
    if gm.__dict__.get("_modules") is not model._modules:
        gm.__dict__["_modules"] = model._modules
    return gm


def _swap_layers(
    model: nn.Module,
    config: QuantConfig,
    make_weight_quant: Callable[[Scheme, str], nn.Module],
    state: QuantState,
) -> set[str]:
    names = []
    for name, module in model.named_modules():
        if not name or type(module) not in SIMULATION_MODULES:
            continue
        resolved = config.resolve(name, module)
        if resolved is None:
            continue
        names.append((name, module, resolved))
    first_last = {names[0][0], names[-1][0]} if names and config.first_last_bits else set()
    for name, module, (w_scheme, a_scheme) in names:
        if name in first_last and config.first_last_bits is not None:
            w_scheme = w_scheme.with_(bits=config.first_last_bits) if w_scheme else None
            a_scheme = a_scheme.with_(bits=config.first_last_bits) if a_scheme else None
        transposed = isinstance(module, nn.ConvTranspose1d | nn.ConvTranspose2d)
        if w_scheme is not None and w_scheme.axis == 0 and transposed:
            w_scheme = w_scheme.with_(axis=1)  # output channels of a transposed conv
        cls = SIMULATION_MODULES[type(module)]
        weight_quant = make_weight_quant(w_scheme, name) if w_scheme is not None else None
        model.set_submodule(name, cls.from_float(module, weight_quant))  # type: ignore[attr-defined]
        state.layers[name] = (w_scheme, a_scheme)
    return {n for n, _, _ in names}


class _Placer:
    """Walks the captured graph once and inserts the activation quantizers."""

    def __init__(
        self, gm: fx.GraphModule, model: nn.Module, layers: set[str], config: QuantConfig,
        make_act_quant: Callable[[Scheme, str], nn.Module], state: QuantState,
    ) -> None:  # fmt: skip
        self.gm, self.model, self.layers, self.state = gm, model, layers, state
        self.make_act_quant = make_act_quant
        assert config.activation is not None
        self.default = config.activation
        bits = config.first_last_bits
        # first_last_bits covers the model's inputs too: the first layer reads them
        self.input_scheme = self.default.with_(bits=bits) if bits else self.default
        self.act_quant = nn.ModuleDict()
        model.add_module("act_quant", self.act_quant)
        gm.add_module("act_quant", self.act_quant)
        self.grid: dict[fx.Node, str] = {}  # quantized node → the act_quant key of its grid
        self.constants = set(state.concrete_args)

    def spec(self, node: fx.Node) -> Any:
        if node.op not in ("call_module", "call_function", "call_method"):
            return None
        if node.op == "call_module" and str(node.target).startswith("act_quant."):
            return None
        return find_op(node, module_of(self.model, node))

    def scheme_for(self, node: fx.Node) -> Scheme:
        if node.op == "call_module" and str(node.target) in self.layers:
            act = self.state.layers[str(node.target)][1]
            return act if act is not None else self.default
        return self.default

    def insert_after(self, node: fx.Node, scheme: Scheme) -> fx.Node:
        key = _safe(node.name)
        self.act_quant[key] = self.make_act_quant(scheme, node.name)
        graph = self.gm.graph
        with graph.inserting_after(node):
            q = graph.call_module(f"act_quant.{key}", (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        self.state.edges[node.name] = key
        self.grid[q] = key
        return q

    def quantizable(self, arg: fx.Node) -> bool:
        """A value a quantizer can take: not a Python value, not an integer / bool constant."""
        if is_meta(arg, self.constants):
            return False
        if arg.op == "get_attr":
            value: Any = self.model
            for part in str(arg.target).split("."):
                value = getattr(value, part, None)
            return isinstance(value, torch.Tensor) and value.is_floating_point()
        return True

    def quantize_inputs(self, node: fx.Node, scheme: Scheme, first_only: bool = False) -> None:
        args = [a for a in tensor_inputs(node) if self.quantizable(a)]
        for arg in args[:1] if first_only else args:
            if arg not in self.grid:
                point = self.quantize_point(arg)
                self.insert_after(point, scheme)
                self.propagate(point)

    def quantize_point(self, arg: fx.Node) -> fx.Node:
        """Where to quantize a float value: before the data movement (reshape, max pool,
        padding...) that leads to it, so that movement runs on codes. Quantization commutes
        with it (rounding is element-wise and monotone, and 0.0 is a code)."""
        while len(arg.users) == 1:
            spec = self.spec(arg)
            first = next((a for a in tensor_inputs(arg) if not is_meta(a, self.constants)), None)
            if spec is None or spec.role not in ("shared", "identity") or first is None:
                break
            if len(first.users) != 1 or first in self.grid:
                break
            arg = first
        return arg

    def propagate(self, start: fx.Node) -> None:
        """Mark the data-movement chain after a new quantizer as quantized."""
        node = next(iter(start.users))  # the quantizer
        while True:
            users = [u for u in node.users]
            if len(users) != 1:
                return
            user = users[0]
            spec = self.spec(user)
            if spec is None or spec.role not in ("shared", "identity"):
                return
            self.grid[user] = self.grid[node]
            node = user

    def clip_follows(self, node: fx.Node) -> bool:
        """Is the only user of ``node`` a clip that will fuse into it?"""
        users = list(node.users)
        if len(users) != 1:
            return False
        spec = self.spec(users[0])
        return spec is not None and spec.role == "clip"

    def place(self) -> None:
        for node in list(self.gm.graph.nodes):
            if node.op == "placeholder":
                if not is_meta(node, self.constants):
                    self.insert_after(node, self.input_scheme)
                continue
            spec = self.spec(node)
            if spec is None:
                continue
            self.visit(node, spec)
        self._link_layers()
        self._wrap_simulated()
        self.gm.graph.lint()

    def visit(self, node: fx.Node, spec: Any) -> None:
        first = next((a for a in tensor_inputs(node) if not is_meta(a, self.constants)), None)
        if spec.role == "identity" or spec.role == "shared":
            if first is not None and first in self.grid:
                self.grid[node] = self.grid[first]
            return
        if spec.role == "clip":
            producer = first
            if producer is not None and self._pending(producer):
                if not self.returned_float(node):
                    self.insert_after(node, self.scheme_for(producer))  # fused: after it
                return
            if first is not None and first in self.grid and _is_plain_relu(node, self.model):
                self.grid[node] = self.grid[first]  # a ReLU keeps the grid (0 is the code Z)
                return
            if first is None or first not in self.grid:
                return  # a clip of a float value stays float
            self.insert_after(node, self.default)  # a clip of its own: a table
            return
        scheme = self.scheme_for(node)
        self.quantize_inputs(node, scheme, first_only=spec.role == "layer")
        if spec.fuses_clip and self.clip_follows(node):
            self.state.edges.setdefault(node.name, "")  # its quantizer comes after the clip
            return
        if not self.returned_float(node):
            self.insert_after(node, scheme)

    def returned_float(self, node: fx.Node) -> bool:
        """Does ``node``'s value only leave the model, under ``quantize_outputs=False``?"""
        if self.state.config.quantize_outputs:
            return False
        users = list(node.users)
        return bool(users) and all(u.op == "output" for u in users)

    def _pending(self, node: fx.Node) -> bool:
        """``node`` is a layer/requant op whose quantizer waits for the clip after it."""
        return self.state.edges.get(node.name) == "" and node not in self.grid

    def _link_layers(self) -> None:
        """Tell each quantized layer which quantizers define its input and output grids (and
        the clip fused between), and how the program requantizes."""
        from zeropoint.ops.table import clip_bounds

        rounding = self.state.config.requantization
        for node in self.gm.graph.nodes:
            if node.op != "call_module" or str(node.target) not in self.layers:
                continue
            layer = self.model.get_submodule(str(node.target))
            if not isinstance(layer, QuantMixin):
                continue
            arg = node.args[0] if node.args else None
            key = self.grid.get(arg) if isinstance(arg, fx.Node) else None
            layer.__dict__["input_grid"] = GridRef(self.act_quant, key) if key else None
            out, clip = self._output_of(node)
            layer.__dict__["output_grid"] = GridRef(self.act_quant, out) if out else None
            layer.__dict__["output_clip"] = (
                None if clip is None else clip_bounds(clip, module_of(self.model, clip), {})
            )
            layer.__dict__["requantization"] = rounding
        self.state.edges = {k: v for k, v in self.state.edges.items() if v}

    def _wrap_simulated(self) -> None:
        """Averages and additions whose inputs and output are quantized become `SimulatedOp`
        modules (the program's kernel at inference, the float op otherwise)."""
        from zeropoint.lowering import where_of
        from zeropoint.ops.simulated import SIMULATED_KINDS, SimulatedOp
        from zeropoint.ops.table import clip_bounds

        rounding = self.state.config.requantization
        ops = nn.ModuleDict()
        self.model.add_module("sim_ops", ops)
        self.gm.add_module("sim_ops", ops)
        graph = self.gm.graph
        for node in list(graph.nodes):
            spec = self.spec(node)
            if spec is None or spec.kind not in SIMULATED_KINDS:
                continue
            ins = [a for a in tensor_inputs(node) if self.quantizable(a)]
            out, clip = self._output_of(node)
            if not ins or any(a not in self.grid for a in ins) or out is None:
                continue
            module = module_of(self.model, node)
            original: Any = (
                module
                if module is not None
                else (str(node.target) if node.op == "call_method" else node.target)
            )
            key = _safe(node.name)
            bounds = None if clip is None else clip_bounds(clip, module_of(self.model, clip), {})
            ops[key] = SimulatedOp(
                spec.kind, original, where_of(node),
                [GridRef(self.act_quant, self.grid[a]) for a in ins],
                GridRef(self.act_quant, out), bounds, rounding,
            )  # fmt: skip
            with graph.inserting_after(node):
                new = graph.call_module(f"sim_ops.{key}", node.args, node.kwargs)
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            if node in self.grid:
                self.grid[new] = self.grid.pop(node)
        if not len(ops):
            del self.model.sim_ops, self.gm.sim_ops

    def _output_of(self, node: fx.Node) -> tuple[str | None, fx.Node | None]:
        """The act_quant key the layer's output is quantized by, and the clip fused before it."""
        users = list(node.users)
        clip = None
        if (
            len(users) == 1
            and self.spec(users[0]) is not None
            and self.spec(users[0]).role == "clip"
        ):
            clip = users[0]
            users = list(clip.users)
        if len(users) == 1 and users[0] in self.grid and users[0].op == "call_module":
            target = str(users[0].target)
            if target.startswith("act_quant."):
                return target.split(".", 1)[1], clip
        return None, None


def _is_plain_relu(node: fx.Node, root: nn.Module) -> bool:
    from zeropoint.ops.table import clip_bounds

    lo, hi = clip_bounds(node, module_of(root, node), {})
    return lo == 0.0 and hi == float("inf")


__all__ = [
    "QuantState",
    "fold_batchnorms",
    "instrument",
    "is_meta",
    "module_of",
    "state_of",
    "tensor_inputs",
]
