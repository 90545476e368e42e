"""Learned non-uniform weight levels for QAT: the codebook levels (or the binary-code α's) are
parameters trained with the weights.

    model_q = prepare_codebook_qat(model, zp.w2a2_qat("lsq"), bits=2, example_inputs=x)
    ... train model_q as usual: the levels get gradients like any weight ...

A weight w is sent to its nearest level (ties to the lower one); the forward value is that
level, Q(w) = c_{i(w)}. Gradients (straight-through for the assignment, as in LSQ and the
learnable non-uniform quantizers of QIT / LQ-Nets):

    ∂L/∂w   = ∂L/∂Q(w) inside [min c, max c], 0 beyond (the rounding passes the gradient
                                                  through, the clipping at the extremes does not)
    ∂L/∂c_i = Σ_{w : i(w) = i} ∂L/∂Q(w)          (each level collects the gradient of its weights)

so the levels move where the loss wants the weights assigned to them, and the assignment follows
the weights. For binary codes Q(w) = Σ_j α_j·b_j(w) with b(w) the sign pattern of the nearest
candidate, ∂L/∂α_j = Σ_w ∂L/∂Q(w)·b_j(w). ``codebook_regularizer`` adds λ·Σ‖Q(w) − w‖², the
joint objective min ‖Q(r) − r‖² that pulls weights and levels together.

`prepare_codebook_qat` runs `zp.prepare_qat` (activation quantizers, 8-bit first and last layers
and batch-norm folding as the config says) and replaces the weight quantizer of every layer
quantized at ``bits`` with a learned codebook initialised by k-means on that layer's weight, so
it differs from uniform LSQ QAT at the same width in the weight levels only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zeropoint.fold import output_channel_axis
from zeropoint.nn.codebook_weights import fit_rows_kmeans
from zeropoint.nonuniform import BinaryCodeQuantizer, KMeansCodebook
from zeropoint.nonuniform.binary import sign_table


def _rows(w: Tensor, axis: int) -> Tensor:
    return w.movedim(axis, 0).reshape(w.shape[axis], -1)


def _unrows(rows: Tensor, like: Tensor, axis: int) -> Tensor:
    moved = (like.shape[axis], *[d for i, d in enumerate(like.shape) if i != axis])
    return rows.reshape(moved).movedim(0, axis)


def _nearest(values: Tensor, rows: Tensor) -> Tensor:
    """Index into each row's ``values`` (C or 1, L) of the nearest value (ties to the lower
    value) for every element of ``rows`` (C, N)."""
    v = values.detach().expand(rows.shape[0], -1)
    sorted_v, order = torch.sort(v, dim=1, stable=True)
    mid = ((sorted_v[:, 1:] + sorted_v[:, :-1]) / 2).contiguous()
    rank = torch.searchsorted(mid, rows.detach().contiguous(), right=False)
    return order.gather(1, rank)


def _clipped_ste(rows: Tensor, values: Tensor) -> Tensor:
    """0 in value, the identity's gradient for weights inside [min level, max level] and 0
    outside (as LSQ's clamp: a weight beyond the extreme levels no longer moves its output,
    so it gets no gradient — without this the shadow weights drift without bound)."""
    v = values.detach()
    inside = (rows >= v.amin(1, keepdim=True)) & (rows <= v.amax(1, keepdim=True))
    return (rows - rows.detach()) * inside


class LearnedCodebook(nn.Module):
    """A weight quantizer with trainable levels ``levels`` (C or 1, 2^b) along ``axis``."""

    def __init__(self, levels: Tensor, axis: int = 0) -> None:
        super().__init__()
        if levels.dim() != 2:
            raise ValueError(
                f"levels must be (channels or 1, 2^bits), got shape {tuple(levels.shape)}"
            )
        self.levels = nn.Parameter(levels.detach().float().clone())
        self.axis = axis

    @classmethod
    def from_weight(
        cls, weight: Tensor, bits: int, per_channel: bool = True, axis: int = 0
    ) -> LearnedCodebook:
        """Levels initialised by k-means (per output channel, or per tensor) on ``weight``."""
        rows = _rows(weight.detach().float(), axis)
        if per_channel:
            levels, _ = fit_rows_kmeans(rows, bits)
        else:
            levels = KMeansCodebook.fit(rows, bits).table.reshape(1, -1)
        return cls(levels, axis)

    def forward(self, w: Tensor) -> Tensor:
        rows = _rows(w, self.axis)
        levels = self.levels.expand(rows.shape[0], -1) if self.levels.shape[0] == 1 else self.levels
        q = levels.gather(1, _nearest(self.levels, rows))
        return _unrows(q + _clipped_ste(rows, levels), w, self.axis)

    def extra_repr(self) -> str:
        return f"learned codebook, {self.levels.shape[1]} levels x {self.levels.shape[0]} rows"


class LearnedBinaryCodes(nn.Module):
    """A weight quantizer Q(w) = Σ_j α_j·b_j(w) with trainable α (C or 1, m)."""

    def __init__(self, alphas: Tensor, axis: int = 0) -> None:
        super().__init__()
        self.alphas = nn.Parameter(alphas.detach().float().clone())
        self.axis = axis
        self.signs: Tensor
        self.register_buffer("signs", sign_table(alphas.shape[1]).float())

    @classmethod
    def from_weight(
        cls, weight: Tensor, m: int, per_channel: bool = True, axis: int = 0
    ) -> LearnedBinaryCodes:
        rows = _rows(weight.detach().float(), axis)
        q = BinaryCodeQuantizer.fit(rows, m, axis=0 if per_channel else None)
        return cls(q.alphas.reshape(-1, m), axis)

    def forward(self, w: Tensor) -> Tensor:
        rows = _rows(w, self.axis)
        values = self.alphas @ self.signs.T  # (C or 1, 2^m), differentiable in α
        values = values.expand(rows.shape[0], -1) if values.shape[0] == 1 else values
        q = values.gather(1, _nearest(values, rows))
        return _unrows(q + _clipped_ste(rows, values), w, self.axis)


def codebook_regularizer(model: nn.Module, weight: float = 1e-4) -> Tensor:
    """λ·Σ‖Q(w) − w‖² over the learned codebooks of ``model``'s simulated layers."""
    terms = []
    for m in model.modules():
        quant = getattr(m, "weight_quant", None)
        if isinstance(quant, LearnedCodebook | LearnedBinaryCodes):
            w = m.float_weight  # type: ignore[attr-defined]
            terms.append(((quant(w) - w) ** 2).sum())
    if not terms:
        return torch.zeros(())
    return weight * torch.stack(terms).sum()


def prepare_codebook_qat(
    model: nn.Module,
    config: Any,
    bits: int = 2,
    kind: str = "kmeans",
    per_channel: bool = True,
    example_inputs: Any = None,
) -> nn.Module:
    """`zp.prepare_qat(model, config)` with the weight quantizer of every layer quantized at
    ``bits`` replaced by a learned codebook (``kind`` "kmeans": 2^bits levels; "binary": ``bits``
    bases), initialised on that layer's weight (module docstring)."""
    from zeropoint.nn.convbn import QuantConvBn2d
    from zeropoint.nn.modules import QuantMixin
    from zeropoint.workflows.qat import prepare_qat

    if kind not in ("kmeans", "binary"):
        raise ValueError(f"kind={kind!r}: expected 'kmeans' or 'binary'")
    model_q = prepare_qat(model, config, example_inputs)
    replaced = 0
    for module in model_q.modules():
        if not isinstance(module, QuantMixin) or module.weight_quant is None:
            continue
        scheme = getattr(module.weight_quant, "scheme", None)
        if scheme is None or scheme.bits != bits:
            continue
        with torch.no_grad():
            w = (
                module.folded_weight_bias()[0]
                if isinstance(module, QuantConvBn2d)
                else module.float_weight
            )
        axis = output_channel_axis(module)
        if kind == "kmeans":
            module.weight_quant = LearnedCodebook.from_weight(w, bits, per_channel, axis)
        else:
            module.weight_quant = LearnedBinaryCodes.from_weight(w, bits, per_channel, axis)
        replaced += 1
    if not replaced:
        raise ValueError(f"no layer of the prepared model quantizes its weights at {bits} bits")
    return model_q


__all__ = [
    "LearnedBinaryCodes",
    "LearnedCodebook",
    "codebook_regularizer",
    "prepare_codebook_qat",
]
