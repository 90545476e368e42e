"""QTensor: integer codes plus the QParams that give them meaning (r = S·(q − Z)).

Codes of 1..4-bit formats are stored packed: 8 // c codes per byte, where c ∈ {1, 2, 4} is the
smallest container that holds b bits. Element i of the flattened tensor sits in byte i // (8/c)
at bit offset c·(i mod 8/c) — the first element in the low bits, as ONNX packs int4/uint4.
Signed codes are stored in two's complement within their container and sign-extended on unpack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zeropoint.qparams import QParams
from zeropoint.validation import check_codes


def container_bits(bits: int) -> int:
    """Bits of the packing container for a ``bits``-wide code: 1, 2, 4, or 8+ (unpacked)."""
    for c in (1, 2, 4):
        if bits <= c:
            return c
    return 8


def pack(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """Pack integer codes of ≤ 4 bits into a flat uint8 tensor (see the module docstring)."""
    c = container_bits(bits)
    if c == 8:
        raise ValueError(f"pack() is for codes of at most 4 bits, got {bits}")
    per_byte = 8 // c
    flat = codes.reshape(-1).to(torch.int16)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if flat.numel() and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ValueError(f"codes outside [{lo}, {hi}] cannot be packed into {bits} bits")
    pad = (-flat.numel()) % per_byte
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    fields = (flat & ((1 << c) - 1)).reshape(-1, per_byte)
    shifts = torch.arange(0, 8, c, dtype=torch.int16)
    return (fields << shifts).sum(dim=1).to(torch.uint8)


def unpack(packed: Tensor, bits: int, signed: bool, numel: int) -> Tensor:
    """Inverse of `pack`: the first ``numel`` codes as int8 (signed) or uint8 (unsigned)."""
    c = container_bits(bits)
    per_byte = 8 // c
    if packed.dtype != torch.uint8 or packed.numel() * per_byte < numel:
        raise ValueError(
            f"packed data ({packed.numel()} bytes, {packed.dtype}) too small for {numel} "
            f"{bits}-bit codes"
        )
    shifts = torch.arange(0, 8, c, dtype=torch.int16)
    fields = ((packed.to(torch.int16).unsqueeze(1) >> shifts) & ((1 << c) - 1)).reshape(-1)
    fields = fields[:numel]
    if signed:
        sign_bit = 1 << (c - 1)
        fields = (fields ^ sign_bit) - sign_bit
        return fields.to(torch.int8)
    return fields.to(torch.uint8)


@dataclass(frozen=True, eq=False)
class QTensor:
    """A quantized tensor: ``data`` (integer codes, packed for ≤ 4 bits), ``qparams``, ``shape``,
    and ``dtype``, the floating-point dtype it was quantized from (what `dequantize` returns)."""

    data: Tensor
    qparams: QParams
    shape: torch.Size
    packed: bool = False
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_int(
        cls,
        codes: Tensor,
        qparams: QParams,
        dtype: torch.dtype = torch.float32,
        *,
        checked: bool = False,
    ) -> QTensor:
        """Wrap unpacked integer codes; codes of ≤ 4-bit schemes are packed. Codes outside the
        scheme's [qmin, qmax] are refused (``checked=True``: the caller guarantees the range,
        as `zeropoint.quantize` does). ``dtype``: what `dequantize` will return."""
        if not isinstance(qparams, QParams):
            raise TypeError(f"QTensor needs QParams, got {type(qparams).__name__}")
        if not isinstance(codes, Tensor):
            raise TypeError(f"QTensor codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"QTensor codes must be integers, got {codes.dtype}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"QTensor.dtype must be a floating-point dtype, got {dtype!r}")
        qparams.check_shape(codes.shape)
        scheme = qparams.scheme
        if not checked:
            check_codes(codes, scheme.qmin, scheme.qmax, str(scheme))
        if scheme.bits <= 4:  # float schemes: unsigned bit patterns (scheme.format.signed)
            packed = pack(codes, scheme.bits, scheme.format.signed)
            return cls(packed, qparams, codes.shape, True, dtype)
        return cls(codes, qparams, codes.shape, False, dtype)

    def int_repr(self) -> Tensor:
        """The integer codes, unpacked, in the tensor's shape."""
        if not self.packed:
            return self.data
        scheme = self.qparams.scheme
        numel = 1
        for d in self.shape:
            numel *= d
        return unpack(self.data, scheme.bits, scheme.format.signed, numel).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """r̂ = S · (q − Z), in ``dtype`` (default: the dtype it was quantized from)."""
        from zeropoint.functional import dequantize_int

        return dequantize_int(self.int_repr(), self.qparams, dtype or self.dtype)

    @property
    def scale(self) -> Tensor:
        return self.qparams.scale

    @property
    def zero_point(self) -> Tensor:
        return self.qparams.zero_point

    @property
    def axis(self) -> int | None:
        return self.qparams.axis

    @property
    def bits(self) -> int:
        return self.qparams.scheme.bits

    @property
    def nbytes(self) -> int:
        """Bytes of code storage (excluding scales and zero points)."""
        return self.data.numel() * self.data.element_size()

    def __repr__(self) -> str:
        return f"QTensor(shape={tuple(self.shape)}, {self.qparams!r}, packed={self.packed})"
