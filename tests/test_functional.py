"""quantize / dequantize / fake_quantize against torch's quantized tensors, the ONNX reference
evaluator (QuantizeLinear / DequantizeLinear), closed forms and autograd."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from torch import nn

import zeropoint as zp
from zeropoint.qparams import QParams, Scheme, qparams_from_range

# --------------------------------------------------------------------------- torch


def _near_tie(x: torch.Tensor, scale: torch.Tensor, zero_point: int = 0) -> torch.Tensor:
    """x/S lies within a few float32 rounding errors of a half-integer (exact math in float64):
    |frac(x/S) − ½| < 4·ε32·(|x/S| + |Z| + 1), where float32 pipelines may round differently."""
    r = x.double() / scale.double()
    tol = 4 * torch.finfo(torch.float32).eps * (r.abs() + abs(zero_point) + 1)
    return ((r - r.floor()) - 0.5).abs() < tol


@pytest.mark.parametrize(
    ("dtype", "scheme"),
    [
        (torch.qint8, Scheme(bits=8)),
        (torch.quint8, Scheme(bits=8, signed=False)),
        (torch.qint32, Scheme(bits=32)),
    ],
)
def test_per_tensor_matches_torch_except_documented_near_ties(
    dtype: torch.dtype, scheme: Scheme
) -> None:
    # torch rounds fl(Z + x·fl(1/S)) in float32, zeropoint (like ONNX) rounds fl(x/S) and adds Z
    # after. The two agree bit for bit except where x/S lies within float32 rounding of a
    # half-integer; there they differ by exactly one code.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1_000_000, generator=g) * 3
    if scheme.bits == 32:  # an int32 bias-like scale; zeropoint divides in float64 for 32 bits
        qp = QParams(torch.tensor(0.0123), torch.tensor(7), scheme)
    else:
        qp = zp.calibrate(x, scheme)
    ours = zp.quantize_int(x, qp).long()
    ref = torch.quantize_per_tensor(x, qp.scale.item(), int(qp.zero_point), dtype)
    ref = ref.int_repr().long()
    differ = ours != ref
    assert int(differ.sum()) <= 10  # a few in 10^6 on random data
    assert bool(_near_tie(x, qp.scale, int(qp.zero_point))[differ].all())
    assert bool(((ours - ref).abs()[differ] == 1).all())


def test_per_channel_matches_torch_except_documented_near_ties() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 3, 1000, generator=g) * torch.logspace(-2, 1, 64).reshape(64, 1, 1, 1)
    qp = zp.calibrate(x, Scheme(bits=8, axis=0))
    ours = zp.quantize_int(x, qp).long()
    ref = (
        torch.quantize_per_channel(x, qp.scale.double(), qp.zero_point.long(), 0, torch.qint8)
        .int_repr()
        .long()
    )
    differ = ours != ref
    assert int(differ.sum()) <= 10
    scale = qp.scale.reshape(64, 1, 1, 1).expand_as(x)
    assert bool(_near_tie(x[differ], scale[differ]).all())


def test_a_parameter_quantizes_to_the_codes_of_its_values() -> None:
    """Codes carry no gradient: a tensor that requires one (a layer's weight) gives the codes of
    its values, per tensor and per channel (it used to raise from an in-place clamp)."""
    w = nn.Parameter(torch.randn(4, 8))
    for scheme in (Scheme(bits=4), Scheme(bits=8, axis=0)):
        qp = zp.calibrate(w.detach(), scheme)
        assert torch.equal(zp.quantize_int(w, qp), zp.quantize_int(w.detach(), qp))
    assert w.requires_grad


def test_dequantize_matches_torch_exactly() -> None:
    x = torch.randn(10_000) * 2
    qp = zp.calibrate(x, Scheme(bits=8, signed=False))
    tq = torch.quantize_per_tensor(x, qp.scale.item(), int(qp.zero_point), torch.quint8)
    assert torch.equal(zp.dequantize(tq.int_repr(), qp), tq.dequantize())


# --------------------------------------------------------------------------- ONNX reference


def _onnx_type(scheme: Scheme) -> int:
    return {
        (8, True): TensorProto.INT8,
        (8, False): TensorProto.UINT8,
        (4, True): TensorProto.INT4,
        (4, False): TensorProto.UINT4,
        (16, True): TensorProto.INT16,
        (16, False): TensorProto.UINT16,
    }[(scheme.bits, scheme.signed)]


def _onnx_quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """QuantizeLinear (opset 21) run by onnx.reference.ReferenceEvaluator."""
    elem = _onnx_type(qp.scheme)
    zp_tensor = helper.make_tensor(
        "zp", elem, list(qp.zero_point.shape), qp.zero_point.flatten().tolist()
    )
    attrs: dict[str, int] = {}
    if qp.axis is not None:
        attrs["axis"] = qp.axis
    if qp.scheme.group_size is not None:
        attrs["block_size"] = qp.scheme.group_size
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", elem, list(x.shape))],
        initializer=[
            onnx.numpy_helper.from_array(qp.scale.numpy(), "s"),
            zp_tensor,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    (y,) = ReferenceEvaluator(model).run(None, {"x": x})
    return np.asarray(y).astype(np.int64)


@pytest.mark.parametrize(
    "scheme",
    [
        Scheme(bits=8),
        Scheme(bits=8, signed=False),
        Scheme(bits=8, symmetric=True, axis=0),
        Scheme(bits=8, signed=False, axis=1),
        Scheme(bits=4, symmetric=True, group_size=16),
        Scheme(bits=4, signed=False, axis=0, group_size=4),
        Scheme(bits=4, signed=True),
        Scheme(bits=16, signed=True, axis=0),
    ],
    ids=str,
)
def test_quantize_is_bit_exact_with_onnx_quantize_linear(scheme: Scheme) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 64, generator=g) * 4
    qp = zp.calibrate(x, scheme)
    # a shifted copy exercises saturation at both ends (values outside the calibrated range)
    x_wide = x * 1.5 - 0.25
    for data in (x, x_wide):
        ours = zp.quantize_int(data, qp).long().numpy()
        assert np.array_equal(ours, _onnx_quantize(data.numpy(), qp))


def test_dequantize_is_bit_exact_with_onnx_dequantize_linear() -> None:
    x = torch.randn(4, 32)
    qp = zp.calibrate(x, Scheme(bits=8, signed=False, axis=1))
    q = zp.quantize_int(x, qp)
    node = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)
    graph = helper.make_graph(
        [node],
        "dq",
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [4, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
        initializer=[
            onnx.numpy_helper.from_array(qp.scale.numpy(), "s"),
            onnx.numpy_helper.from_array(qp.zero_point.numpy().astype(np.uint8), "zp"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    (ref,) = ReferenceEvaluator(model).run(None, {"q": q.numpy()})
    assert np.array_equal(zp.dequantize(q, qp).numpy(), ref)


# --------------------------------------------------------------------------- rounding


def _unit(rounding: str) -> QParams:
    return QParams(torch.tensor(1.0), torch.tensor(0), Scheme(bits=8, rounding=rounding))


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        ("half_even", [-2, -2, 0, 0, 2, 2, 0, 1]),
        ("half_away", [-3, -2, -1, 1, 2, 3, 0, 1]),
        ("floor", [-3, -2, -1, 0, 1, 2, 0, 0]),
    ],
)
def test_deterministic_rounding_modes(rounding: str, expected: list[int]) -> None:
    # 0.49999997 is the float32 just below ½: floor(|r| + ½) would wrongly give 1 there
    r = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997, 0.75])
    assert zp.quantize_int(r, _unit(rounding)).tolist() == expected


def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    n = 100_000
    r = torch.full((n,), 0.3)
    draws = zp.quantize_int(r, _unit("stochastic"), generator=torch.Generator().manual_seed(0))
    err = draws.double() - 0.3
    # the error of one draw has std sqrt(p(1−p)) = 0.458; its mean must lie within 3 SE of 0
    assert abs(err.mean().item()) < 3 * err.std().item() / n**0.5
    again = zp.quantize_int(r, _unit("stochastic"), generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert set(draws.unique().tolist()) == {0, 1}


# --------------------------------------------------------------------------- properties

finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(finite, min_size=1, max_size=64),
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    signed=st.booleans(),
    narrow=st.booleans(),
    rounding=st.sampled_from(["half_even", "half_away"]),
)
def test_round_trip_error_within_half_step_and_codes_in_range(
    values: list[float], bits: int, symmetric: bool, signed: bool, narrow: bool, rounding: str
) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    scheme = Scheme(bits=bits, symmetric=symmetric, signed=signed, narrow=narrow, rounding=rounding)
    qp = zp.calibrate(x, scheme)
    q = zp.quantize_int(x, qp)
    assert int(q.min()) >= scheme.qmin and int(q.max()) <= scheme.qmax
    s = qp.scale.double()
    lo = s * (scheme.qmin - int(qp.zero_point))
    hi = s * (scheme.qmax - int(qp.zero_point))
    inside = (x.double() >= lo) & (x.double() <= hi)
    err = (zp.dequantize(q, qp).double() - x.double()).abs()
    # half a step, plus float32 rounding of x/S and of S·(q − Z)
    assert bool((err[inside] <= s / 2 * (1 + 1e-5) + 1e-6 * x.double().abs()[inside]).all())
    # quantize(dequantize(q)) == q: every code is a fixed point
    assert torch.equal(zp.quantize_int(zp.dequantize(q, qp), qp), q)


# --------------------------------------------------------------------------- fake quantize


def test_fake_quantize_equals_round_trip_and_has_straight_through_gradient() -> None:
    x = torch.linspace(-3, 3, 601, requires_grad=True)
    qp = qparams_from_range(-1.0, 2.0, Scheme(bits=8))
    y = zp.fake_quantize(x, qp)
    assert torch.equal(y.detach(), zp.dequantize(zp.quantize(x.detach(), qp)))
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    lo = qp.scale.item() * (-128 - int(qp.zero_point))
    hi = qp.scale.item() * (127 - int(qp.zero_point))
    inside = (x.detach() >= lo - qp.scale.item() / 2) & (x.detach() <= hi + qp.scale.item() / 2)
    # gradient 1 wherever round(x/S)+Z is inside [qmin, qmax], 0 where it was clipped
    assert torch.equal(x.grad, inside.float())
    assert x.grad[0] == 0 and x.grad[300] == 1 and x.grad[-1] == 0


def test_fake_quantize_per_channel_gradient_flows() -> None:
    w = torch.randn(4, 8, requires_grad=True)
    qp = zp.calibrate(w.detach(), Scheme(bits=4, symmetric=True, axis=0))
    (zp.fake_quantize(w, qp) ** 2).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


# --------------------------------------------------------------------------- bad input


def test_nan_and_inf_are_rejected_with_counts_and_location() -> None:
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    x[2, 0] = float("inf")
    qp = QParams(torch.tensor(0.1), torch.tensor(0), Scheme())
    with pytest.raises(ValueError, match=r"1 NaN and 1 Inf.*first at index \(1, 2\)"):
        zp.quantize(x, qp)
    with pytest.raises(ValueError, match="NaN"):
        zp.fake_quantize(x, qp)
    with pytest.raises(ValueError, match="NaN"):
        zp.calibrate(x, Scheme())
    # large tensors take the chunked path, which checks each chunk as it goes
    big = torch.randn(1_000_000)
    big[-3] = float("-inf")
    with pytest.raises(ValueError, match=r"0 NaN and 1 Inf.*first at index \(999997,\)"):
        zp.quantize(big, qp)


def test_non_float_and_empty_inputs_are_rejected() -> None:
    qp = QParams(torch.tensor(0.1), torch.tensor(0), Scheme())
    with pytest.raises(TypeError, match="floating-point"):
        zp.quantize(torch.arange(4), qp)
    with pytest.raises(ValueError, match="empty"):
        zp.calibrate(torch.empty(0), Scheme())
    with pytest.raises(TypeError, match="needs the QParams"):
        zp.dequantize(torch.arange(3, dtype=torch.int8))
