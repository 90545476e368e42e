"""Binary-code quantization: r ≈ Σ_{i=1..m} α_i·b_i with b_i ∈ {−1, +1}, m = 1..4 bases.

Guo, Yao & Chen 2017, "Network sketching: exploiting binary structure in deep CNNs" (greedy);
Xu et al. 2018, "Alternating multi-bit quantization for recurrent neural networks" (alternating).

Fitting, on each slice (the whole tensor, or one row = one output channel with ``axis=0``):
  greedy      — residual e_0 = r; for i = 1..m:  α_i = mean|e_{i−1}|,  b_i = sign(e_{i−1}),
                e_i = e_{i−1} − α_i·b_i  (for m = 1 this is the exact optimum, Rastegari et al.
                2016: α* = mean|r|, b* = sign(r), error mean(r²) − mean|r|²);
  alternating — repeat (Xu et al., Alg. 1):
                α given B:  the least-squares α = (BᵀB)⁻¹Bᵀr, an m×m system solved in float64;
                B given α:  each element takes the nearest of the 2^m candidate values
                            v_c = Σ_i α_i·(2·bit_i(c) − 1); with the candidates sorted this is a
                            binary search over their midpoints (the paper's binary search tree).
Each half-step is optimal for its own variables, so the MSE never increases.

Codes: q ∈ [0, 2^m) per element with bit i of q set iff b_{i+1} = +1; ``bits`` = m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from zeropoint.nonuniform.codebook import check_bits, check_codes, code_dtype
from zeropoint.validation import check_finite, check_nonempty, check_tensor

BINARY_BASES = (1, 4)


def sign_table(m: int) -> Tensor:
    """S (2^m × m, float64): S[q, i] = +1 if bit i of q is set, else −1; so v = S·α."""
    q = torch.arange(1 << m).unsqueeze(1)
    bits = (q >> torch.arange(m)) & 1
    return (2 * bits - 1).double()


def _nearest_codes(alphas: Tensor, rows: Tensor) -> Tensor:
    """Per row c, the code of the candidate Σ α_ci·s_i nearest to each value (ties: lower value).

    alphas (C, m) float64, rows (C, N) float64 -> codes (C, N) int64.
    """
    values = alphas @ sign_table(alphas.shape[1]).T  # (C, 2^m)
    sorted_values, order = torch.sort(values, dim=1, stable=True)
    midpoints = ((sorted_values[:, 1:] + sorted_values[:, :-1]) / 2).contiguous()
    rank = torch.searchsorted(midpoints, rows.contiguous(), right=False)
    return order.gather(1, rank)


def _least_squares(codes: Tensor, rows: Tensor, m: int) -> Tensor:
    """α = (BᵀB)⁻¹Bᵀr per row, with BᵀB and Bᵀr accumulated per code (B's row is S[q]).

    codes (C, N) int64, rows (C, N) float64 -> alphas (C, m) float64. A singular BᵀB (collinear
    bases) gets the minimum-norm solution through the pseudo-inverse.
    """
    table = sign_table(m)
    n_codes = 1 << m
    counts = torch.zeros(codes.shape[0], n_codes, dtype=torch.float64)
    counts.scatter_add_(1, codes, torch.ones_like(rows))
    sums = torch.zeros_like(counts).scatter_add_(1, codes, rows)
    outer = table.unsqueeze(2) * table.unsqueeze(1)  # (2^m, m, m): S[q]ᵀS[q]
    gram = torch.einsum("cq,qij->cij", counts, outer)
    rhs = sums @ table  # (C, m)
    return (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(2)).squeeze(2)


def _decode_rows(alphas: Tensor, codes: Tensor) -> Tensor:
    values = alphas @ sign_table(alphas.shape[1]).T
    return values.gather(1, codes)


@dataclass(frozen=True, eq=False)
class BinaryCodeQuantizer:
    """A fitted binary-code quantizer: Q(r) = Σ_i α_i·b_i (see the module docstring).

    ``alphas``: (m,) per tensor, or (C, m) per slice along ``axis`` (one α-vector per output
    channel for ``axis=0``), float32, stored as |α| in descending order (flipping α_i and b_i
    together leaves the candidate set unchanged). ``mse_history``: the fit's MSE after the
    greedy pass (index 0) and after each alternating iteration.
    """

    alphas: Tensor
    axis: int | None = None
    mse_history: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        a = self.alphas
        if not isinstance(a, Tensor):
            a = torch.as_tensor(a)
        if not a.is_floating_point():
            raise TypeError(f"BinaryCodeQuantizer.alphas must be real, got dtype {a.dtype}")
        a = a.detach().to(torch.float32)
        want = 1 if self.axis is None else 2
        if a.dim() != want:
            raise ValueError(
                f"BinaryCodeQuantizer.alphas must have {want} dimension(s) for axis={self.axis}, "
                f"got shape {tuple(a.shape)}"
            )
        check_bits(a.shape[-1], *BINARY_BASES, "number of bases m (alphas.shape[-1])")
        check_finite(a, "BinaryCodeQuantizer.alphas")
        if self.axis is not None and (not isinstance(self.axis, int) or self.axis < 0):
            raise ValueError(f"BinaryCodeQuantizer.axis={self.axis!r} must be a resolved int >= 0")
        object.__setattr__(self, "alphas", a)

    @classmethod
    def fit(
        cls,
        x: Tensor,
        m: int,
        axis: int | None = None,
        n_iter: int = 20,
        tol: float = 1e-6,
    ) -> BinaryCodeQuantizer:
        """Fit m bases to ``x`` per tensor (``axis=None``) or per slice along ``axis``.

        Greedy initialisation, then up to ``n_iter`` alternating iterations (0: greedy only);
        stops early when the codes stop changing or the relative MSE decrease is ≤ ``tol``.
        """
        x = check_tensor(x, "x")
        check_nonempty(x, "x")
        check_finite(x, "x")
        check_bits(m, *BINARY_BASES, "BinaryCodeQuantizer m (number of bases)")
        check_bits(n_iter, 0, 1 << 20, "n_iter")
        if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
            raise ValueError(f"tol={tol!r} must be a finite number >= 0")
        if axis is not None:
            if not isinstance(axis, int) or isinstance(axis, bool):
                raise TypeError(f"axis must be an int or None, got {axis!r}")
            if not -x.dim() <= axis < x.dim():
                raise ValueError(
                    f"axis={axis} is out of range for a tensor of shape {tuple(x.shape)}"
                )
            axis %= x.dim()
        rows = _to_rows(x.detach(), axis).double()

        residual = rows.clone()
        greedy = []
        for _ in range(m):
            a = residual.abs().mean(dim=1)
            residual -= a.unsqueeze(1) * torch.where(residual >= 0, 1.0, -1.0)
            greedy.append(a)
        alphas = torch.stack(greedy, dim=1)

        codes = _nearest_codes(alphas, rows)
        history = [_mse(alphas, codes, rows)]
        for _ in range(n_iter):
            new_alphas = _least_squares(codes, rows, m)
            new_codes = _nearest_codes(new_alphas, rows)
            err = _mse(new_alphas, new_codes, rows)
            if err > history[-1]:  # only float64 round-off can do this; keep the better fit
                break
            stalled = bool(torch.equal(new_codes, codes))
            alphas, codes = new_alphas, new_codes
            history.append(err)
            if stalled or history[-2] - err <= tol * history[-2]:
                break
        alphas = alphas.abs().sort(dim=1, descending=True).values
        if axis is None:
            alphas = alphas.squeeze(0)
        return cls(alphas.float(), axis, tuple(history))

    @property
    def m(self) -> int:
        """Number of binary bases."""
        return int(self.alphas.shape[-1])

    @property
    def bits(self) -> int:
        return self.m

    @property
    def name(self) -> str:
        where = "" if self.axis is None else f" per-channel(axis={self.axis})"
        return f"binary {self.m}-bit{where}"

    def _alpha_rows(self) -> Tensor:
        return self.alphas.double().reshape(-1, self.m)

    def levels(self) -> Tensor:
        """Sorted distinct candidate values Σ α_i·s_i (float32). Per slice: a (C, 2^m) tensor,
        each row sorted (a row repeats a value when two α-combinations coincide)."""
        values = (self._alpha_rows() @ sign_table(self.m).T).float()
        if self.axis is None:
            return torch.unique(values)
        return values.sort(dim=1).values

    def _check_slices(self, shape: torch.Size, what: str) -> None:
        if self.axis is None:
            return
        c = self.alphas.shape[0]
        if self.axis >= len(shape) or shape[self.axis] != c:
            raise ValueError(
                f"{what} of shape {tuple(shape)} does not fit {c} slices along axis {self.axis}"
            )

    def encode(self, x: Tensor) -> Tensor:
        """Code of the nearest candidate per element (bit i set iff b_{i+1} = +1), same shape."""
        x = check_tensor(x, "x")
        check_finite(x, "x")
        self._check_slices(x.shape, "x")
        codes = _nearest_codes(self._alpha_rows(), _to_rows(x.detach(), self.axis).double())
        return _from_rows(codes, x.shape, self.axis).to(code_dtype(self.m))

    def decode(self, codes: Tensor) -> Tensor:
        """Σ_i α_i·(2·bit_i(q) − 1) per code q (same shape, float32)."""
        q = check_codes(codes, 1 << self.m)
        self._check_slices(q.shape, "codes")
        values = _decode_rows(self._alpha_rows(), _to_rows(q, self.axis))
        return _from_rows(values, q.shape, self.axis).float()


def _mse(alphas: Tensor, codes: Tensor, rows: Tensor) -> float:
    return float(((_decode_rows(alphas, codes) - rows) ** 2).mean())


def _to_rows(x: Tensor, axis: int | None) -> Tensor:
    """(1, N) per tensor, or (C, N) with one row per index along ``axis``."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


def _from_rows(rows: Tensor, shape: torch.Size, axis: int | None) -> Tensor:
    if axis is None:
        return rows.reshape(shape)
    moved = (shape[axis], *shape[:axis], *shape[axis + 1 :])
    return rows.reshape(moved).movedim(0, axis)
