"""Operations of the converted simulation that run the integer program's kernel at inference.

A float simulation computes an average or an addition of dequantized values in float32 and then
rounds; the integer program computes the exact window sum, or ONNX Runtime's QLinearAdd
arithmetic, and rounds that. The two agree except where the value lies on (or within float error
of) a rounding tie — and ties are frequent: sum/count = k + ½ for small windows, and sums of two
grids with related scales. So at inference (eval mode, no gradient, grids frozen) these
operations run the program's own kernel on their input codes, as the converted layers do
(`QuantMixin._deployed`); training and calibration run the original float operation. Lowering
reads a `SimulatedOp` as the operation it wraps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.ops.common import engine_dtype
from zeropoint.ops.spec import Kernel

#: the kinds whose float simulation cannot reproduce the integer result at rounding ties
SIMULATED_KINDS = ("avg_pool", "adaptive_avg_pool", "mean", "add")


class _CallContext:
    """What an entry's ``lower`` reads, taken from an actual call instead of an fx node."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], module: nn.Module | None,
                 tensors: list[Tensor], out_shape: tuple[int, ...]) -> None:  # fmt: skip
        self.args, self.kwargs, self.module = args, kwargs, module
        self.inputs = [f"x{i}" for i in range(len(tensors))]
        self.shapes = {name: tuple(t.shape) for name, t in zip(self.inputs, tensors)}
        self.shape = out_shape

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        return self.args[index] if index < len(self.args) else self.kwargs.get(name, default)


class SimulatedOp(nn.Module):
    """A converted model's average pool, adaptive pool, mean or addition: the original float
    operation while training or calibrating, the integer program's kernel at inference (see the
    module docstring)."""

    def __init__(self, kind: str, original: Any, where: str, in_grids: list[Any], out_grid: Any,
                 clip: tuple[float, float] | None, rounding: str) -> None:  # fmt: skip
        super().__init__()
        if kind not in SIMULATED_KINDS:
            raise ValueError(f"SimulatedOp wraps {SIMULATED_KINDS}, not {kind!r}")
        self.kind, self.where, self.rounding, self.clip = kind, where, rounding, clip
        self.original = original  # a module (registered), a function, or a method name
        self.__dict__["in_grids"], self.__dict__["out_grid"] = in_grids, out_grid
        self.__dict__["_kernels"] = {}

    def float_forward(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.original, str):
            return getattr(args[0], self.original)(*args[1:], **kwargs)
        return self.original(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        y = self.float_forward(*args, **kwargs)
        if self.training or torch.is_grad_enabled():
            return y
        from zeropoint.nn.modules import frozen_qparams

        tensors = [a for a in args if isinstance(a, Tensor)]
        grids = [frozen_qparams(g.quantizer()) for g in self.__dict__["in_grids"]]
        y_qp = frozen_qparams(self.__dict__["out_grid"].quantizer())
        if y_qp is None or len(tensors) != len(grids) or any(g is None for g in grids):
            return y
        if any(g.scheme.float_format is not None for g in [*grids, y_qp]):  # type: ignore[union-attr]
            return y  # fp8 / fp4 grids: no integer kernel, the float operation is what runs
        key = (tuple(tuple(t.shape) for t in tensors), tuple(repr(g) for g in grids),
               tuple(float(g.scale) for g in grids), repr(y_qp), float(y_qp.scale))  # type: ignore[union-attr]  # fmt: skip
        kernels: dict[Any, Kernel] = self.__dict__["_kernels"]
        if key not in kernels:
            kernels.clear()
            kernels[key] = self._kernel(args, kwargs, tensors, tuple(y.shape), grids, y_qp)
        codes = [quantize_int(t.float(), g).to(engine_dtype(g)) for t, g in zip(tensors, grids)]  # type: ignore[arg-type]
        out = dequantize_int(kernels[key](codes), y_qp).reshape(y.shape)
        return out.contiguous(memory_format=_memory_format(y))

    def _kernel(self, args: tuple[Any, ...], kwargs: dict[str, Any], tensors: list[Tensor],
                out_shape: tuple[int, ...], grids: list[Any], y_qp: Any) -> Kernel:  # fmt: skip
        from zeropoint.lowering import QGraph, QOp
        from zeropoint.ops.table import spec_for

        spec = spec_for(self.kind)
        module = self.original if isinstance(self.original, nn.Module) else None
        ctx = _CallContext(args, kwargs, module, tensors, out_shape)
        attrs = spec.lower(ctx) if spec.lower is not None else {}  # type: ignore[arg-type]
        op = QOp(self.kind, ctx.inputs, "y", y_qp, self.clip, attrs, self.where, out_shape)
        edges = {**dict(zip(ctx.inputs, grids)), "y": y_qp}
        graph = QGraph([op], edges, ctx.inputs, ["y"], {**ctx.shapes, "y": out_shape})
        assert spec.kernel is not None
        return spec.kernel(op, graph, self.rounding)

    def extra_repr(self) -> str:
        return f"{self.kind} ({self.where}), the integer kernel at inference"


def _memory_format(t: Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and t.shape[1] > 1:
        return torch.channels_last
    return torch.contiguous_format


__all__ = ["SIMULATED_KINDS", "SimulatedOp"]
