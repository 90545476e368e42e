"""QTensor storage: sub-byte codes packed as ONNX packs them, unpacked exactly."""

from __future__ import annotations

import ml_dtypes
import pytest
import torch
from onnx import numpy_helper

import zeropoint as zp
from zeropoint.qparams import Scheme
from zeropoint.qtensor import QTensor, pack, unpack


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("numel", [1, 7, 64, 1001])
def test_pack_unpack_round_trip(bits: int, signed: bool, numel: int) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    g = torch.Generator().manual_seed(bits * 100 + numel)
    codes = torch.randint(lo, hi + 1, (numel,), generator=g)
    packed = pack(codes, bits, signed)
    per_byte = 8 // (1 if bits == 1 else 2 if bits == 2 else 4)
    assert packed.numel() == -(-numel // per_byte)
    assert torch.equal(unpack(packed, bits, signed, numel).long(), codes)


@pytest.mark.parametrize(
    ("bits", "signed", "np_dtype"),
    [
        (4, True, ml_dtypes.int4),
        (4, False, ml_dtypes.uint4),
        (2, True, ml_dtypes.int2),
        (2, False, ml_dtypes.uint2),
    ],
)
def test_packing_is_byte_identical_to_onnx(bits: int, signed: bool, np_dtype: type) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    codes = torch.randint(lo, hi + 1, (37,), generator=torch.Generator().manual_seed(3))
    onnx_bytes = numpy_helper.from_array(codes.numpy().astype(np_dtype), "t").raw_data
    assert bytes(pack(codes, bits, signed).numpy().tobytes()) == onnx_bytes


def test_int4_qtensor_is_packed_and_dequantizes_like_unpacked_codes() -> None:
    x = torch.randn(16, 64)
    qp = zp.calibrate(x, Scheme(bits=4, symmetric=True, group_size=32))
    qt = zp.quantize(x, qp)
    assert qt.packed and qt.nbytes == x.numel() // 2
    assert qt.int_repr().dtype == torch.int8 and qt.int_repr().shape == x.shape
    assert torch.equal(qt.dequantize(), zp.dequantize(qt.int_repr(), qp))
    assert qt.scale is qp.scale and qt.axis == 1 and qt.bits == 4


def test_int8_qtensor_is_stored_as_is() -> None:
    x = torch.randn(5, 5)
    qt = zp.quantize(x, zp.calibrate(x, Scheme()))
    assert not qt.packed and qt.data.dtype == torch.int8 and qt.nbytes == 25


def test_bad_codes_are_rejected() -> None:
    with pytest.raises(ValueError, match="cannot be packed"):
        pack(torch.tensor([8]), 4, True)
    with pytest.raises(ValueError, match="too small"):
        unpack(torch.zeros(1, dtype=torch.uint8), 4, True, 3)
    qp = zp.calibrate(torch.randn(4), Scheme())
    with pytest.raises(TypeError, match="integers"):
        QTensor.from_int(torch.randn(4), qp)
