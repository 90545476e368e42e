"""Quantized-simulation modules and learnable quantizers (STE, LSQ, LSQ+, PACT)."""

from zeropoint.nn.learnable import LSQ, PACT, LSQPlus, pact_regularizer
from zeropoint.nn.modules import (
    QuantConv1d,
    QuantConv2d,
    QuantConvTranspose2d,
    QuantEmbedding,
    QuantLinear,
    QuantMixin,
)
from zeropoint.nn.quantizers import FakeQuant

__all__ = [
    "LSQ",
    "PACT",
    "FakeQuant",
    "LSQPlus",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvTranspose2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantMixin",
    "pact_regularizer",
]
