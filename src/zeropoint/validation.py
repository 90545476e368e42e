"""Checks at the public boundary: bad input raises a clear error instead of a wrong answer."""

from __future__ import annotations

import torch
from torch import Tensor


def check_finite(x: Tensor, what: str = "tensor") -> None:
    """Raise ValueError naming the NaN/Inf count and the first offending index, if any."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    # One vectorised reduction: min and max are finite iff every element is (NaN propagates).
    lo, hi = torch.aminmax(x.detach())
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return
    bad = ~torch.isfinite(x)
    n_nan = int(torch.isnan(x).sum())
    n_inf = int(bad.sum()) - n_nan
    first = tuple(int(i) for i in bad.nonzero()[0].tolist()) if x.dim() else ()
    raise ValueError(
        f"{what} contains {n_nan} NaN and {n_inf} Inf value(s) out of {x.numel()} "
        f"(shape {tuple(x.shape)}, first at index {first}); quantization needs finite values"
    )


def check_nonempty(x: Tensor, what: str = "tensor") -> None:
    """Raise ValueError for an empty tensor (there is no range to calibrate from it)."""
    if x.numel() == 0:
        raise ValueError(f"{what} is empty (shape {tuple(x.shape)}); nothing to quantize")


def check_tensor(x: object, what: str = "input") -> Tensor:
    """Raise TypeError unless ``x`` is a floating-point torch.Tensor."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {x.dtype}")
    return x


def check_codes(q: Tensor, qmin: int, qmax: int, what: str) -> None:
    """Raise TypeError unless ``q`` holds integers, and ValueError naming the first code outside
    [qmin, qmax] (``what`` names the format). Free when the dtype cannot hold such a code, e.g.
    int8 codes of a full-range 8-bit scheme."""
    if not isinstance(q, Tensor):
        raise TypeError(f"integer codes must be a torch.Tensor, got {type(q).__name__}")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"expected integer codes, got dtype {q.dtype}")
    info = torch.iinfo(q.dtype)
    if (info.min >= qmin and info.max <= qmax) or q.numel() == 0:
        return
    wide = q if q.dtype in (torch.int8, torch.uint8, torch.int16, torch.int32) else q.long()
    lo, hi = torch.aminmax(wide)
    if int(lo) < qmin or int(hi) > qmax:
        bad = int(lo) if int(lo) < qmin else int(hi)
        where = tuple(int(i) for i in (wide == bad).nonzero()[0].tolist()) if q.dim() else ()
        raise ValueError(
            f"code {bad} (at index {where}) is outside the range [{qmin}, {qmax}] of {what}: "
            "these codes were not produced by this scheme"
        )
