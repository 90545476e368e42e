"""ACIQ's analytic per-channel bit allocation (Banner, Nahshan & Soudry, "Post training 4-bit
quantization of convolutional networks for rapid-deployment", NeurIPS 2019, §4.2).

Channel i of a tensor spans a range R_i (for a symmetric weight, R_i = 2·max|w_i|) and is
quantized with n_i levels: the step is Δ_i = R_i / n_i and, with the values spread over the
steps, the mean squared error is Δ_i²/12 = R_i² / (12·n_i²). Given a budget of B levels in total
(Σ n_i = B; B = C·2^b matches b bits on each of C channels), the Lagrangian

    L = Σ_i R_i² / (12·n_i²) + λ·(Σ_i n_i − B),   ∂L/∂n_i = −R_i² / (6·n_i³) + λ = 0

gives n_i ∝ R_i^(2/3):

    n_i = B · R_i^(2/3) / Σ_j R_j^(2/3),   M_i = log₂ n_i bits            (`aciq_levels`)

— the number of levels grows with the range as a 2/3 power law. (A budget on the total *bits*,
Σ M_i = const, would instead give M_i = mean + log₂(R_i / geometric mean R), a logarithmic
law; Banner et al. budget the levels, which is what hardware with per-channel widths counts.)
`aciq_bits` solves the integer version exactly (widths M_i ∈ [min_bits, max_bits], Σ 2^M_i ≤ B)
with the multiple-choice knapsack (`zeropoint.mixed.knapsack`), and `quantize_channels`
applies per-channel widths with the repository's one quantizer (`zeropoint.functional`).
Derivation: docs/quantization.md, "Per-channel bit allocation".
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zeropoint.functional import fake_quantize
from zeropoint.mixed.knapsack import solve
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import Scheme


def _check_ranges(ranges: Tensor) -> Tensor:
    r = torch.as_tensor(ranges, dtype=torch.float64).reshape(-1)
    if r.numel() == 0 or not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise ValueError(f"ranges must be finite and non-negative, got {ranges}")
    return r


def aciq_levels(ranges: Tensor | Sequence[float], total_levels: float) -> Tensor:
    """The continuous optimum n_i = B·R_i^(2/3) / Σ_j R_j^(2/3) (float64; see the module
    docstring). Channels of zero range get no levels."""
    r = _check_ranges(torch.as_tensor(ranges))
    if not total_levels > 0:
        raise ValueError(f"total_levels must be positive, got {total_levels}")
    w = r ** (2.0 / 3.0)
    if float(w.sum()) == 0.0:
        return torch.full_like(r, total_levels / r.numel())
    return total_levels * w / w.sum()


def allocation_mse(ranges: Tensor | Sequence[float], levels: Tensor) -> float:
    """Σ_i R_i² / (12·n_i²): the modelled error of an allocation (per element, summed over
    channels)."""
    r = _check_ranges(torch.as_tensor(ranges))
    n = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
    return float((r**2 / (12.0 * n**2)).sum())


def aciq_bits(
    ranges: Tensor | Sequence[float], avg_bits: float, min_bits: int = 1, max_bits: int = 8
) -> Tensor:
    """Integer widths M_i ∈ [min_bits, max_bits] minimising Σ R_i² / (12·4^M_i) under
    Σ 2^M_i ≤ C·2^avg_bits (C channels): the budget of ``avg_bits`` on every channel."""
    r = _check_ranges(torch.as_tensor(ranges))
    if not 1 <= min_bits <= max_bits <= 16:
        raise ValueError(f"need 1 <= min_bits <= max_bits <= 16, got {min_bits}, {max_bits}")
    if not min_bits <= avg_bits <= max_bits:
        raise ValueError(f"avg_bits={avg_bits} must lie in [{min_bits}, {max_bits}]")
    widths = list(range(min_bits, max_bits + 1))
    values = [[float(ri) ** 2 / (12.0 * 4.0**m) for m in widths] for ri in r.tolist()]
    costs = [[float(2**m) for m in widths] for _ in range(r.numel())]
    budget = r.numel() * 2.0**avg_bits
    chosen = solve(values, costs, budget, resolution=max(1 << 14, int(budget) + 1))
    return torch.tensor([widths[c] for c in chosen], dtype=torch.int64)


def quantize_channels(w: Tensor, bits: Tensor, axis: int = 0, method: str = "minmax") -> Tensor:
    """Fake-quantize each slice of ``w`` along ``axis`` with its own width (symmetric, narrow
    range, the range from ``method``), through `zeropoint.observers.calibrate` and
    `zeropoint.functional.fake_quantize`."""
    bits = torch.as_tensor(bits).reshape(-1)
    if bits.numel() != w.shape[axis]:
        raise ValueError(f"{bits.numel()} widths for {w.shape[axis]} channels along axis {axis}")
    moved = w.detach().movedim(axis, 0)
    out = torch.empty_like(moved)
    for b in torch.unique(bits).tolist():
        idx = (bits == b).nonzero().reshape(-1)
        rows = moved[idx]
        scheme = Scheme(bits=int(b), symmetric=True, narrow=int(b) > 1, axis=0)
        out[idx] = fake_quantize(rows, calibrate(rows, scheme, method))
    return out.movedim(0, axis)


def channel_ranges(w: Tensor, axis: int = 0) -> Tensor:
    """R_i = 2·max|w_i| per slice along ``axis`` (the symmetric range)."""
    return 2.0 * w.detach().movedim(axis, 0).reshape(w.shape[axis], -1).abs().amax(1).double()


def aciq_allocate(
    model: nn.Module,
    avg_bits: float,
    types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Conv1d, nn.Linear),
    min_bits: int = 2,
    max_bits: int = 8,
) -> tuple[nn.Module, dict[str, Tensor]]:
    """A copy of ``model`` whose weights (the layers of ``types``) are quantized per output
    channel with ACIQ-allocated widths averaging ``avg_bits`` in levels (a weight-only
    simulation), and the widths per layer."""
    out = copy.deepcopy(model)
    widths: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, m in out.named_modules():
            if type(m) not in types or not isinstance(getattr(m, "weight", None), Tensor):
                continue
            w = m.weight
            bits = aciq_bits(channel_ranges(w), avg_bits, min_bits, max_bits)
            w.copy_(quantize_channels(w, bits))
            widths[name] = bits
    return out, widths


__all__ = [
    "aciq_allocate",
    "aciq_bits",
    "aciq_levels",
    "allocation_mse",
    "channel_ranges",
    "quantize_channels",
]
