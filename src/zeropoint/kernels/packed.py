"""Weight-only Linear: packed weight codes decoded inside the matrix product.

A `PackedWeight` is a Linear weight W (N outputs × K inputs) as packed codes plus what decodes
them, in one of four kinds:

    affine      W[n, k] = S[n, g]·(q[n, k] − Z[n, g]) [+ O[n, g]],  g = k // group_size
                (uniform int; the optional offset O holds fractional zero points, HQQ)
    table       W[n, k] = T[n or 0, u[n, k]]          (codebooks, powers of two, binary codes,
                                                       fp4 — a table of 2^b values per row)
    fp8_e4m3fn  W[n, k] = fp8(u[n, k])·S[n]           (u: the fp8 bit pattern)
    fp8_e5m2    likewise

Codes are packed c ∈ {1, 2, 4, 8} bits each (the container of the code width: 3-bit codes in 4
bits), a row's codes in ⌈K·c/8⌉ bytes, the first element in the low bits — QTensor's packing, so
a WeightOnlyLinear's stored bytes are used as they are. Signed affine codes stay in two's
complement; the kernel flips their sign bit (F = 2^(c−1)) and subtracts Z + F instead of Z.

`linear(x, w, bias)` runs the compiled kernel (`zeropoint.kernels.build`) when it loads: for up
to `KERNEL_ROWS` rows of x, W is decoded in registers and multiplied with the rows of x held
there (memory traffic: the packed codes, c/32 of the float weight); for more rows, tiles of W
are decoded into a cache-resident buffer and multiplied by torch's GEMM. Elsewhere (no compiler,
another device, autograd) it dequantizes with torch operations and calls F.linear: the same
weights bit for bit, only the summation order differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from zeropoint.qparams import QParams
from zeropoint.qtensor import container_bits

KINDS = {"affine": 0, "table": 1, "fp8_e4m3fn": 2, "fp8_e5m2": 3}
#: up to this many rows of x the register kernel runs; above it, the tiled one
KERNEL_ROWS = 16
#: rows of W decoded per tile of the tiled kernel (64 × K floats stay in a core's L2 cache)
TILE_ROWS = 64


def pack_codes(u: Tensor, container: int) -> Tensor:
    """Unsigned codes (N, K) < 2^c -> (N, ⌈K·c/8⌉) uint8, first element in the low bits."""
    if container == 8:
        return u.to(torch.uint8).contiguous()
    per = 8 // container
    n, k = u.shape
    v = u.to(torch.int32)
    pad = (-k) % per
    if pad:
        v = torch.cat([v, v.new_zeros(n, pad)], dim=1)
    shifts = torch.arange(0, 8, container, dtype=torch.int32)
    return (v.reshape(n, -1, per) << shifts).sum(-1).to(torch.uint8).contiguous()


def unpack_codes(codes: Tensor, container: int, k: int) -> Tensor:
    """Inverse of `pack_codes`: (N, K) int32 codes in [0, 2^c)."""
    if container == 8:
        return codes.to(torch.int32)[:, :k]
    shifts = torch.arange(0, 8, container, dtype=torch.int32)
    fields = (codes.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << container) - 1)
    return fields.reshape(codes.shape[0], -1)[:, :k]


@dataclass(frozen=True, eq=False)
class PackedWeight:
    """A Linear weight of ``shape`` (N, K) in the kernels' layout (see the module docstring)."""

    codes: Tensor  # uint8 (N, ⌈K·c/8⌉)
    kind: str
    container: int
    shape: tuple[int, int]
    group_size: int  # affine: K // groups; other kinds: K
    scale: Tensor  # affine (N, G) float32; fp8 (N,) float32; table: empty
    zero: Tensor  # affine (N, G) int32, already + flip; else empty
    flip: int = 0  # affine: 2^(c−1) for two's-complement codes
    offset: Tensor = field(default_factory=lambda: torch.empty(0))  # affine: (N, G) or empty
    table: Tensor = field(default_factory=lambda: torch.empty(0))  # (1 or N, 2^c) float32

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is unknown: expected one of {sorted(KINDS)}")
        n, k = self.shape
        row_bytes = (k * self.container + 7) // 8
        if self.codes.dtype != torch.uint8 or tuple(self.codes.shape) != (n, row_bytes):
            raise ValueError(
                f"codes of shape {tuple(self.codes.shape)} ({self.codes.dtype}) do not hold "
                f"({n}, {k}) {self.container}-bit codes: expected uint8 ({n}, {row_bytes})"
            )

    @property
    def nbytes(self) -> int:
        """Bytes of codes, scales, zero points and tables."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero))

    def unpacked(self) -> Tensor:
        """The codes as stored, (N, K) int32 in [0, 2^c) (two's complement not undone)."""
        return unpack_codes(self.codes, self.container, self.shape[1])

    def dequantize(self) -> Tensor:
        """W (N, K) float32 with torch operations: the kernels' decoding, element for element."""
        n, k = self.shape
        u = self.unpacked()
        if self.kind == "affine":
            g = self.group_size
            q = (u ^ self.flip).reshape(n, k // g, g) - self.zero.unsqueeze(-1)
            w = q.to(torch.float32) * self.scale.unsqueeze(-1)
            if self.offset.numel():
                w = w + self.offset.unsqueeze(-1)
            return w.reshape(n, k)
        if self.kind == "table":
            rows = self.table.expand(n, -1) if self.table.shape[0] == 1 else self.table
            return rows.gather(1, u.long())
        dtype = torch.float8_e4m3fn if self.kind == "fp8_e4m3fn" else torch.float8_e5m2
        values = u.to(torch.uint8).view(dtype).to(torch.float32)
        return values * self.scale.unsqueeze(1)

    def _args(self) -> tuple[object, ...]:
        n, k = self.shape
        return (
            self.codes,
            self.scale,
            self.zero,
            self.offset,
            self.table,
            self.container,
            self.group_size,
            KINDS[self.kind],
            self.flip,
            n,
            k,
        )

    def kernel_ready(self) -> bool:
        """True when the compiled kernel can run this weight: whole bytes per row."""
        return (self.shape[1] * self.container) % 8 == 0

    @property
    def _op_args(self) -> tuple[tuple[object, ...], tuple[object, ...]]:
        """The operators' arguments before and after x / bias (cached: built once)."""
        cached = self.__dict__.get("_op_args_cache")
        if cached is None:
            args = self._args()
            cached = (args[:5], args[5:])
            object.__setattr__(self, "_op_args_cache", cached)
        return cached  # type: ignore[no-any-return]


def affine(
    data: Tensor,
    qparams: QParams,
    shape: tuple[int, int],
    packed: bool,
    offset: Tensor | None = None,
) -> PackedWeight:
    """A uniform-int weight of ``shape`` (N, K) from its codes as a QTensor stores them — the
    flat packed bytes of a ≤ 4-bit scheme (``packed``), or the (N, K) int8/uint8 codes — and
    its (S, Z): per tensor, per output channel (axis 0) or in groups along the input (axis 1).
    Raises ValueError for other granularities, codes wider than 8 bits, or rows of packed
    codes that do not end on a byte."""
    n, k = shape
    scheme = qparams.scheme
    gran, axis = scheme.granularity, qparams.axis
    if gran == "per_tensor" or (gran == "per_channel" and axis == 0):
        scale = qparams.scale.reshape(-1, 1).expand(n, 1)
        zero = qparams.zero_point.reshape(-1, 1).expand(n, 1)
    elif gran == "per_group" and axis == 1:
        scale, zero = qparams.scale, qparams.zero_point
    else:
        raise ValueError(
            f"packed Linear weights are per tensor, per output channel or grouped along the "
            f"input; got {scheme} (axis {axis})"
        )
    if scheme.bits > 8:
        raise ValueError(f"packed Linear weights hold at most 8-bit codes, got {scheme.bits}")
    c = container_bits(scheme.bits) if packed else 8
    if (k * c) % 8:
        raise ValueError(f"rows of {k} {c}-bit codes do not end on a byte")
    flip = (1 << (c - 1)) if scheme.signed else 0
    return PackedWeight(
        codes=data.reshape(n, -1).contiguous().view(torch.uint8),
        kind="affine",
        container=c,
        shape=(n, k),
        group_size=k // scale.shape[1],
        scale=scale.float().contiguous(),
        zero=(zero.to(torch.int32) + flip).contiguous(),
        flip=flip,
        offset=torch.empty(0) if offset is None else offset.float().reshape(n, -1).contiguous(),
    )


def table(codes: Tensor, values: Tensor, bits: int) -> PackedWeight:
    """A look-up-table weight: unsigned codes (N, K) < 2^bits and a table of 2^bits values per
    row (N, 2^bits) or for the whole tensor (1, 2^bits)."""
    n, k = codes.shape
    c = container_bits(bits)
    size = 1 << c
    if values.dim() != 2 or values.shape[0] not in (1, n) or values.shape[1] > size:
        raise ValueError(
            f"a code table of shape {tuple(values.shape)} does not fit {n} rows of {bits}-bit codes"
        )
    t = F.pad(values.float(), (0, size - values.shape[1])).contiguous()
    return PackedWeight(
        codes=pack_codes(codes, c),
        kind="table",
        container=c,
        shape=(n, k),
        group_size=k,
        scale=torch.empty(0),
        zero=torch.empty(0, dtype=torch.int32),
        table=t,
    )


def fp8(bits: Tensor, scale: Tensor, kind: str) -> PackedWeight:
    """An fp8 weight: its bit patterns (N, K) uint8 and one scale per row (N,)."""
    if kind not in ("fp8_e4m3fn", "fp8_e5m2"):
        raise ValueError(f"kind={kind!r}: expected 'fp8_e4m3fn' or 'fp8_e5m2'")
    n, k = bits.shape
    return PackedWeight(
        codes=bits.contiguous().view(torch.uint8),
        kind=kind,
        container=8,
        shape=(n, k),
        group_size=k,
        scale=scale.float().reshape(-1).expand(n).contiguous(),
        zero=torch.empty(0, dtype=torch.int32),
    )


_LOADED: list[bool] = []  # [True] once the library is loaded (then no lookup per call)


def kernels_available() -> bool:
    """True when the compiled kernels are loaded (building them on first use)."""
    if _LOADED:
        return True
    from zeropoint.kernels.build import load

    if load():
        _LOADED.append(True)
        return True
    return False


def linear(
    x: Tensor, weight: PackedWeight, bias: Tensor | None = None, *, kernel: bool | None = None
) -> Tensor:
    """y = x·Wᵀ + b for a packed W (``kernel``: None chooses the compiled kernel where it can
    run — CPU float tensors without autograd — True insists on it, False uses torch ops)."""
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"input of shape {tuple(x.shape)} does not fit a ({n}, {k}) weight")
    can = (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and not (x.requires_grad and torch.is_grad_enabled())
        and weight.kernel_ready()
    )
    use = (can and kernels_available()) if kernel is None else kernel
    if use and not can:
        raise ValueError("the compiled kernel needs float32 CPU input without autograd")
    if use and not kernels_available():
        raise RuntimeError("the compiled weight-only kernels are not available here")
    if not use:
        w = weight.dequantize().to(device=x.device, dtype=x.dtype)
        return F.linear(x, w, None if bias is None else bias.to(x.dtype))
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()):
        bias = bias.float().contiguous()
    head, tail = weight._op_args
    if x2.shape[0] <= KERNEL_ROWS:
        y = torch.ops.zeropoint_wo.linear(x2, *head, bias, *tail)
    else:
        y = torch.ops.zeropoint_wo.linear_tiled(x2, *head, bias, *tail, TILE_ROWS)
    return y.reshape(*x.shape[:-1], n)


def dequantize(weight: PackedWeight, *, kernel: bool | None = None) -> Tensor:
    """W (N, K) float32: the compiled decoder where available, else `PackedWeight.dequantize`."""
    if (kernel is None and weight.kernel_ready() and kernels_available()) or kernel:
        return torch.ops.zeropoint_wo.dequantize(*weight._args())  # type: ignore[no-any-return]
    return weight.dequantize()
