"""Non-uniform quantizers: power-of-two (log2), codebooks (user rule, k-means) and binary codes.

All of them implement `zeropoint.quantizer.Quantizer` (``name``, ``bits``, ``encode``,
``decode``) plus ``levels()``, so analysis and reports treat them like the uniform quantizers.
"""

from zeropoint.nonuniform.binary import BinaryCodeQuantizer
from zeropoint.nonuniform.codebook import (
    Codebook,
    KMeansCodebook,
    RuleCodebook,
    codebook_from_levels,
)
from zeropoint.nonuniform.log2 import LogQuantizer

__all__ = [
    "BinaryCodeQuantizer",
    "Codebook",
    "KMeansCodebook",
    "LogQuantizer",
    "RuleCodebook",
    "codebook_from_levels",
]
