"""ONNX export of weight-only and coded-weight models, for ONNX Runtime.

    export_weight_only_onnx(model_q, "model.onnx", (example_input,), input_names=[...], ...)

The model is exported by torch's TorchScript exporter with every quantized Linear replaced by a
float Linear holding the weight it applies; then each MatMul / Gemm whose weight initializer is
exactly such a weight (matched by value) is rewritten to compute from the codes instead:

* `WeightOnlyLinear` (uniform int, GPTQ / AWQ / HQQ) → ``com.microsoft::MatMulNBits``: the packed
  codes as B (N, K / block, block·bits / 8) uint8 with the sign bit flipped (MatMulNBits' codes
  are unsigned), scales (N, K / block) and zero points Z + 2^(c−1), packed uint8 — or, with
  HQQ's fractional zero points, float zero points Z + 2^(c−1) − O/S (2 and 4 bits: ONNX Runtime's
  CPU kernel takes no float zero points at 8 bits) — so ONNX Runtime's dequantization
  (q − zp)·scale is the layer's. 3-bit codes go as 4-bit ones (their container). An AWQ input
  scale becomes a Mul by 1/s before it; the bias an Add after it. Needs K / block whole groups of
  a power-of-two size ≥ 16 (MatMulNBits' rule); other layers keep a float initializer.
* `CodedLinear` table kinds (k-means, log2, binary codes, fp4, int) → Gather: the per-row code
  table (flattened) gathered at codes + 2^c·row, giving W at run time, then Transpose and MatMul.
  The codes are stored as a uint8 initializer (one code per byte: ONNX has no 2- or 3-bit type,
  and ONNX Runtime's Gather takes no 4-bit indices), the table as float. ONNX Runtime folds this
  constant subgraph into a float weight when the session loads, so it runs at fp32 speed with
  fp32 memory: the file is small, the run is not faster.
* `CodedLinear` fp8 kinds → DequantizeLinear of a float8 (e4m3fn / e5m2) initializer with the
  per-channel or per-tensor scale (opset ≥ 19), then Transpose and MatMul.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zeropoint.extras import require
from zeropoint.nn.codebook_weights import CodedLinear, code_table
from zeropoint.nn.weight_only import WeightOnlyLinear
from zeropoint.report.files import atomic_path

#: opset of the exported graph (DequantizeLinear with float8 needs 19)
OPSET = 19


def _float_copy(model: nn.Module) -> tuple[nn.Module, dict[bytes, tuple[str, nn.Module]]]:
    """The model with quantized Linears as float Linears, and their weights (Wᵀ, as the exporter
    writes MatMul weights, and W, as it writes Gemm's) by value."""
    clone = copy.deepcopy(model)
    weights: dict[bytes, tuple[str, nn.Module]] = {}
    for name, module in list(clone.named_modules()):
        if not isinstance(module, WeightOnlyLinear | CodedLinear):
            continue
        w = module.dequantized_weight().detach().float()
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(w)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        clone.set_submodule(name, linear)
        original = model.get_submodule(name)
        weights[_key(w.numpy())] = (name, original)
        weights[_key(w.T.contiguous().numpy())] = (name + ".T", original)
    return clone, weights


def _key(a: np.ndarray) -> bytes:
    return bytes(str(a.shape), "ascii") + np.ascontiguousarray(a, dtype=np.float32).tobytes()


def _power_of_two(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def _matmul_nbits(
    layer: WeightOnlyLinear, x: str, out: str, prefix: str
) -> tuple[list[Any], list[Any]] | None:
    """Nodes and initializers computing y = x·Ŵᵀ (no bias) with MatMulNBits, or None."""
    from onnx import helper, numpy_helper

    pw = layer._kernel_weight
    if pw is None or pw.kind != "affine":
        return None
    n, k = pw.shape
    block = pw.group_size
    if not _power_of_two(block) or pw.container not in (2, 4, 8):
        return None
    blob = block * pw.container // 8
    codes = pw.codes.numpy() ^ np.uint8(_flip_byte(pw.flip, pw.container))
    scales = pw.scale.numpy().astype(np.float32)
    if pw.offset.numel():  # fractional zero points Z' − O/S, as floats (2- and 4-bit only)
        if pw.container == 8:
            return None
        zero: np.ndarray = (pw.zero.numpy() - pw.offset.numpy() / scales).astype(np.float32)
        zero = zero.reshape(n, -1)
    else:  # integer zero points, packed like the codes along the blocks of a row
        from zeropoint.kernels.packed import pack_codes

        zero = pack_codes(pw.zero.reshape(n, -1), pw.container).numpy().reshape(-1)
    inits = [
        numpy_helper.from_array(codes.reshape(n, k // block, blob), prefix + "_B"),
        numpy_helper.from_array(scales.reshape(n, k // block), prefix + "_scales"),
        numpy_helper.from_array(zero, prefix + "_zero_points"),
    ]
    nodes = []
    src = x
    if layer._scaled_input:
        inits.append(
            numpy_helper.from_array(
                layer._inv_input_scale.numpy().astype(np.float32), prefix + "_inv_s"
            )
        )
        nodes.append(
            helper.make_node("Mul", [x, prefix + "_inv_s"], [prefix + "_xs"], name=prefix + "_awq")
        )
        src = prefix + "_xs"
    nodes.append(
        helper.make_node(
            "MatMulNBits",
            [src, prefix + "_B", prefix + "_scales", prefix + "_zero_points"],
            [out],
            name=prefix + "_matmulnbits",
            domain="com.microsoft",
            K=k,
            N=n,
            bits=pw.container,
            block_size=block,
        )
    )
    return nodes, inits


def _flip_byte(flip: int, container: int) -> int:
    """The byte that flips the sign bit of every code packed in it."""
    byte = 0
    for shift in range(0, 8, container):
        byte |= flip << shift
    return byte


def _coded_weight(layer: CodedLinear, prefix: str) -> tuple[list[Any], list[Any], str]:
    """Nodes and initializers producing Wᵀ (K, N) from the codes; the name of Wᵀ."""
    from onnx import TensorProto, helper, numpy_helper

    n, k = layer.rows_shape
    spec = layer.spec
    nodes: list[Any] = []
    inits: list[Any] = []
    w = prefix + "_W"
    if spec.kind in ("fp8_e4m3fn", "fp8_e5m2"):
        dtype = TensorProto.FLOAT8E4M3FN if spec.kind == "fp8_e4m3fn" else TensorProto.FLOAT8E5M2
        raw = layer.weight_codes.numpy().astype(np.uint8)
        tensor = helper.make_tensor(prefix + "_fp8", dtype, [n, k], raw.tobytes(), raw=True)
        scale = layer.weight_params.reshape(-1).numpy().astype(np.float32)
        inits += [
            tensor,
            numpy_helper.from_array(
                scale if spec.per_channel else scale.reshape(()), prefix + "_scale"
            ),
        ]
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [prefix + "_fp8", prefix + "_scale"],
                [w],
                name=prefix + "_dq",
                axis=0,
            )
        )
    else:
        from zeropoint.kernels.packed import unpack_codes

        c = spec.container
        codes = unpack_codes(layer.weight_codes, c, k).numpy().astype(np.int64)
        rows = n if spec.per_channel else 1
        if rows > 1:
            codes = codes + (np.arange(n, dtype=np.int64) << c)[:, None]
        table = code_table(layer.weight_params, spec).numpy().astype(np.float32).reshape(-1)
        # one code per byte (uint8) when the row offsets fit, else int32 indices
        index_type = np.uint8 if codes.max() < 256 else np.int32
        inits += [
            numpy_helper.from_array(codes.astype(index_type), prefix + "_codes"),
            numpy_helper.from_array(table, prefix + "_table"),
        ]
        idx = prefix + "_codes"
        if index_type == np.uint8:
            nodes.append(
                helper.make_node(
                    "Cast", [idx], [prefix + "_idx"], name=prefix + "_cast", to=TensorProto.INT32
                )
            )
            idx = prefix + "_idx"
        nodes.append(
            helper.make_node(
                "Gather", [prefix + "_table", idx], [w], name=prefix + "_gather", axis=0
            )
        )
    nodes.append(helper.make_node("Transpose", [w], [w + "T"], name=prefix + "_t", perm=[1, 0]))
    return nodes, inits, w + "T"


def export_weight_only_onnx(
    model: nn.Module,
    path: str | Path,
    args: tuple[Any, ...],
    **export_kwargs: Any,
) -> Path:
    """Write ``model`` (with `WeightOnlyLinear` / `CodedLinear` layers) as ONNX that ONNX
    Runtime runs (module docstring); ``export_kwargs`` go to ``torch.onnx.export`` (input and
    output names, dynamic axes). Returns the path; a RuntimeWarning names the quantized layers
    that stay float weights in the file (MatMulNBits cannot hold them, or the exporter folded
    their weight into another constant).
    """
    onnx = require("onnx", "ONNX export")
    from onnx import helper

    float_model, weights = _float_copy(model)
    float_model.eval()
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing in opset.*")
        torch.onnx.export(
            float_model, args, str(tmp), dynamo=False, opset_version=OPSET, **export_kwargs
        )
        proto = onnx.load(str(tmp))
        found = _rewrite(proto, weights)
        if not any(o.domain == "com.microsoft" for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.save(proto, str(tmp))
    quantized = {n.removesuffix(".T") for n, _ in weights.values()}
    if quantized - found:
        warnings.warn(
            f"{len(quantized - found)} quantized layer(s) kept as float weights in the ONNX file "
            f"(MatMulNBits cannot hold them, or they are not in the exported graph): "
            f"{sorted(quantized - found)[:5]}",
            RuntimeWarning,
            stacklevel=2,
        )
    return path


def _rewrite(proto: Any, weights: dict[bytes, tuple[str, nn.Module]]) -> set[str]:
    """Rewrite the graph in place; the names of the layers now computed from their codes."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    found: set[str] = set()
    new_nodes = []
    for i, node in enumerate(graph.node):
        hit = None
        if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2 and node.input[1] in inits:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Gemm" and (
                attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0
            ):
                attrs = {}
            else:
                value = numpy_helper.to_array(inits[node.input[1]])
                hit = weights.get(_key(value))
                # MatMul holds Wᵀ (K, N); Gemm with transB=1 holds W (N, K)
                if hit is not None:
                    transposed = hit[0].endswith(".T")
                    if (node.op_type == "MatMul") != transposed or (
                        node.op_type == "Gemm" and not attrs.get("transB", 0)
                    ):
                        hit = None
        if hit is None:
            new_nodes.append(node)
            continue
        name, layer = hit
        name = name.removesuffix(".T")
        prefix = f"zp_{i}_" + name.replace(".", "_")
        x = node.input[0]
        mm_out = (
            node.output[0] if node.op_type == "MatMul" or len(node.input) < 3 else prefix + "_mm"
        )
        built = (
            _matmul_nbits(layer, x, mm_out, prefix) if isinstance(layer, WeightOnlyLinear) else None
        )
        if built is not None:
            nodes, extra = built
        elif isinstance(layer, CodedLinear):
            nodes, extra, wt = _coded_weight(layer, prefix)
            nodes.append(helper.make_node("MatMul", [x, wt], [mm_out], name=prefix + "_matmul"))
        else:
            new_nodes.append(node)  # not expressible: the float initializer stays
            continue
        if mm_out != node.output[0]:
            nodes.append(
                helper.make_node(
                    "Add", [mm_out, node.input[2]], [node.output[0]], name=prefix + "_bias"
                )
            )
        new_nodes.extend(nodes)
        graph.initializer.extend(extra)
        found.add(name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {name for n in graph.node for name in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return found


__all__ = ["OPSET", "export_weight_only_onnx"]
