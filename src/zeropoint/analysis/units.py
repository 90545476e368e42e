"""The quantization units of a converted model, switched on and off one at a time.

A *unit* is what one quantized operation adds to the float model:

* a weighted layer (conv, linear, a batch norm that could not be folded): its weight quantizer
  and the activation quantizer of its output (after the clip fused into it, e.g. ReLU6);
* any other activation quantizer: the model's inputs, residual additions, averages, tables —
  named by the operation whose output it quantizes (``"features.3: add"``, ``"input x"``).

Switching every unit off gives the float model (batch norms folded); switching all on gives the
converted model. A unit that is off passes values through (its quantizers run in mode "off"), so
a layer whose unit is off computes in float from whatever its input is.

Some converted models no longer hold float weights: pair-bounded 8-bit weights are snapped onto
their grid at convert, AdaRound commits its rounded weights, a loaded checkpoint holds S·q. For
those layers `attach_float_weights` takes the weight from the float model (batch norms folded as
the quantization folded them) and `enabled` swaps it in while the unit is off — otherwise "off"
would still carry the weight's quantization error.

The analysis runs the *fake-quant simulation* (`float_simulation`): float arithmetic on
quantized values, as QAT sees it. At inference the converted model runs the integer program's
own kernels instead; the two differ only where a value falls on a rounding tie, which the
three-way consistency check (`zeropoint.consistency`) measures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant


@dataclass
class Unit:
    """One quantized operation of a converted model (see the module docstring).

    ``point`` is the graph node whose value the rest of the model reads: the activation
    quantizer's node, or the layer's own node when its output is not quantized. ``nodes``
    are the nodes whose value changes when the unit is switched (the layer, a fused clip, the
    quantizer)."""

    name: str
    kind: str
    layer: QuantMixin | None
    weight: FakeQuant | None
    activation: FakeQuant | None
    point: fx.Node
    nodes: tuple[fx.Node, ...]

    @property
    def float_reference(self) -> Tensor | None:
        """The float weight the layer computes with while off (`attach_float_weights`), or
        None: its own weight."""
        return None if self.layer is None else self.layer.__dict__.get("_float_reference")

    @property
    def grid_weight(self) -> Tensor | None:
        """The layer's own (on-grid) weight parameter, bound while on (with a
        `float_reference`)."""
        return None if self.layer is None else self.layer.__dict__.get("_grid_weight")

    @property
    def quantizers(self) -> list[FakeQuant]:
        return [q for q in (self.weight, self.activation) if q is not None]


def state_of(model: nn.Module) -> Any:
    """The model's quantization state (`zeropoint.workflows.graph.state_of`), imported when
    needed: the workflows import the operator table, which imports the engine."""
    from zeropoint.workflows.graph import state_of as _state_of

    return _state_of(model)


def _kind_of(node: fx.Node, module: nn.Module | None) -> str:
    from zeropoint.ops.simulated import SimulatedOp
    from zeropoint.ops.table import find_op

    if node.op == "placeholder":
        return "input"
    if isinstance(module, SimulatedOp):
        return module.kind
    spec = find_op(node, module)
    if spec is not None:
        return spec.kind
    return getattr(node.target, "__name__", str(node.target))


def _name_of(node: fx.Node, module: nn.Module | None) -> str:
    from zeropoint.lowering import where_of
    from zeropoint.ops.simulated import SimulatedOp

    if node.op == "placeholder":
        return f"input {node.target}"
    if isinstance(module, SimulatedOp):
        return module.where
    return where_of(node)


def find_units(model: nn.Module) -> list[Unit]:
    """The units of a converted model, in graph order (a model from `zp.quantize_static` or a
    converted QAT model; needs the captured graph)."""
    state = state_of(model)
    gm = state.graph_module
    if state.workflow in ("dynamic", "weight_only"):
        raise ValueError(
            f"{type(model).__name__} is a {state.workflow.replace('_', '-')} model: the analysis "
            "switches the quantizers of a static or QAT model one at a time (zp.quantize_static, "
            "zp.convert); compare its outputs with the float model's instead"
        )
    if gm is None:
        raise ValueError(
            f"{type(model).__name__} was quantized at module boundaries (torch.fx could not "
            f"capture it: {state.reason}); the analysis needs the captured graph"
        )
    owner: dict[str, str] = {}  # act_quant key → layer name
    for name in state.layers:
        layer = model.get_submodule(name)
        grid = layer.__dict__.get("output_grid")
        if grid is not None:
            owner[grid.key] = name
    units: list[Unit] = []
    by_layer: dict[str, Unit] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        module = model.get_submodule(target)
        if target in state.layers and isinstance(module, QuantMixin):
            wq = module.weight_quant if isinstance(module.weight_quant, FakeQuant) else None
            unit = Unit(target, _kind_of(node, module), module, wq, None, node, (node,))
            by_layer[target] = unit
            units.append(unit)
            continue
        if not target.startswith("act_quant.") or not isinstance(module, FakeQuant):
            continue
        key = target.split(".", 1)[1]
        if key in owner and owner[key] in by_layer:
            unit = by_layer[owner[key]]
            between = _chain(unit.point, node)
            unit.activation, unit.point = module, node
            unit.nodes = (*unit.nodes, *between, node)
            continue
        producer = node.args[0] if node.args else None
        if not isinstance(producer, fx.Node):
            continue
        pmod = model.get_submodule(str(producer.target)) if producer.op == "call_module" else None
        units.append(
            Unit(_name_of(producer, pmod), _kind_of(producer, pmod), None, None, module, node,
                 (node,))
        )  # fmt: skip
    return units


def _chain(start: fx.Node, end: fx.Node) -> list[fx.Node]:
    """The nodes strictly between ``start`` and ``end`` along single-argument links (a fused
    clip between a layer and its output quantizer)."""
    between: list[fx.Node] = []
    node = end.args[0] if end.args else None
    while isinstance(node, fx.Node) and node is not start:
        between.append(node)
        node = node.args[0] if node.args else None
        if len(between) > 8:
            return []
    return list(reversed(between))


@contextlib.contextmanager
def enabled(units: list[Unit], on: Iterable[str]) -> Iterator[None]:
    """Within the block only the units named in ``on`` quantize (the others pass values through;
    a layer with a `Unit.float_reference` computes with that weight while off); the quantizers'
    previous modes and the layers' previous weights are restored afterwards. Weights are
    swapped by rebinding the layer's parameter, never written in place: a graph recorded
    before (the Fisher estimate's backward pass) keeps the values it saw."""
    wanted = set(on)
    saved = [(q, q.mode) for u in units for q in u.quantizers]
    swapped = [(u, u.layer.float_weight) for u in units
               if u.layer is not None and u.float_reference is not None]  # fmt: skip
    try:
        for u in units:
            for q in u.quantizers:
                q.mode = "quantize" if u.name in wanted else "off"
        for u, _ in swapped:
            _bind_weight(u, u.grid_weight if u.name in wanted else u.float_reference)
        yield
    finally:
        for q, mode in saved:
            q.mode = mode
        for u, previous in swapped:
            _bind_weight(u, previous)


def _bind_weight(unit: Unit, weight: Tensor | None) -> None:
    """Make ``weight`` (the layer's own parameter or its float reference) the layer's weight,
    with the own parameter's current ``requires_grad`` (`float_simulation` switches it)."""
    assert unit.layer is not None and isinstance(weight, nn.Parameter)
    own = unit.grid_weight
    assert own is not None
    if weight is not own:
        weight.requires_grad_(own.requires_grad)
    unit.layer._parameters["weight"] = weight


def on_grid(layer: QuantMixin) -> bool:
    """Whether the layer's weight already lies on its quantization grid (Q(W) = W)."""
    with torch.no_grad():
        w = layer.float_weight.detach()
        return bool(torch.equal(layer.quantized_weight().detach(), w))


def attach_float_weights(model_q: nn.Module, model: nn.Module | None,
                         units: list[Unit]) -> list[str]:  # fmt: skip
    """Give every layer unit whose weight lies on its grid (see the module docstring) the float
    model's weight as its `Unit.float_reference` (kept on the layer until
    `detach_float_weights`): ``model``'s layer of the same name, with the
    batch norm folded into it when the quantization folded one (`zeropoint.fold.fold_bn`,
    `QuantState.folded`). Returns the names of the on-grid layers left without one (no float
    model, or no layer of that name and shape in it)."""
    import copy

    from zeropoint.fold import fold_bn

    folded = dict(state_of(model_q).folded)
    missing: list[str] = []
    for u in units:
        if u.layer is None or u.weight is None or u.float_reference is not None:
            continue
        if not on_grid(u.layer):
            continue
        reference = None
        if model is not None:
            try:
                source = model.get_submodule(u.name)
                if u.name in folded:
                    source = fold_bn(copy.deepcopy(source),  # type: ignore[arg-type]
                                     model.get_submodule(folded[u.name]))  # type: ignore[arg-type]  # fmt: skip
                weight = source.weight
                if isinstance(weight, Tensor):
                    reference = weight.detach().to(u.layer.float_weight.dtype).clone()
            except (AttributeError, TypeError, ValueError):
                reference = None
        if reference is None or reference.shape != u.layer.float_weight.shape:
            missing.append(u.name)
            continue
        u.layer.__dict__["_grid_weight"] = u.layer.float_weight  # the parameter itself
        u.layer.__dict__["_float_reference"] = nn.Parameter(reference, requires_grad=False)
    return missing


def detach_float_weights(units: list[Unit]) -> None:
    """Undo `attach_float_weights` (the layers keep their own weights while off)."""
    for u in units:
        if u.layer is not None:
            own = u.layer.__dict__.pop("_grid_weight", None)
            if own is not None:
                u.layer._parameters["weight"] = own
            u.layer.__dict__.pop("_float_reference", None)


@contextlib.contextmanager
def float_simulation(model: nn.Module) -> Iterator[None]:
    """Run the converted model's fake-quant simulation (float arithmetic on quantized values)
    instead of the integer kernels it runs at inference: gradients are enabled (the switch the
    converted layers read) while no parameter requires one, so nothing is recorded."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p in params:
            p.requires_grad_(True)


class PartialRunner(fx.Interpreter):
    """Runs the model's graph, optionally from a cache of node values: nodes whose value is
    given are not recomputed (`torch.fx.Interpreter`'s ``initial_env``). Records the value of
    every node computed (``keep="all"``) or of the nodes in ``keep``."""

    def __init__(self, gm: fx.GraphModule, keep: set[fx.Node] | str = "all") -> None:
        super().__init__(gm)
        self.keep = keep
        self.kept: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        if (n.op != "output" and self.keep == "all") or (
            not isinstance(self.keep, str) and n in self.keep
        ):
            self.kept[n] = value
        return value


@contextlib.contextmanager
def float_weights(model_q: nn.Module, model: nn.Module | None, units: list[Unit], x: Tensor,
                  reference: Tensor) -> Iterator[list[str]]:  # fmt: skip
    """Within the block, the float model's weights for the layers whose own weights lie on their
    grid (`attach_float_weights`), kept only if every unit off then reproduces ``reference``
    (the float model's output on ``x``); yields what could not be separated, as notes."""
    missing = attach_float_weights(model_q, model, units)
    notes = []
    if any(u.float_reference is not None for u in units):
        with torch.no_grad(), enabled(units, set()), float_simulation(model_q):
            off = output_tensor(model_q(x)).detach()
        scale = float(reference.abs().max().clamp_min(1e-12))
        error = float((off - reference).abs().max()) / scale
        if error > 1e-4:
            detach_float_weights(units)
            notes.append(
                f"the float model's weights do not reproduce its output in the quantized model "
                f"(relative error {error:.2g}: a different float model, or one changed before "
                "quantizing, e.g. equalized): layers whose weights lie on their grid keep them "
                "while off"
            )
            missing = [u.name for u in units if u.layer is not None and u.weight is not None
                       and on_grid(u.layer)]  # fmt: skip
    if missing:
        notes.append(
            f"{len(missing)} layer(s) hold weights already on their grid ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}) and no float weights were found for them: "
            "their weight quantization is not part of their sensitivity or weight SQNR (give "
            "the float model the quantized one came from)"
        )
    try:
        yield notes
    finally:
        detach_float_weights(units)


def descendants(nodes: Iterable[fx.Node]) -> set[fx.Node]:
    """``nodes`` and every node that reads them, directly or not."""
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.users)
    return seen


def leading_tensor(value: Any) -> Tensor | None:
    """``value`` if it is a tensor, the first element of a tuple/list if that is one, else None."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def first_tensor(batch: Any) -> Tensor:
    """The model input of a data item: a tensor, or the first element of an (x, y) pair."""
    found = leading_tensor(batch)
    if found is None:
        raise TypeError(
            "expected batches that are tensors or (inputs, labels) pairs, got "
            f"{type(batch).__name__}"
        )
    return found


def labels_of(batch: Any) -> Tensor | None:
    if isinstance(batch, tuple | list) and len(batch) > 1 and isinstance(batch[1], Tensor):
        return batch[1]
    return None


def output_tensor(value: Any) -> Tensor:
    """The model's output (the first tensor of a tuple/list output)."""
    found = leading_tensor(value)
    if found is None:
        raise TypeError(f"the model returned {type(value).__name__}, expected a tensor")
    return found


__all__ = [
    "PartialRunner",
    "Unit",
    "attach_float_weights",
    "descendants",
    "detach_float_weights",
    "enabled",
    "find_units",
    "first_tensor",
    "float_simulation",
    "float_weights",
    "labels_of",
    "on_grid",
    "output_tensor",
    "state_of",
]
