"""The interface every quantizer shares, uniform or not: codes in, reals out.

A fitted quantizer maps reals to integer codes (`encode`) and codes back to reals (`decode`);
`analysis.error_report` and the reports treat uniform (affine/scale), logarithmic, codebook and
binary-code quantizers alike through it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Quantizer(Protocol):
    """A fitted quantizer. ``decode(encode(x))`` is the quantized approximation Q(x) of x."""

    @property
    def name(self) -> str:
        """Short human-readable name, e.g. 'uniform int8 asym' or 'kmeans 3-bit'."""
        ...

    @property
    def bits(self) -> int:
        """Bits per code (the storage cost per element, excluding per-tensor parameters)."""
        ...

    def encode(self, x: Tensor) -> Tensor:
        """Integer codes of ``x`` (same shape)."""
        ...

    def decode(self, codes: Tensor) -> Tensor:
        """Real values of ``codes`` (same shape, float32)."""
        ...
