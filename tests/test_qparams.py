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


def test_slices_and_their_inverse_against_direct_indexing() -> None:
    # every row of to_slices is one (S, Z) slice; from_slices puts one value per row back where
    # the scale tensor holds it. Reference: plain indexing of x = arange (each value its index).
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(2, 3, 8)
    # per tensor: one row, the whole tensor in order
    assert torch.equal(to_slices(x, Scheme()), x.reshape(1, -1))
    # per channel along axis 1: row c is x[:, c, :]; the first value of each row is x[0, c, 0]
    rows = to_slices(x, Scheme(axis=1))
    for c in range(3):
        assert torch.equal(rows[c], x[:, c, :].reshape(-1))
    assert torch.equal(from_slices(rows[:, 0], x.shape, Scheme(axis=1)), x[0, :, 0])
    # groups of 4 along the last axis: block (i, j, k) is x[i, j, 4k:4k+4]; the scale tensor
    # has shape (2, 3, 2) and its entry (i, j, k) belongs to that block
    scheme = Scheme(axis=-1, group_size=4)
    rows = to_slices(x, scheme)
    firsts = from_slices(rows[:, 0], x.shape, scheme)
    assert tuple(firsts.shape) == (2, 3, 2) and torch.equal(firsts, x[..., ::4])
    for i in range(2):
        for j in range(3):
            for k in range(2):
                block = x[i, j, 4 * k : 4 * k + 4]
                assert torch.equal(rows[(i * 3 + j) * 2 + k], block)
    # groups of 3 along axis 1 (size 3: one group per column): scale shape (2, 1, 8)
    scheme = Scheme(axis=1, group_size=3)
    firsts = from_slices(to_slices(x, scheme)[:, 0], x.shape, scheme)
    assert tuple(firsts.shape) == (2, 1, 8) and torch.equal(firsts, x[:, :1, :])


def test_group_wise_quantization_equals_quantizing_each_block_alone() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 12, generator=g) * torch.logspace(-1, 1, 12)
    for axis in (2, -1):  # a negative axis resolves to the same blocks
        scheme = Scheme(bits=4, axis=axis, group_size=6)
        qp = zp.calibrate(x, scheme)
        q = zp.quantize_int(x, qp)
        for i in range(3):
            for j in range(4):
                for k in range(2):
                    block = x[i, j, 6 * k : 6 * k + 6]
                    ref = zp.quantize_int(block, zp.calibrate(block, Scheme(bits=4)))
                    assert torch.equal(q[i, j, 6 * k : 6 * k + 6], ref)


def test_negative_axes_and_0d_tensors() -> None:
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    # group-wise QParams built by hand with a negative axis resolve it from the scale's rank
    scheme = Scheme(bits=8, symmetric=True, axis=-1, group_size=3)
    ref = zp.calibrate(x, scheme)
    by_hand = QParams(ref.scale, ref.zero_point, scheme, axis=-1)
    assert by_hand.axis == 1
    assert torch.equal(zp.quantize_int(x, by_hand), zp.quantize_int(x, ref))
    # per-channel QParams with a negative axis index the tensor from the end
    per_channel = zp.calibrate(x, Scheme(axis=1))
    negative = QParams(per_channel.scale, per_channel.zero_point, Scheme(axis=-1), axis=-1)
    assert torch.equal(zp.quantize_int(x, negative), zp.quantize_int(x, per_channel))
    with pytest.raises(ValueError, match="axis -3 is out of range"):
        zp.quantize_int(x, QParams(per_channel.scale, per_channel.zero_point, Scheme(axis=-3), -3))
    # a 0-d tensor: per tensor works, an axis is refused by name
    scalar = torch.tensor(0.7)
    qp = zp.calibrate(scalar, Scheme(signed=False))
    assert zp.quantize_int(scalar, qp).shape == () and int(zp.quantize_int(scalar, qp)) == 255
    assert zp.fake_quantize(scalar, qp).item() == pytest.approx(0.7, rel=1e-6)  # the top level
    with pytest.raises(ValueError, match="0-d tensor has no axes"):
        zp.calibrate(scalar, Scheme(axis=0))
    with pytest.raises(ValueError, match="0-d tensor has no axes"):
        zp.calibrate(scalar, Scheme(group_size=1))


def test_one_bit_means_the_levels_zero_and_s() -> None:
    # Scheme(bits=1, signed=False): codes {0, 1}, r = S·(q − Z): levels {0, S} for data ≥ 0
    # (Z = 0), {−S, 0} for data ≤ 0 (Z = 1); mixed-sign data keeps the side with more range
    pos = torch.tensor([0.0, 0.2, 0.7, 1.0])
    qp = zp.calibrate(pos, Scheme(bits=1, signed=False))
    assert qp.scale.item() == 1.0 and int(qp.zero_point) == 0
    assert zp.fake_quantize(pos, qp).tolist() == [0.0, 0.0, 1.0, 1.0]
    neg = -pos
    qn = zp.calibrate(neg, Scheme(bits=1, signed=False))
    assert int(qn.zero_point) == 1 and zp.fake_quantize(neg, qn).tolist() == [0.0, 0.0, -1.0, -1.0]
    for kwargs in ({"bits": 1}, {"bits": 1, "signed": False, "symmetric": True}):
        with pytest.raises(ValueError, match="BinaryCodeQuantizer"):
            Scheme(**kwargs)  # type: ignore[arg-type]


def test_32_bit_schemes_are_signed_int32_without_wrap() -> None:
    # the largest int32 zero point and codes survive the round trip (float64 arithmetic)
    scheme = Scheme(bits=32)
    qp = QParams(torch.tensor(1.0), torch.tensor(2**31 - 1), scheme)
    assert int(qp.zero_point) == 2**31 - 1
    x = torch.tensor([0.0, -1.0, -(2.0**32 - 1), 5.0], dtype=torch.float64)
    q = zp.quantize_int(x, qp)
    assert q.dtype == torch.int32 and q.tolist() == [2**31 - 1, 2**31 - 2, -(2**31), 2**31 - 1]
    assert zp.dequantize(q, qp, dtype=torch.float64).tolist() == [0.0, -1.0, -(2.0**32 - 1), 0.0]
    with pytest.raises(ValueError, match="int32 biases"):
        Scheme(bits=32, signed=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 0}, "out of range"),
        ({"bits": 17}, "out of range"),
        ({"rounding": "nearest"}, "unknown"),
        ({"group_size": 0}, "positive"),
        ({"bits": 1, "signed": False, "narrow": True}, "fewer than two levels"),
        ({"bits": 1}, "BinaryCodeQuantizer"),
        ({"bits": 32, "signed": False}, "int32 biases"),
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
