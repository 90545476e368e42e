"""An operator-table entry: everything the pipeline needs to know about one kind of operation.

One `OpSpec` per operation kind, read by every stage — none keeps its own list:

* **capture / simulation** (`workflows.graph`): which fx nodes it matches (module types,
  functions, methods, an optional predicate) and its ``role``, i.e. where quantizers go:

  ``"layer"``     a weighted layer swapped for its simulation class (`zeropoint.nn.modules`):
                  its inputs are quantized, its output gets a quantizer (after a fused clip);
  ``"requant"``   computes a value on a new grid (add, mul, cat, average pools, tables):
                  inputs quantized, output quantizer (after a fused clip where ``fuses_clip``);
  ``"shared"``    moves or selects values (max pool, reshape, slicing, padding, nearest
                  up-sampling): the output lives on its input's grid, no quantizer;
  ``"clip"``      ReLU / ReLU6 / hardtanh / clamp: fused into the producer's output clamp when
                  it follows a ``fuses_clip`` op, else a ``"requant"`` table (ReLU: ``"shared"``);
  ``"identity"``  dropout, identity, contiguous: the value passes through.

* **lowering** (`zeropoint.lowering`): ``lower(ctx) -> dict`` turns the node into the attributes
  of a `QOp` (integer weight codes, shapes, axes — tensors and JSON values only, so a program
  saves without pickle), and ``finalize(op, graph)`` fills what needs the output grid (tables).
* **integer engine** (`zeropoint.engine.program`): ``kernel(op, graph, rounding)`` prepares the
  constants once and returns the step, a function from the op's input codes to its output codes.
* **ONNX export** (`zeropoint.export.onnx`): ``emit(builder, op, graph, inputs)`` writes the
  operation on dequantized (float) inputs and returns its float output; the exporter adds the
  clip and the QuantizeLinear → DequantizeLinear pair of the output grid around it.

An operation that no entry matches runs in float in the integer program and in the export
(DequantizeLinear → the float op → QuantizeLinear), and both name it by its module path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from torch import Tensor, fx, nn

if TYPE_CHECKING:
    from zeropoint.lowering import LowerContext, QGraph, QOp

Role = Literal["layer", "requant", "shared", "clip", "identity"]
Kernel = Callable[[list[Tensor]], Tensor]


@dataclass(frozen=True)
class OpSpec:
    """One operation kind (see the module docstring)."""

    kind: str
    role: Role
    modules: tuple[type[nn.Module], ...] = ()
    functions: tuple[Any, ...] = ()
    methods: tuple[str, ...] = ()
    when: Callable[[fx.Node, nn.Module | None], bool] | None = None
    lower: Callable[[LowerContext], dict[str, Any]] | None = None
    finalize: Callable[[QOp, QGraph], None] | None = None
    kernel: Callable[[QOp, QGraph, str], Kernel] | None = None
    emit: Callable[[Any, QOp, QGraph, list[str]], str] | None = None
    fuses_clip: bool = False
    doc: str = ""
    _functions: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_functions", frozenset(id(f) for f in self.functions))

    def matches(self, node: fx.Node, module: nn.Module | None) -> bool:
        """Does this entry describe ``node`` (``module``: its target when a call_module)?"""
        if node.op == "call_module":
            hit = module is not None and type(module) in self.modules
        elif node.op == "call_function":
            hit = id(node.target) in self._functions
        elif node.op == "call_method":
            hit = node.target in self.methods
        else:
            hit = False
        return hit and (self.when is None or self.when(node, module))


__all__ = ["Kernel", "OpSpec", "Role"]
