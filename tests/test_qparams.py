"""Scheme and the scale / zero-point formula, against closed forms and torch.ao's observers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import zeropoint as zp
from zeropoint.qparams import QParams, Scheme, from_slices, qparams_from_range, to_slices


def test_asymmetric_int8_closed_form() -> None:
    # S = (β − α)/255 = 4/255; Z = −128 − round(−1 / S) = −128 + round(63.75) = −64
    qp = qparams_from_range(-1.0, 3.0, Scheme(bits=8))
    assert qp.scale.item() == pytest.approx(4 / 255, rel=1e-7)
    assert int(qp.zero_point) == -64


def test_range_is_widened_to_contain_zero() -> None:
    # [2, 5] becomes [0, 5]: S = 5/255 and 0.0 sits on qmin exactly
    qp = qparams_from_range(2.0, 5.0, Scheme(bits=8, signed=False))
    assert qp.scale.item() == pytest.approx(5 / 255, rel=1e-7)
    assert int(qp.zero_point) == 0


def test_symmetric_restricted_and_full_range() -> None:
    restricted = qparams_from_range(-2.54, 1.0, Scheme(bits=8, symmetric=True, narrow=True))
    assert restricted.scale.item() == pytest.approx(2.54 / 127, rel=1e-7)
    assert (restricted.qmin, restricted.qmax) == (-127, 127)
    full = qparams_from_range(-2.54, 1.0, Scheme(bits=8, symmetric=True))
    assert full.scale.item() == pytest.approx(2 * 2.54 / 255, rel=1e-7)
    assert (full.qmin, full.qmax) == (-128, 127)
    assert int(full.zero_point) == int(restricted.zero_point) == 0


def test_symmetric_unsigned_puts_zero_point_at_midpoint() -> None:
    qp = qparams_from_range(-1.0, 1.0, Scheme(bits=8, symmetric=True, signed=False))
    assert int(qp.zero_point) == 128
    assert qp.scale.item() == pytest.approx(2 / 255, rel=1e-7)


@pytest.mark.parametrize("symmetric", [False, True])
def test_degenerate_range_gives_a_valid_scale(symmetric: bool) -> None:
    qp = qparams_from_range(0.0, 0.0, Scheme(symmetric=symmetric))
    assert qp.scale.item() == 1.0
    assert zp.dequantize(zp.quantize(torch.zeros(3), qp)).abs().max().item() == 0.0
    # a constant non-zero tensor is not degenerate: the range widens to [0, c]. Affine: c is the
    # top level exactly. Full-range symmetric: c/S = 127.5 rounds to 128 and clips to 127, S/2 off.
    c = zp.calibrate(torch.full((10,), 3.0), Scheme(symmetric=symmetric))
    err = abs(zp.fake_quantize(torch.full((1,), 3.0), c).item() - 3.0)
    assert err == pytest.approx(c.scale.item() / 2 if symmetric else 0.0, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    lo=st.floats(-1e6, 1e6, allow_nan=False, width=32),
    width=st.floats(0, 1e6, allow_nan=False, width=32),
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    signed=st.booleans(),
    narrow=st.booleans(),
)
def test_zero_is_exactly_representable(
    lo: float, width: float, bits: int, symmetric: bool, signed: bool, narrow: bool
) -> None:
    scheme = Scheme(bits=bits, symmetric=symmetric, signed=signed, narrow=narrow)
    qp = qparams_from_range(lo, lo + width, scheme)
    q = zp.quantize_int(torch.zeros(1), qp)
    assert int(q) == int(qp.zero_point)
    assert zp.dequantize(q, qp).item() == 0.0


def test_matches_torch_minmax_observer_per_tensor_and_per_channel() -> None:
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=g) * torch.linspace(0.1, 5, 16).unsqueeze(1) + 0.3
    ref = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    ref(x)
    s_ref, z_ref = ref.calculate_qparams()
    qp = zp.calibrate(x, Scheme(bits=8, signed=False))
    assert qp.scale.item() == pytest.approx(s_ref.item(), rel=1e-6)
    assert int(qp.zero_point) == int(z_ref)

    ref_c = PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
    )
    ref_c(x)
    s_c, z_c = ref_c.calculate_qparams()
    qp_c = zp.calibrate(x, Scheme(bits=8, symmetric=True, axis=0))
    torch.testing.assert_close(qp_c.scale, s_c.float(), rtol=1e-6, atol=0)
    assert torch.equal(qp_c.zero_point.long(), z_c.long())


def test_group_wise_scale_has_onnx_blocked_shape() -> None:
    x = torch.randn(6, 32)
    qp = zp.calibrate(x, Scheme(bits=4, symmetric=True, group_size=8))
    assert qp.axis == 1 and tuple(qp.scale.shape) == (6, 4)
    # the scale of block (i, j) is max|x| over x[i, 8j:8j+8] / 7.5
    expected = x.reshape(6, 4, 8).abs().amax(-1) / 7.5
    torch.testing.assert_close(qp.scale, expected, rtol=1e-6, atol=0)
    qp0 = zp.calibrate(x, Scheme(bits=4, axis=0, group_size=3))
    assert tuple(qp0.scale.shape) == (2, 32)


def test_slices_round_trip() -> None:
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    for scheme in [
        Scheme(),
        Scheme(axis=1),
        Scheme(axis=-1, group_size=4),
        Scheme(axis=1, group_size=3),
    ]:
        rows = to_slices(x, scheme)
        first = rows[:, 0]
        shaped = from_slices(first, x.shape, scheme)
        assert shaped.numel() == rows.shape[0]
    per_channel = to_slices(x, Scheme(axis=1))
    assert torch.equal(per_channel[1], x[:, 1].reshape(-1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, "out of range"),
        ({"bits": 17}, "out of range"),
        ({"rounding": "nearest"}, "unknown"),
        ({"group_size": 0}, "positive"),
        ({"bits": 1, "symmetric": True, "narrow": True}, "fewer than two levels"),
    ],
)
def test_bad_schemes_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scheme(**kwargs)  # type: ignore[arg-type]


def test_bad_qparams_raise() -> None:
    with pytest.raises(ValueError, match="outside the format"):
        QParams(torch.tensor(0.1), torch.tensor(200), Scheme(bits=8))
    with pytest.raises(ValueError, match="finite and > 0"):
        QParams(torch.tensor(0.0), torch.tensor(0), Scheme())
    with pytest.raises(ValueError, match="NaN"):
        qparams_from_range(math.nan, 1.0, Scheme())
    with pytest.raises(ValueError, match="exceeds"):
        qparams_from_range(2.0, 1.0, Scheme())
    with pytest.raises(ValueError, match="does not divide"):
        zp.calibrate(torch.randn(4, 10), Scheme(group_size=4))
    with pytest.raises(ValueError, match="out of range"):
        zp.calibrate(torch.randn(4, 10), Scheme(axis=2))
    qp = zp.calibrate(torch.randn(4, 10), Scheme(axis=0))
    with pytest.raises(ValueError, match="per-channel scales"):
        zp.quantize(torch.randn(5, 10), qp)
