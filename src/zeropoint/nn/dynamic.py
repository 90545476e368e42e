"""Dynamic int8 Linear: int8 weights, activations quantized from each input at run time.

Weights are int8, symmetric per output channel (Z = 0, [−127, 127]). The int8×int8→int32 GEMM
is fbgemm's dynamic kernel (torch.ops.quantized.linear_dynamic), which quantizes its input to
uint8 per tensor. Two modes build on it:

per token (one scale per row of the flattened input), by normalising each row first:

    x̃_i = x_i / m_i,  m_i = max_k |x_ik|           (every row of x̃ spans [−1, 1])
    y_i = m_i · (Q(W) Q(x̃_i)) + b                  (W is linear, so this is exact)

per tensor with smoothing (SmoothQuant, Xiao et al. 2023, plus a per-channel shift), with a
per-input-channel centre μ and scale s chosen from a few calibration inputs:

    x̃ = (x − μ) ⊘ s,   W' = W·diag(s),   b' = b + W μ
    y = Q(W') Q(x̃) + b'                            (= W x + b before quantization)

s_j = √a_j / √max_i|W_ij| with a_j the half-range of input channel j (α = ½) moves the outlier
channels' range from the activations into the weights, where per-channel quantization absorbs
it; the bias b' is packed into the fbgemm call, so this mode costs one element-wise pass.

fbgemm without VNNI multiplies u8·s8 pairs into a saturating int16 (vpmaddubsw): it sums the
products of input channels 2j and 2j+1 and clamps the sum to [−32768, 32767] before widening.
With 8-bit activations (u ≤ 255) and full int8 weights two products can reach 2·255·127 = 64770.
`fbgemm_saturates` probes the kernel once; where it saturates, the weight codes are chosen
*pair-bounded* (`pair_bounded_codes`): 8-bit codes with |q_2j| + |q_2j+1| ≤ 128 in every row,
so every pair sum stays within 255·128 = 32640 and the kernel is exact. The per-channel scale
is searched between max|w|/127 (full 8-bit, where the few large pairs are shrunk onto the bound)
and P/128 (P the largest pair sum |w_2j| + |w_2j+1|, no pair shrunk) for the least squared
weight error: on all-MiniLM-L6-v2 P ≈ 1.37·max|w|, so this keeps most of the 8th weight bit that
7-bit weights [−63, 63] (the previous remedy) gave away. Codes that are not pair-bounded (a
checkpoint written on a VNNI machine, say) run on the exact simulation instead, with a warning.

The simulation (`use_fbgemm=False`, or where fbgemm is not available) is the kernel's arithmetic:
the input quantized as fbgemm quantizes it (`torch._choose_qparams_per_tensor`, then
`torch.quantize_per_tensor`), the integer products summed exactly, then y = S_x·S_w·acc (+ b).
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, quantize_int
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import QParams, Scheme, qparams_from_range

INT8_CHANNEL = Scheme(bits=8, symmetric=True, narrow=True, axis=0)
#: |q_2j| + |q_2j+1| ≤ PAIR_BOUND keeps every u8·s8 pair sum in int16: 255·128 = 32640 ≤ 32767
PAIR_BOUND = 128
#: candidate scales of the pair-bounded search, geometric between max|w|/127 and P/128
PAIR_GRID = 16


def fbgemm_available() -> bool:
    """True when torch's x86/fbgemm quantized engine (dynamic int8 Linear) can run here."""
    return torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(
        torch.ops.quantized, "linear_dynamic"
    )


@lru_cache(maxsize=1)
def fbgemm_saturates() -> bool:
    """True when fbgemm's u8·s8 kernel saturates pairs of products in int16 (x86 without VNNI).

    Probed directly rather than read from CPU flags: the input 1.0 quantizes to the code 255 and
    the weight 1.0 to 127, so every adjacent pair sums to 2·255·127 = 64770 > 32767; an exact
    kernel returns 64, a saturating one about half of it."""
    if not fbgemm_available():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = torch.quantize_per_tensor(torch.ones(1, 64), 1.0 / 127, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
        y = torch.ops.quantized.linear_dynamic(torch.ones(1, 64), packed, False)
    return abs(float(y) - 64.0) > 0.5


def _pairs(t: Tensor) -> Tensor:
    """(N, K) -> (N, ⌈K/2⌉, 2): input channels 2j and 2j+1 side by side (odd K padded by 0)."""
    if t.shape[-1] % 2:
        t = torch.cat([t, t.new_zeros(*t.shape[:-1], 1)], dim=-1)
    return t.reshape(*t.shape[:-1], -1, 2)


def pairs_bounded(codes: Tensor, bound: int = PAIR_BOUND) -> bool:
    """True when |q_2j| + |q_2j+1| ≤ ``bound`` for every row of the (N, K) weight codes."""
    return bool(_pairs(codes.to(torch.int32).abs()).sum(-1).max() <= bound)


def _bounded_round(r: Tensor, qmax: int, bound: int) -> Tensor:
    """Integer codes for real codes ``r`` (N, K): round half to even, clamp to ±qmax, and for
    pairs with |r_a| + |r_b| > bound first project (|r_a|, |r_b|) onto the segment
    |a| + |b| = bound (the nearest point: both magnitudes lowered by the same amount, or the
    smaller one to 0). Returns float codes (N, K) with every pair within ``bound``."""
    k = r.shape[-1]
    p = _pairs(r)
    mag = p.abs()
    excess = (mag.sum(-1, keepdim=True) - bound).clamp(min=0) / 2
    low = mag - excess
    # where one magnitude would go negative, it becomes 0 and the other takes the whole bound
    under = low < 0
    other = torch.where(under.flip(-1), torch.full_like(low, float(bound)), low)
    mag = torch.where(under, torch.zeros_like(low), other).clamp(max=float(qmax))
    q = torch.round(mag)
    # half-to-even rounding of reals with a + b ≤ bound keeps q_a + q_b ≤ bound up to float
    # round-off in the projection: then lower the magnitude that was rounded up the most
    over = q.sum(-1) > bound
    up = q - mag
    second = up[..., 1] > up[..., 0]
    q = q - torch.stack([over & ~second, over & second], dim=-1).to(q.dtype)
    return (q * torch.sign(p)).reshape(*r.shape[:-1], -1)[..., :k]


def pair_bounded_codes(w: Tensor, scheme: Scheme = INT8_CHANNEL) -> tuple[Tensor, QParams]:
    """int8 per-output-channel codes with |q_2j| + |q_2j+1| ≤ 128 in every row (module docstring).

    Per row, ``PAIR_GRID`` scales S between max|w|/127 and max(P/128, max|w|/127) (geometric)
    are tried; codes
    q = bounded_round(w / S) and the scale with the least Σ(S·q − w)² wins. The scale is passed
    through `qparams_from_range` (range ±127·S), so it is the one the uniform formula gives."""
    if scheme.bits != 8 or not scheme.symmetric or scheme.axis != 0 or scheme.group_size:
        raise ValueError(f"pair-bounded codes are 8-bit symmetric per output channel, got {scheme}")
    w = w.detach().float()
    qmax = scheme.qmax
    m = w.abs().amax(1).clamp(min=1e-30)
    pair_max = _pairs(w.abs()).sum(-1).amax(1).clamp(min=1e-30)
    lo, hi = m / qmax, torch.maximum(pair_max / PAIR_BOUND, m / qmax)
    t = torch.linspace(0, 1, PAIR_GRID).unsqueeze(1)
    candidates = lo * (hi / lo) ** t  # (grid, N)
    candidates[0], candidates[-1] = lo, hi  # the grid's ends exactly
    errors = []
    for s in candidates:
        q = _bounded_round(w / s.unsqueeze(1), qmax, PAIR_BOUND)
        errors.append(((q * s.unsqueeze(1) - w) ** 2).sum(1))
    best = candidates.gather(0, torch.stack(errors).argmin(0, keepdim=True)).squeeze(0)
    qp = qparams_from_range(-best * qmax, best * qmax, scheme, w.shape)
    codes = _bounded_round(w / qp.scale.unsqueeze(1), qmax, PAIR_BOUND)
    return codes.to(torch.int8), qp


def smoothing_from_range(lo: Tensor, hi: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, s) per input channel: μ = (hi + lo)/2, s = √a / √max|W_:j| with a = (hi − lo)/2."""
    shift = (hi + lo) / 2
    half = ((hi - lo) / 2).clamp(min=1e-5)
    w_max = weight.detach().abs().amax(0).clamp(min=1e-5)
    return shift.float(), (half.sqrt() / w_max.sqrt()).clamp(min=1e-5).float()


def activation_qparams(xt: Tensor, reduce_range: bool) -> tuple[float, int]:
    """(S_x, Z_x) as fbgemm chooses them for its uint8 input: min-max over [min, max] ∪ {0},
    [0, 255] (or [0, 127] with ``reduce_range``) — torch's own ChooseQuantizationParams."""
    scale, zero_point = torch._choose_qparams_per_tensor(xt, reduce_range)
    return float(scale), int(zero_point)


class DynamicQuantLinear(nn.Linear):
    """int8 per-channel weights; activations quantized per token, or per tensor after smoothing.

    ``pair_bound``: choose pair-bounded weight codes (exact on a saturating kernel); None means
    "where the kernel would saturate" (fbgemm without VNNI, 8-bit activations, 8-bit weights)."""

    def __init__(
        self,
        layer: nn.Linear,
        weight_scheme: Scheme = INT8_CHANNEL,
        per_token: bool = True,
        reduce_range: bool = False,
        use_fbgemm: bool | None = None,
        shift: Tensor | None = None,
        smooth: Tensor | None = None,
        pair_bound: bool | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        if weight_scheme.bits > 8 or not weight_scheme.symmetric or weight_scheme.group_size:
            raise ValueError(
                f"dynamic int8 Linear needs ≤ 8-bit symmetric weights, got {weight_scheme}"
            )
        if per_token and (shift is not None or smooth is not None):
            raise ValueError("smoothing applies to the per-tensor mode")
        k = self.in_features
        self.per_token = per_token
        self.reduce_range = reduce_range
        self.use_fbgemm = fbgemm_available() if use_fbgemm is None else use_fbgemm
        if pair_bound is None:
            pair_bound = (
                self.use_fbgemm
                and fbgemm_saturates()
                and not reduce_range
                and weight_scheme.bits == 8
            )
        w = layer.weight.detach().float()
        bias = (
            layer.bias.detach().float()
            if layer.bias is not None
            else torch.zeros(self.out_features)
        )
        self.shift: Tensor
        self.smooth: Tensor
        self.register_buffer("shift", torch.zeros(k) if shift is None else shift.float().clone())
        self.register_buffer("smooth", torch.ones(k) if smooth is None else smooth.float().clone())
        self.folded_bias: Tensor
        self.register_buffer("folded_bias", bias + w @ self.shift)  # b' = b + W μ
        self.weight_codes: Tensor
        if pair_bound:
            codes, self.weight_qparams = pair_bounded_codes(w * self.smooth, weight_scheme)
        else:
            self.weight_qparams = calibrate(w * self.smooth, weight_scheme)
            codes = quantize_int(w * self.smooth, self.weight_qparams)
        self.register_buffer("weight_codes", codes)
        self.weight = nn.Parameter(self._effective_weight(), requires_grad=False)
        self.bias = None if layer.bias is None else nn.Parameter(bias.clone(), requires_grad=False)
        self._repack()

    # ------------------------------------------------------------------ weights
    def _effective_weight(self) -> Tensor:
        """Q(W')·diag(1/s): the weight this layer applies to the unsmoothed input."""
        return dequantize_int(self.weight_codes, self.weight_qparams) / self.smooth

    def set_codes(self, codes: Tensor, qparams: QParams) -> None:
        """Replace the weight codes (of W' = W·diag(s)) and their (S, Z) (loading a checkpoint)."""
        if tuple(codes.shape) != (self.out_features, self.in_features) or codes.dtype != torch.int8:
            raise ValueError(
                f"weight codes of shape {tuple(codes.shape)} ({codes.dtype}) do not fit "
                f"an int8 ({self.out_features}, {self.in_features}) layer"
            )
        qparams.check_shape(codes.shape)
        self.weight_qparams = qparams
        self.weight_codes = codes.clone()
        self._repack()

    def kernel_is_exact(self) -> bool:
        """False when fbgemm here would saturate these codes' pair sums (then forward simulates):
        u ≤ 255 (127 with reduce_range) times |q_2j| + |q_2j+1| must stay within 32767."""
        if not (self.use_fbgemm and fbgemm_saturates()):
            return True
        u_max = 127 if self.reduce_range else 255
        return pairs_bounded(self.weight_codes, 32767 // u_max)

    def _repack(self) -> None:
        with torch.no_grad():
            self.weight.copy_(self._effective_weight())
        self._smoothed = bool((self.shift != 0).any() or (self.smooth != 1).any())
        self._inv_smooth = (1.0 / self.smooth).contiguous()
        self._neg_shift = (-self.shift * self._inv_smooth).contiguous()
        self._packed = None
        if self.use_fbgemm:
            if self.kernel_is_exact():
                self._packed = self._pack()
            else:
                warnings.warn(
                    "these int8 weight codes would saturate fbgemm's int16 pair sums on this CPU "
                    "(no VNNI): the layer runs the exact simulation instead (slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )

    def _pack(self) -> object:
        qp = self.weight_qparams
        bias = None if self.per_token else self.folded_bias.clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qw = torch._make_per_channel_quantized_tensor(
                self.weight_codes, qp.scale.double(), qp.zero_point.long(), 0
            )
            return torch.ops.quantized.linear_prepack(qw, bias)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        if self.per_token:
            # max|x| per row as max(max x, −min x): two fast reductions, no |x| copy
            m = torch.maximum(x2.amax(dim=1, keepdim=True), x2.amin(dim=1, keepdim=True).neg_())
            m.clamp_(min=1e-30)
            y = self._gemm(x2 * m.reciprocal())
            y = torch.addcmul(self.folded_bias, y, m) if self.bias is not None else y * m
        else:
            xt = torch.addcmul(self._neg_shift, x2, self._inv_smooth) if self._smoothed else x2
            y = self._gemm(xt)
            if self._packed is None:
                y = y + self.folded_bias
        return y.reshape(*shape[:-1], self.out_features)

    def _gemm(self, xt: Tensor) -> Tensor:
        """Q(W') Q(x̃) (plus b' in the packed per-tensor mode): fbgemm, or its simulation."""
        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic(xt, self._packed, self.reduce_range)  # type: ignore[no-any-return]
        return self.simulate_gemm(xt)

    def simulate_gemm(self, xt: Tensor) -> Tensor:
        """fbgemm's arithmetic without saturation: u = quantize_per_tensor(x̃) with fbgemm's
        (S_x, Z_x); acc = Σ_k (u_k − Z_x)·q_k exactly (float64 holds every partial sum: |acc| ≤
        K·255·127 < 2^53); y = S_x·S_w·acc, rounded once to float32."""
        s_x, z_x = activation_qparams(xt, self.reduce_range)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            u = torch.quantize_per_tensor(xt.contiguous(), s_x, z_x, torch.quint8).int_repr()
        acc = (u.double() - z_x) @ self.weight_codes.double().T
        return (acc * (s_x * self.weight_qparams.scale.double())).float()

    def extra_repr(self) -> str:
        kernel = "fbgemm" if self._packed is not None else "simulated"
        act = (
            "per-token"
            if self.per_token
            else "per-tensor" + (" smoothed" if self._smoothed else "")
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"weight={self.weight_qparams.scheme}, activations=uint8 {act} dynamic, kernel={kernel}"
        )

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_packed"] = None  # re-packed on load
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if self.use_fbgemm and self.kernel_is_exact():
            self._packed = self._pack()

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]
        self._repack()
