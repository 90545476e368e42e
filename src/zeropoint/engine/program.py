"""Lowering a simulated model to an integer-only program, and running it.

`to_integer(model_q, example_input)` reads the lowering IR (`zeropoint.lowering`: every edge's
(S, Z), every layer's quantized weights) and prepares one step per operation:

    quantize (float → uint8/int8, once at the input)
    conv2d / conv_transpose2d / linear   int8 × int8 → int32 (+ int32 bias) → M0·2^−n → int8
    add / cat                            rescale both inputs to the output grid
    max pool, flatten, reshape           on the codes
    average pools                        integer sum × M0·2^−n
    dequantize (int → float, once at the output)

Between the input quantize and the output dequantize no float arithmetic touches the data
(float BLAS is used only as an exact integer GEMM, see `kernels`). An operation without an
integer kernel runs in float between an explicit dequantize / quantize pair and is listed in
``program.fallbacks``.

``program(x)`` takes and returns float tensors; ``program.run_int(q)`` integer tensors.
``program.save(dir)`` / ``IntegerProgram.load(dir)`` use safetensors + JSON (no pickle).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, fx, nn

from zeropoint.engine import conv as conv_k
from zeropoint.engine import conv_transpose as convt_k
from zeropoint.engine import elementwise as ew
from zeropoint.engine import kernels as lin_k
from zeropoint.engine.program_io import op_from_json, op_to_json
from zeropoint.engine.requantize import Requantizer, activation_range
from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.lowering import QGraph, QOp, build_qgraph, quantize_bias
from zeropoint.qparams import QParams
from zeropoint.report.files import atomic_path, atomic_write_text, check_writable_dir

ROUNDING = "single"  # one rounding of acc·M0·2^−n (TFLite's single-rounding mode): see to_integer


def _dtype(qp: QParams) -> torch.dtype:
    if qp.scheme.bits > 8:
        raise ValueError(f"the integer engine runs ≤ 8-bit activations, got {qp.scheme}")
    return torch.int8 if qp.scheme.signed else torch.uint8


def _scalar(qp: QParams | None, what: str) -> tuple[float, int]:
    if qp is None:
        raise ValueError(f"{what} is not quantized: the integer engine needs its (S, Z)")
    if qp.scale.dim() != 0:
        raise ValueError(f"{what} must be quantized per tensor, got {qp.scheme}")
    return float(qp.scale), int(qp.zero_point)


def _out_range(op: QOp) -> tuple[int, int]:
    """The output clamp: the scheme's [qmin, qmax] narrowed by a fused ReLU/ReLU6."""
    qp = op.out_qparams
    assert qp is not None
    lo, hi = activation_range(op.act, float(qp.scale), int(qp.zero_point), _dtype(qp))
    return max(lo, qp.qmin), min(hi, qp.qmax)


@dataclass
class Step:
    """One prepared operation: ``run(values)`` reads its input edges and returns its output.

    ``run`` is bound once by `_bind` with every constant it needs (weights, requantizers,
    tables), so executing a step is one call with no dispatch on its kind.
    """

    op: QOp
    params: dict[str, Any] = field(default_factory=dict)
    run: Callable[[dict[str, Tensor]], Tensor] = field(init=False, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return self.op.kind


class IntegerProgram:
    """An integer-only program lowered from a quantized simulation (see the module docstring)."""

    def __init__(self, graph: QGraph, steps: list[Step], rounding: str = ROUNDING) -> None:
        self.graph = graph
        self.steps = steps
        self.rounding = rounding

    # ------------------------------------------------------------------ execution
    @property
    def fallbacks(self) -> list[str]:
        """The operations that run in float between a dequantize and a quantize."""
        return [s.op.output for s in self.steps if s.kind == "float"]

    @property
    def input_qparams(self) -> list[QParams | None]:
        return [self._input_quant(name) for name in self.graph.inputs]

    def _input_quant(self, name: str) -> QParams | None:
        for s in self.steps:
            if s.kind == "quantize" and s.op.inputs[0] == name:
                return s.op.out_qparams
        return None

    def __call__(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Float in, float out: quantize → integer steps → dequantize."""
        values = self._run(dict(zip(self.graph.inputs, inputs, strict=True)), stop_at_int=False)
        outs = tuple(values[name].contiguous() for name in self.graph.outputs)
        return outs[0] if len(outs) == 1 else outs

    def run_int(self, *q_inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Integer codes in (of the input quantizers' grids), integer codes out."""
        values: dict[str, Tensor] = {}
        for name, q in zip(self.graph.inputs, q_inputs, strict=True):
            quant = next(s for s in self.steps if s.kind == "quantize" and s.op.inputs[0] == name)
            values[quant.op.output] = q
        values = self._run(values, stop_at_int=True)
        outs = tuple(values[name].contiguous() for name in self._int_outputs())
        return outs[0] if len(outs) == 1 else outs

    def _int_outputs(self) -> list[str]:
        by_output = {s.op.output: s for s in self.steps}
        return [
            by_output[n].op.inputs[0] if by_output[n].kind == "dequantize" else n
            for n in self.graph.outputs
        ]

    def _run(self, values: dict[str, Tensor], stop_at_int: bool) -> dict[str, Tensor]:
        with torch.no_grad():
            for step in self.steps:
                if step.op.output in values:
                    continue
                if stop_at_int and step.kind == "dequantize":
                    continue
                values[step.op.output] = step.run(values)
        return values

    # ------------------------------------------------------------------ reporting
    def summary(self) -> str:
        lines = [f"IntegerProgram: {len(self.steps)} steps, rounding={self.rounding}"]
        for s in self.steps:
            qp = s.op.out_qparams
            grid = (
                f"S={float(qp.scale):.4g} Z={int(qp.zero_point)} {qp.scheme}"
                if qp is not None and qp.scale.dim() == 0
                else "float"
            )
            kind = s.kind + (f"+{s.op.act}" if s.op.act else "")
            lines.append(f"  {kind:<26} {','.join(s.op.inputs):<26} -> {s.op.output:<18} {grid}")
        if self.fallbacks:
            lines.append(f"  float fallbacks: {', '.join(self.fallbacks)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the program as safetensors (integer weights, biases) + JSON (everything else)."""
        if self.fallbacks:
            raise ValueError(
                f"a program with float fallbacks ({', '.join(self.fallbacks)}) references torch "
                "code and cannot be saved without pickle"
            )
        directory = check_writable_dir(Path(path))
        tensors: dict[str, Tensor] = {}
        steps = []
        for i, s in enumerate(self.steps):
            entry = op_to_json(s.op)
            for key in ("q_w", "bias_q"):
                if key in s.params and s.params[key] is not None:
                    tensors[f"{i}.{key}"] = s.params[key].contiguous()
            steps.append(entry)
        doc = {
            "format": "zeropoint-integer-program",
            "version": 1,
            "rounding": self.rounding,
            "inputs": self.graph.inputs,
            "outputs": self.graph.outputs,
            "shapes": {k: list(v) for k, v in self.graph.shapes.items()},
            "steps": steps,
        }
        with atomic_path(directory / "program.safetensors") as tmp:
            save_file(tensors, str(tmp))
        atomic_write_text(directory / "program.json", json.dumps(doc, indent=1))
        return directory

    @classmethod
    def load(cls, path: str | Path) -> IntegerProgram:
        directory = Path(path)
        try:
            doc = json.loads((directory / "program.json").read_text(encoding="utf-8"))
            tensors = load_file(str(directory / "program.safetensors"))
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{directory} is not a saved integer program: {exc}") from exc
        except (json.JSONDecodeError, ValueError, OSError) as exc:
            raise ValueError(f"{directory} holds a malformed integer program: {exc}") from exc
        if doc.get("format") != "zeropoint-integer-program" or doc.get("version") != 1:
            raise ValueError(f"{directory} is not a zeropoint integer program (version 1)")
        ops = []
        for i, e in enumerate(doc["steps"]):
            op = op_from_json(e)
            op.attrs.update(
                {k: tensors[f"{i}.{k}"] for k in ("q_w", "bias_q") if f"{i}.{k}" in tensors}
            )
            ops.append(op)
        edges = {op.output: op.out_qparams for op in ops}
        edges.update({name: None for name in doc["inputs"]})
        shapes = {k: tuple(v) for k, v in doc["shapes"].items()}
        graph = QGraph(ops, edges, doc["inputs"], doc["outputs"], shapes)
        return _prepare(graph, doc["rounding"], stored=True)


# ---------------------------------------------------------------------- preparation


def to_integer(model: nn.Module, example_inputs: Any, rounding: str = ROUNDING) -> IntegerProgram:
    """Lower a converted (simulated) model to an integer-only program.

    ``rounding``: "single" (default) rounds acc·M0·2^−n once, half away from zero, which is the
    real-number formula to within M's 2^−31 approximation and agrees with ONNX Runtime's float
    requantization except at exact ties; "double" is gemmlowp's SaturatingRoundingDoublingHighMul
    followed by RoundingDivideByPOT, bit for bit (it moves ~2^−(n−30) of the outputs by one code).
    """
    if rounding not in ("single", "double"):
        raise ValueError(f"rounding={rounding!r}: expected 'single' or 'double'")
    return _prepare(build_qgraph(model, example_inputs), rounding, stored=False)


def _prepare(graph: QGraph, rounding: str, stored: bool) -> IntegerProgram:
    steps = [_prepare_step(op, graph, rounding, stored) for op in graph.ops]
    for step in steps:
        step.run = _bind(step, graph)
    return IntegerProgram(graph, steps, rounding)


def _layer_codes(op: QOp, graph: QGraph, stored: bool) -> tuple[Tensor, Tensor | None, QParams]:
    wqp: QParams = op.attrs["weight_qparams"]
    if stored:
        return op.attrs["q_w"], op.attrs.get("bias_q"), wqp
    if wqp.scheme.bits > 8 or not wqp.scheme.symmetric or int(wqp.zero_point.abs().max()) != 0:
        raise ValueError(
            f"layer {op.output}: the engine needs symmetric ≤ 8-bit weights, got {wqp.scheme}"
        )
    module: Any = op.module
    q_w = quantize_int(module.float_weight.detach(), wqp).to(torch.int8)
    bias_q = None
    if module.bias is not None:
        x_qp = graph.edges[op.inputs[0]]
        assert x_qp is not None
        bias_q = quantize_bias(module.bias.detach(), x_qp, wqp)[1].to(torch.int32)
    return q_w, bias_q, wqp


def _prepare_step(op: QOp, graph: QGraph, rounding: str, stored: bool) -> Step:
    kind = op.kind
    if kind in ("quantize", "dequantize", "float", "flatten", "reshape", "max_pool2d"):
        return Step(op)
    if kind in ("relu", "relu6"):
        sx, zx = _scalar(op.out_qparams, op.output)
        lo, hi = activation_range(kind, sx, zx, _dtype(op.out_qparams))  # type: ignore[arg-type]
        return Step(op, {"lo": lo, "hi": hi})
    s_x, z_x = _scalar(graph.edges[op.inputs[0]], f"input of {op.output}")
    if op.out_qparams is None:
        raise ValueError(f"{op.output} ({kind}) has no output quantizer: it cannot run in integers")
    s_y, z_y = _scalar(op.out_qparams, f"output of {op.output}")
    dtype = _dtype(op.out_qparams)
    lo, hi = _out_range(op)
    if kind in ("conv2d", "conv_transpose2d", "linear"):
        q_w, bias_q, wqp = _layer_codes(op, graph, stored)
        multiplier = wqp.scale.double() * s_x / s_y
        if multiplier.dim() == 0:
            multiplier = (
                multiplier.reshape(1)
                .expand(q_w.shape[1 if kind == "conv_transpose2d" else 0])
                .clone()
            )
        requant = Requantizer.from_multiplier(multiplier, z_y, dtype, lo, hi, rounding)  # type: ignore[arg-type]
        a = op.attrs
        w: lin_k.LinearWeights | conv_k.Conv2dWeights | convt_k.ConvTranspose2dWeights
        if kind == "linear":
            w = lin_k.prepare_linear(q_w, bias_q)
        elif kind == "conv2d":
            w = conv_k.prepare_conv2d(
                q_w, bias_q, a["stride"], a["padding"], a["dilation"], a["groups"]
            )
        else:
            w = convt_k.prepare_conv_transpose2d(
                q_w,
                bias_q,
                a["stride"],
                a["padding"],
                a["output_padding"],
                a["groups"],
                a["dilation"],
            )
        return Step(
            op, {"weights": w, "requant": requant, "q_w": q_w, "bias_q": bias_q, "z_x": z_x}
        )
    if kind == "add":
        s_b, z_b = _scalar(graph.edges[op.inputs[1]], f"second input of {op.output}")
        add_params = ew.prepare_add(s_x, z_x, s_b, z_b, s_y, z_y, dtype, op.act)
        return Step(op, {"add": add_params, "lo": lo, "hi": hi})
    if kind == "cat":
        grids = [_scalar(graph.edges[i], f"input {i} of {op.output}") for i in op.inputs]
        cat_params = ew.prepare_concat(
            [g[0] for g in grids], [g[1] for g in grids], s_y, z_y, dtype
        )
        return Step(op, {"cat": cat_params})
    if kind in ("avg_pool2d", "adaptive_avg_pool2d"):
        return Step(op, {"s_x": s_x, "z_x": z_x, "s_y": s_y, "z_y": z_y})
    raise ValueError(f"no integer kernel for {kind!r}")


# ---------------------------------------------------------------------- execution


def _bind(step: Step, graph: QGraph) -> Callable[[dict[str, Tensor]], Tensor]:
    """The step as a closure over its prepared constants. Activations stay (N, C, H, W) in the
    memory format the kernels produce (channels-last), so no layer copies into a layout."""
    op, p, kind = step.op, step.params, step.op.kind
    i0 = op.inputs[0] if op.inputs else ""
    if kind == "quantize":
        qp = op.out_qparams
        assert qp is not None
        dtype = _dtype(qp)
        return lambda v: quantize_int(v[i0].float(), qp).to(dtype)
    if kind == "dequantize":
        in_qp = graph.edges[i0]
        assert in_qp is not None
        return lambda v: dequantize_int(v[i0], in_qp)
    if kind == "float":
        return lambda v: _run_float(op, v, graph)
    if kind in ("conv2d", "conv_transpose2d", "linear"):
        z_x, w, rq = p["z_x"], p["weights"], p["requant"]
        if kind == "conv2d":
            return lambda v: conv_k.conv2d_nchw(v[i0], z_x, w, rq)
        if kind == "linear":
            return lambda v: lin_k.linear(v[i0], z_x, w, rq)
        return lambda v: convt_k.conv_transpose2d_nchw(v[i0], z_x, w, rq)
    if kind == "add":
        add_p: ew.AddParams = p["add"]
        if (p["lo"], p["hi"]) != (add_p.output.qmin, add_p.output.qmax):
            add_p = add_p.clamped(p["lo"], p["hi"])  # the clamp rides in the add's table
        i1 = op.inputs[1]
        return lambda v: ew.add(v[i0], v[i1], add_p)
    if kind == "cat":
        dim = int(op.attrs["dim"])
        return lambda v: ew.concat([v[i] for i in op.inputs], p["cat"], dim)
    a = op.attrs
    if kind == "max_pool2d":
        pool = (a["kernel_size"], a.get("stride") or a["kernel_size"], a.get("padding", 0),
                a.get("dilation", 1), bool(a.get("ceil_mode", False)))  # fmt: skip
        return lambda v: ew.max_pool2d_nchw(v[i0], *pool)
    if kind == "avg_pool2d":
        return lambda v: ew.avg_pool2d(
            v[i0], p["z_x"], a["kernel_size"], a.get("stride") or a["kernel_size"],
            a.get("padding", 0), bool(a.get("ceil_mode", False)),
            bool(a.get("count_include_pad", True)), x_scale=p["s_x"], out_scale=p["s_y"],
            out_zero_point=p["z_y"],
        )  # fmt: skip
    if kind == "adaptive_avg_pool2d":
        size = a.get("output_size", 1)
        if (size if isinstance(size, int) else tuple(size)) not in (1, (1, 1)):
            raise ValueError(f"adaptive average pooling to {size} has no integer kernel")
        requants: dict[int, Requantizer] = {}  # one per input size H·W

        def gap(v: dict[str, Tensor]) -> Tensor:
            x = v[i0]
            count = x.shape[2] * x.shape[3]
            if count not in requants:
                if count == 0:
                    raise ValueError(f"global average pooling of an empty {tuple(x.shape)}")
                requants[count] = ew.pool_requantizer(count, p["s_x"], p["s_y"], p["z_y"], x.dtype)
            return ew.global_avg_pool2d_nchw(x, p["z_x"], requants[count])

        return gap
    if kind == "flatten":
        start, end = int(a.get("start_dim", 1)), int(a.get("end_dim", -1))
        return lambda v: torch.flatten(v[i0], start, end)
    if kind == "reshape":
        return lambda v: v[i0].reshape(v[i0].shape[0], *op.shape[1:])
    if kind in ("relu", "relu6"):
        return lambda v: ew.clamp(v[i0], p["lo"], p["hi"])
    raise ValueError(f"no integer kernel for {kind!r}")


def _run_float(op: QOp, values: dict[str, Tensor], graph: QGraph) -> Tensor:
    """A fallback: dequantize the inputs, run the original torch op, return a float tensor."""
    node = op.node
    if node is None:
        raise ValueError(f"fallback {op.output} has no torch operation to run")
    float_inputs = {
        name: dequantize_int(values[name], qp)
        if (qp := graph.edges.get(name)) is not None
        else values[name]
        for name in op.inputs
    }
    lookup = dict(zip([n for n in _input_nodes(node)], op.inputs, strict=False))

    def arg(a: fx.Node) -> Tensor:
        return float_inputs[lookup[a]]

    args = fx.node.map_arg(node.args, arg)
    kwargs = fx.node.map_arg(node.kwargs, arg)
    if node.op == "call_module":
        assert op.module is not None
        return op.module(*args, **kwargs)  # type: ignore[no-any-return]
    if node.op == "call_method":
        self_arg, *rest = args
        return getattr(self_arg, str(node.target))(*rest, **kwargs)  # type: ignore[no-any-return]
    return node.target(*args, **kwargs)  # type: ignore[operator,no-any-return]


def _input_nodes(node: fx.Node) -> list[fx.Node]:
    from zeropoint.workflows.graph import tensor_inputs

    return tensor_inputs(node)
