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

fbgemm without VNNI multiplies u8·s8 pairs into a saturating int16 (vpmaddubsw): with 8-bit
activations and full int8 weights two products can exceed 32767. `reduce_range="auto"` therefore
probes the kernel once (`fbgemm_saturates`): it keeps 8-bit weights where the products are exact
(VNNI), and otherwise uses 7-bit weights [−63, 63], for which 2·255·63 < 32767 — exact on every
x86 CPU, without losing the activations' 8th bit.
Where fbgemm is not available the same arithmetic runs as a float simulation.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.functional import dequantize_int, fake_quantize, quantize_int
from zeropoint.observers.registry import calibrate
from zeropoint.qparams import QParams, Scheme

INT8_CHANNEL = Scheme(bits=8, symmetric=True, narrow=True, axis=0)


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


def smoothing_from_range(lo: Tensor, hi: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """(μ, s) per input channel: μ = (hi + lo)/2, s = √a / √max|W_:j| with a = (hi − lo)/2."""
    shift = (hi + lo) / 2
    half = ((hi - lo) / 2).clamp(min=1e-5)
    w_max = weight.detach().abs().amax(0).clamp(min=1e-5)
    return shift.float(), (half.sqrt() / w_max.sqrt()).clamp(min=1e-5).float()


class DynamicQuantLinear(nn.Linear):
    """int8 per-channel weights; activations quantized per token, or per tensor after smoothing."""

    def __init__(
        self,
        layer: nn.Linear,
        weight_scheme: Scheme = INT8_CHANNEL,
        per_token: bool = True,
        reduce_range: bool = False,
        use_fbgemm: bool | None = None,
        shift: Tensor | None = None,
        smooth: Tensor | None = None,
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
        self.weight_qparams = calibrate(w * self.smooth, weight_scheme)
        self.weight_codes: Tensor
        self.register_buffer("weight_codes", quantize_int(w * self.smooth, self.weight_qparams))
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

    def _repack(self) -> None:
        with torch.no_grad():
            self.weight.copy_(self._effective_weight())
        self._smoothed = bool((self.shift != 0).any() or (self.smooth != 1).any())
        self._inv_smooth = (1.0 / self.smooth).contiguous()
        self._neg_shift = (-self.shift * self._inv_smooth).contiguous()
        self._packed = self._pack() if self.use_fbgemm else None

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
        """Q(W') Q(x̃) (plus b' in the packed per-tensor mode): fbgemm, or its float simulation."""
        if self._packed is not None:
            return torch.ops.quantized.linear_dynamic(xt, self._packed, self.reduce_range)  # type: ignore[no-any-return]
        w = dequantize_int(self.weight_codes, self.weight_qparams)
        return F.linear(self.simulate_activation(xt), w)

    def simulate_activation(self, xt: Tensor) -> Tensor:
        """The quantization fbgemm applies to its input, in float: uint8 affine over
        [min, max] ∪ {0} (7-bit [0, 127] with reduce_range)."""
        scheme = Scheme(bits=7 if self.reduce_range else 8, signed=False)
        return fake_quantize(xt, calibrate(xt, scheme))

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
        if self.use_fbgemm:
            self._packed = self._pack()

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]
        self._repack()
