"""Graph capture and instrumentation: where the quantizers go.

The model is captured with torch.fx. Batch norms that follow a conv/linear are folded; every
quantizable layer is swapped for its simulation class (weight quantizer); and one activation
quantizer is placed on every tensor edge that integer inference needs quantized:

  * the model's floating-point inputs;
  * the output of every quantized layer, residual add and concatenation — after the ReLU/ReLU6
    that follows it, when there is one (fused: in integers a ReLU is a clamp of the output range);
  * the output of average pooling (the mean of levels lies between levels: it is re-quantized);
  * any other float tensor that feeds a quantized layer or an add/concat of quantized tensors.

Ops that do not change the quantization grid pass their input's parameters through: max pooling,
flatten/reshape/view, dropout, identity, and a ReLU on an already quantized tensor. The result keeps the model's class: the model object gets the swapped layers and an
`act_quant` ModuleDict of activation quantizers, and its forward runs the instrumented graph.

A model that torch.fx cannot capture (data-dependent control flow, e.g. Hugging Face modules)
falls back to module-boundary quantization: each quantized layer quantizes its own input (and a
warning says so).
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from zeropoint.fold import fold_bn
from zeropoint.nn.convbn import QuantConvBn2d
from zeropoint.nn.modules import SIMULATION_MODULES, QuantConv2d, QuantMixin
from zeropoint.qparams import Scheme
from zeropoint.workflows.config import QuantConfig

ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
ACTIVATION_FUNCTIONS: set[Any] = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp}
ACTIVATION_METHODS = {"relu", "relu_", "clamp"}
PASSTHROUGH_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, *ACTIVATION_MODULES,
)  # fmt: skip
PASSTHROUGH_FUNCTIONS: set[Any] = {
    torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout, torch.reshape, operator.getitem,
    *ACTIVATION_FUNCTIONS,
}  # fmt: skip
#: Average pooling produces values between the input's levels: its output is re-quantized (to
#: its own calibrated grid), as integer inference rounds the mean.
AVGPOOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
AVGPOOL_FUNCTIONS: set[Any] = {
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
}
PASSTHROUGH_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "transpose",
    *ACTIVATION_METHODS,
}
MERGE_FUNCTIONS: set[Any] = {operator.add, torch.add, torch.cat}
MERGE_METHODS = {"add"}
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class QuantState:
    """What a workflow did to a model (kept on the model as ``model._zeropoint``)."""

    config: QuantConfig
    workflow: str
    graph_module: fx.GraphModule | None = None
    capture: str = "fx"  # "fx" or "module-boundary"
    reason: str = ""
    layers: dict[str, tuple[Scheme | None, Scheme | None]] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)
    edges: dict[str, str] = field(default_factory=dict)  # graph node → act_quant key


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


def is_activation(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(root, node), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def is_passthrough(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(root, node), PASSTHROUGH_MODULES)
    if node.op == "call_function":
        return node.target in PASSTHROUGH_FUNCTIONS
    return node.op == "call_method" and node.target in PASSTHROUGH_METHODS


def is_merge(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in MERGE_FUNCTIONS
    return node.op == "call_method" and node.target in MERGE_METHODS


def is_avgpool(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(root, node), AVGPOOL_MODULES)
    return node.op == "call_function" and node.target in AVGPOOL_FUNCTIONS


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The fx.Node arguments of ``node`` (flattening list arguments such as torch.cat's)."""
    found: list[fx.Node] = []

    def visit(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg((node.args, node.kwargs), visit)
    return found


def trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """torch.fx capture, or (None, the reason it failed)."""
    try:
        return fx.symbolic_trace(model), ""
    except Exception as exc:  # any tracing failure means: fall back to module boundaries
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


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
        if not isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d | nn.ConvTranspose2d):
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
) -> nn.Module:
    """Swap layers and place activation quantizers (see the module docstring)."""
    model = model if inplace else copy.deepcopy(model)
    config.check_names(model)
    state = QuantState(config, workflow)
    gm, reason = trace(model)
    quantized_layers = _swap_layers(model, config, make_weight_quant, state)
    if gm is None or config.activation is None:
        if gm is None:
            state.capture, state.reason = "module-boundary", reason
            if config.activation is not None:
                warnings.warn(
                    f"torch.fx could not capture {type(model).__name__} ({reason}); activations "
                    "are quantized at the inputs of quantized layers (module-boundary mode), not "
                    "at functional operations such as residual adds",
                    stacklevel=3,
                )
        for name, (_, act) in state.layers.items():
            if act is not None:
                layer = model.get_submodule(name)
                assert isinstance(layer, QuantMixin)
                layer.input_quant = make_act_quant(act, name + ".input")
        model.__dict__["_zeropoint"] = state
        return model
    if batchnorm != "keep" and config.fold_bn:
        state.folded = fold_batchnorms(gm, model, qat=batchnorm == "qat")
    _place_activation_quantizers(gm, model, quantized_layers, config, make_act_quant, state)
    gm = fx.GraphModule(model, gm.graph, class_name=f"{type(model).__name__}Quantized")
    # The graph module looks its submodules up in the model's own module dict, so that a later
    # swap in the model (QAT conversion, loading) is what the graph runs: no stale copies.
    gm.__dict__["_modules"] = model._modules
    state.graph_module = gm
    model.__dict__["_zeropoint"] = state
    model.__dict__["forward"] = gm.forward
    return model


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
        if w_scheme is not None and w_scheme.axis == 0 and isinstance(module, nn.ConvTranspose2d):
            w_scheme = w_scheme.with_(axis=1)  # output channels of a transposed conv
        cls = SIMULATION_MODULES[type(module)]
        weight_quant = make_weight_quant(w_scheme, name) if w_scheme is not None else None
        model.set_submodule(name, cls.from_float(module, weight_quant))  # type: ignore[attr-defined]
        state.layers[name] = (w_scheme, a_scheme)
    return {n for n, _, _ in names}


def _place_activation_quantizers(
    gm: fx.GraphModule,
    model: nn.Module,
    layers: set[str],
    config: QuantConfig,
    make_act_quant: Callable[[Scheme, str], nn.Module],
    state: QuantState,
) -> None:
    act_quant = nn.ModuleDict()
    model.add_module("act_quant", act_quant)
    gm.add_module("act_quant", act_quant)  # the graph's owning module checks call_module targets
    graph = gm.graph
    quantized: set[fx.Node] = set()  # nodes whose output is on a quantized grid
    default = config.activation
    assert default is not None

    def scheme_for(node: fx.Node) -> Scheme:
        if node.op == "call_module" and str(node.target) in layers:
            act = state.layers[str(node.target)][1]
            return act if act is not None else default
        return default

    def insert_after(node: fx.Node, scheme: Scheme) -> fx.Node:
        key = _safe(node.name)
        act_quant[key] = make_act_quant(scheme, node.name)
        with graph.inserting_after(node):
            q = graph.call_module(f"act_quant.{key}", (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        state.edges[node.name] = key
        quantized.add(q)
        return q

    def quantize_inputs(node: fx.Node) -> None:
        for arg in tensor_inputs(node):
            if arg not in quantized and arg.op != "get_attr":
                insert_after(arg, scheme_for(node))

    # first_last_bits covers the model's inputs too: the first layer reads them
    input_scheme = default.with_(bits=config.first_last_bits) if config.first_last_bits else default
    for node in list(graph.nodes):
        if node.op == "placeholder":
            insert_after(node, input_scheme)
        elif node.op == "call_module" and str(node.target) in layers:
            quantize_inputs(node)
            users = list(node.users)
            if len(users) == 1 and is_activation(users[0], model):
                continue  # the activation after it takes the quantizer
            insert_after(node, scheme_for(node))
        elif is_avgpool(node, model):
            quantize_inputs(node)
            insert_after(node, default)
        elif is_merge(node):
            quantize_inputs(node)
            users = list(node.users)
            if len(users) == 1 and is_activation(users[0], model):
                continue
            insert_after(node, default)
        elif is_activation(node, model) and _fused_producer(node, layers):
            producer = node.args[0]
            assert isinstance(producer, fx.Node)
            insert_after(node, scheme_for(producer))
        elif is_passthrough(node, model) and all(a in quantized for a in tensor_inputs(node)[:1]):
            quantized.add(node)
    graph.lint()


def _fused_producer(node: fx.Node, layers: set[str]) -> bool:
    producer = node.args[0] if node.args else None
    if not isinstance(producer, fx.Node) or len(producer.users) != 1:
        return False
    is_layer = producer.op == "call_module" and str(producer.target) in layers
    return is_layer or is_merge(producer)
