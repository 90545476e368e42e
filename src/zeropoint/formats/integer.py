"""Integer formats: b-bit signed (two's complement) or unsigned, full or narrow range."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IntFormat:
    """A b-bit integer format.

    signed:   full range [−2^(b−1), 2^(b−1) − 1], narrow (restricted) range [−(2^(b−1) − 1), 2^(b−1) − 1]
    unsigned: full range [0, 2^b − 1],           narrow range [0, 2^b − 2]
    e.g. int8 full [−128, 127] vs narrow [−127, 127]; uint8 [0, 255]; int4 [−8, 7]; uint4 [0, 15].
    Narrow signed ranges are symmetric about 0, so a symmetric quantizer gives −x the code −q.
    """

    bits: int
    signed: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError(f"IntFormat.bits must be an int, got {type(self.bits).__name__}")
        if not 1 <= self.bits <= 32:
            raise ValueError(f"IntFormat.bits={self.bits} is out of range: expected 1..32")

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    @property
    def min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    def qrange(self, narrow: bool = False) -> tuple[int, int]:
        """(qmin, qmax) of the full range, or of the narrow range (one code fewer)."""
        if not narrow:
            return self.min, self.max
        return (self.min + 1, self.max) if self.signed else (self.min, self.max - 1)

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def storage_dtype(self) -> torch.dtype:
        """The smallest torch integer dtype that holds every code of this format."""
        if self.bits <= 8:
            return torch.int8 if self.signed else torch.uint8
        if self.bits <= 16 and self.signed:
            return torch.int16
        if self.bits <= 32 and (self.signed or self.bits < 32):
            return torch.int32
        return torch.int64

    def dynamic_range_db(self, narrow: bool = False) -> float:
        """20·log10(levels − 1): the ratio of the largest magnitude to one step, in dB."""
        import math

        lo, hi = self.qrange(narrow)
        return 20 * math.log10(hi - lo)


INT2 = IntFormat(2, True)
INT4 = IntFormat(4, True)
INT8 = IntFormat(8, True)
INT16 = IntFormat(16, True)
INT32 = IntFormat(32, True)
UINT2 = IntFormat(2, False)
UINT4 = IntFormat(4, False)
UINT8 = IntFormat(8, False)
UINT16 = IntFormat(16, False)
#: 1-bit unsigned {0, 1}; the sign code {−1, +1} of binary networks is `zeropoint.nonuniform`'s.
BINARY = IntFormat(1, False)
#: Ternary {−1, 0, +1}: 2-bit signed, narrow range.
TERNARY = INT2
