"""AdaRound: learn, per weight, whether to round down or up (Nagel et al. 2020, "Up or Down?
Adaptive Rounding for Post-Training Quantization").

With the layer's frozen quantization parameters r = S·(q − Z), each weight is quantized as

    W̃ = S · (clamp(⌊W/S⌋ + h(V) + Z, qmin, qmax) − Z)

where h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1) (the rectified sigmoid, ζ = 1.1, γ = −0.1) is a
soft choice between ⌊W/S⌋ (h = 0) and ⌊W/S⌋ + 1 (h = 1), initialised at the fractional part
of W/S (so W̃ = W to start). Layer by layer, V minimises

    ‖f_a(W x + b) − f_a(W̃ x̂ + b)‖²_F / rows  +  λ Σ (1 − |2h(V) − 1|^β)

(paper eq. 21-25: the float layer's output on float inputs x is the target; x̂ is the input
from the already-quantized preceding layers — their learned rounding included — and f_a the
activation after the layer). The regulariser is off for the first ``warmup`` fraction of the
iterations, then β decays from β_start to β_end (cosine), pushing h to 0 or 1. Finally
h = [V ≥ 0], the layer's float weight is set to exactly S·(q − Z) and its weight quantizer is
frozen with the unchanged (S, Z), so every later step (bias correction, the integer engine,
export, checkpoints) quantizes it to the learned codes.

Speed: a conv layer's reconstruction is reduced to rows: ``rows`` output positions sampled
from the cached samples, each with its input patch (im2col of that position only, grouped for
depthwise convolutions); each iteration multiplies ``batch_rows`` of them by W̃. Inputs on a
quantization grid are kept as integer codes (1 byte each at 8 bits), float inputs as float16;
memory is bounded by ``num_samples`` (the samples themselves) and ``rows`` per layer.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.functional import quantize_int
from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.ptq.equalize import tensor_attr
from zeropoint.ptq.layer_io import (
    GridTracker,
    Rows,
    execution_order,
    float_simulation,
    quantizers_off,
    run,
    take_samples,
)
from zeropoint.ptq.simulation import simulate
from zeropoint.ptq.topology import activation_function, analyse
from zeropoint.qparams import QParams
from zeropoint.workflows.config import QuantConfig
from zeropoint.workflows.static import activation_quantizers

ZETA, GAMMA = 1.1, -0.1
#: Fewest samples AdaRound accepts (see `adaround`'s ``num_samples``).
MIN_SAMPLES = 8
#: Input values per iteration a layer's minibatch may hold (rows × row width), and the fewest
#: rows it keeps: wide rows (a depthwise layer's C·k² values) make smaller minibatches.
ROW_BUDGET = 1 << 20
MIN_BATCH_ROWS = 64
MARK = "_zeropoint_adaround"


def rectified_sigmoid(v: Tensor) -> Tensor:
    """h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1) with ζ = 1.1, γ = −0.1 (AdaRound eq. 23): reaches
    0 and 1 exactly (unlike σ), so the regulariser can drive h there."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def rectified_sigmoid_inverse(h: Tensor) -> Tensor:
    """V with h(V) = h for h in (0, 1): V = −log((ζ − γ)/(h − γ) − 1)."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


@dataclass
class LayerResult:
    """One layer's reconstruction: loss with round-to-nearest and after learning (on the rows
    used), the fraction of weights rounded away from nearest, rows used, seconds."""

    name: str
    kind: str
    rows: int
    loss_nearest: float
    loss_learned: float
    flipped: float
    seconds: float


@dataclass
class AdaRoundReport:
    layers: list[LayerResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    num_samples: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [f"AdaRound: {len(self.layers)} layers, {self.num_samples} samples, "
                 f"{self.seconds:.1f} s"]  # fmt: skip
        for r in self.layers:
            lines.append(
                f"  {r.name:40s} {r.kind:6s} rows {r.rows:6d}  loss {r.loss_nearest:.4g} → "
                f"{r.loss_learned:.4g}  flipped {100 * r.flipped:.1f}%  {r.seconds:.1f} s"
            )
        lines += [f"  skipped {n}: {why}" for n, why in self.skipped]
        return "\n".join(lines)


def adaround_report(model: nn.Module) -> AdaRoundReport:
    report = model.__dict__.get(MARK)
    if not isinstance(report, AdaRoundReport):
        raise ValueError(f"{type(model).__name__} has no AdaRound report")
    return report


def adaround(
    model: nn.Module,
    data: Any,
    config: QuantConfig | None = None,
    *,
    num_samples: int = 64,
    iterations: int = 1000,
    rows: int = 4096,
    batch_rows: int = 512,
    reg_weight: float = 0.01,
    beta: tuple[float, float] = (20.0, 2.0),
    warmup: float = 0.2,
    lr: float = 1e-2,
    batch_size: int = 16,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> nn.Module:
    """Quantize ``model`` with ``config`` (weights by AdaRound) and return the converted model.

    ``model``: a float model (quantized here with ``zp.quantize_static(model, samples, config)``, weight-only configs
    included (`zeropoint.ptq.simulation.simulate`):
    activation ranges are calibrated with round-to-nearest weights first) or a model already
    converted by a zeropoint workflow (its (S, Z) are kept). ``data``: a tensor of samples or
    batches; the first ``num_samples`` are cached and used for calibration and reconstruction
    (at least ``MIN_SAMPLES``; the data must hold ``num_samples``). ``rows``: output positions
    per layer; ``batch_rows``: rows per iteration; ``layers``: names to round (default: every
    quantized conv/linear). Returns a copy; the input model is not changed."""
    _check_args(num_samples, iterations, rows, batch_rows, warmup, beta)
    start_time = time.perf_counter()
    x = take_samples(data, num_samples)
    if x.shape[0] < num_samples:
        raise ValueError(
            f"AdaRound needs at least num_samples={num_samples} samples but the data holds "
            f"{x.shape[0]}: give more data or lower num_samples (minimum {MIN_SAMPLES})"
        )
    if any(isinstance(m, QuantMixin) for m in model.modules()):
        if MARK in model.__dict__:
            raise ValueError("this model's weights were already set by AdaRound")
        model_q = copy.deepcopy(model)
    else:
        batches = [x[i : i + batch_size] for i in range(0, x.shape[0], batch_size)]
        model_q = simulate(model, batches, config, progress=progress)
    report = AdaRoundReport(num_samples=num_samples)
    targets = _target_layers(model_q, x[:1], layers, report)
    topo = analyse(model_q)
    acts = {n: activation_function(model_q, topo.activation_after.get(n)) for n in targets}
    g = torch.Generator().manual_seed(seed)
    problems = {n: _Problem(n, targets[n], acts[n], rows, x.shape[0]) for n in targets}
    _float_targets(model_q, x, problems, batch_size, g)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(problems), desc="AdaRound", unit="layer", leave=False)
    opts = dict(iterations=iterations, batch_rows=batch_rows, reg_weight=reg_weight,
                beta=beta, warmup=warmup, lr=lr)  # fmt: skip
    try:
        _learn_in_one_pass(model_q, x, problems, batch_size, g, opts, report, bar)
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start_time
    model_q.__dict__[MARK] = report
    return model_q


# --------------------------------------------------------------------------- setup


def _check_args(
    num_samples: int,
    iterations: int,
    rows: int,
    batch_rows: int,
    warmup: float,
    beta: tuple[float, float],
) -> None:
    if num_samples < MIN_SAMPLES:
        raise ValueError(
            f"AdaRound needs at least {MIN_SAMPLES} samples to reconstruct layer outputs from; "
            f"num_samples={num_samples}"
        )
    if iterations < 1 or rows < 1 or batch_rows < 1:
        raise ValueError(
            f"iterations={iterations}, rows={rows} and batch_rows={batch_rows} must be positive"
        )
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup={warmup} must lie in [0, 1)")
    if not (beta[0] >= beta[1] >= 1):
        raise ValueError(f"beta={beta} must be (start, end) with start >= end >= 1")


SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def _target_layers(
    model: nn.Module, example: Tensor, names: Sequence[str] | None, report: AdaRoundReport
) -> dict[str, QuantMixin]:
    candidates: dict[str, QuantMixin] = {}
    for name, m in model.named_modules():
        if not isinstance(m, QuantMixin) or m.weight_quant is None:
            continue
        if names is not None and name not in names:
            continue
        wq = m.weight_quant
        if not isinstance(m, SUPPORTED):
            report.skipped.append((name, f"{type(m).__name__} is not a conv/linear layer"))
        elif not isinstance(wq, FakeQuant) or not wq.frozen or wq.mode != "quantize":
            raise ValueError(
                f"layer {name}'s weight quantizer is not frozen in mode 'quantize' (mode "
                f"{getattr(wq, 'mode', type(wq).__name__)!r}): convert the model first"
            )
        else:
            candidates[name] = m
    if names is not None:
        missing = sorted(set(names) - set(candidates) - {n for n, _ in report.skipped})
        if missing:
            raise ValueError(f"layers {missing} are not quantized layers of the model")
    calls = execution_order(model, example, dict(candidates))
    ordered: dict[str, QuantMixin] = {}
    for name in calls:
        if calls[name] != 1:
            report.skipped.append((name, f"runs {calls[name]} times per forward pass"))
        else:
            ordered[name] = candidates[name]
    for name in candidates:
        if name not in calls:
            report.skipped.append((name, "never runs in the forward pass"))
    return ordered


# --------------------------------------------------------------------------- the problem


class _Problem:
    """One layer's reconstruction data and its optimisation."""

    def __init__(
        self,
        name: str,
        layer: QuantMixin,
        act: Callable[[Tensor], Tensor],
        rows: int,
        num_samples: int,
    ) -> None:
        self.name = name
        self.layer = layer
        self.act = act
        self.rows = rows
        self.num_samples = num_samples
        zero_padding = getattr(layer, "padding_mode", "zeros") == "zeros"
        numeric = not isinstance(getattr(layer, "padding", 0), str)
        if isinstance(layer, nn.Linear):
            self.kind = "linear"
        elif isinstance(layer, nn.Conv1d | nn.Conv2d) and zero_padding and numeric:
            self.kind = "conv"
        else:
            self.kind = "map"
        self.positions: list[Any] = []
        self.targets: list[Tensor] = []
        self.inputs = Rows()
        self.target: Tensor | None = None

    # ---- which rows: chosen in the float pass, reused in the quantized pass
    def choose(self, out: Tensor, g: torch.Generator) -> Any:
        n = out.shape[0]
        per_sample = math.ceil(self.rows / self.num_samples)
        if self.kind == "linear":
            flat = out.reshape(-1, out.shape[-1]).shape[0]
            k = min(flat, per_sample * n)
            return torch.randperm(flat, generator=g)[:k].sort().values
        if self.kind == "map":
            return None
        spatial = out.shape[2:]
        positions = int(math.prod(spatial))
        k = min(per_sample, positions)
        idx = torch.rand(n, positions, generator=g).argsort(dim=1)[:, :k]
        n_idx = torch.arange(n).unsqueeze(1).expand(n, k).reshape(-1)
        flat_idx = idx.reshape(-1)
        width = spatial[-1]
        return n_idx, flat_idx // width, flat_idx % width

    def target_rows(self, out: Tensor, pos: Any) -> Tensor:
        if self.kind == "linear":
            return out.reshape(-1, out.shape[-1])[pos].float()
        if self.kind == "map":
            return out.float()
        n_idx, oh, ow = pos
        if out.dim() == 3:  # conv1d: (N, C, L)
            return out[n_idx, :, ow].float()
        return out[n_idx, :, oh, ow].float()

    def input_rows(self, x: Tensor, pos: Any) -> Tensor:
        layer = self.layer
        if self.kind == "linear":
            return x.reshape(-1, x.shape[-1])[pos].unsqueeze(1)
        if self.kind == "map":
            return x
        n_idx, oh, ow = pos
        if x.dim() == 3:
            x = x.unsqueeze(2)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = _geometry(layer)
        xp = F.pad(x, (pw, pw, ph, ph)) if (ph or pw) else x
        h = oh.unsqueeze(1) * sh + torch.arange(kh) * dh
        w = ow.unsqueeze(1) * sw + torch.arange(kw) * dw
        patches = xp[n_idx[:, None, None], :, h[:, :, None], w[:, None, :]]  # (P, kh, kw, C)
        groups = int(getattr(layer, "groups", 1))
        p = patches.shape[0]
        return patches.permute(0, 3, 1, 2).reshape(p, groups, -1)

    def release(self) -> None:
        self.inputs = Rows()
        self.targets = []
        self.target = None

    # ---- the optimisation
    def solve(
        self,
        g: torch.Generator,
        iterations: int,
        batch_rows: int,
        reg_weight: float,
        beta: tuple[float, float],
        warmup: float,
        lr: float,
    ) -> LayerResult:
        layer = self.layer
        qp = layer.weight_qparams()
        w = layer.float_weight.detach().float()
        base = w.reshape(w.shape[0], -1) if _flattened_groups(layer, qp) else w
        scale, zero, view_shape = qp.broadcast(base.shape)
        wv = base.reshape(view_shape)
        s = scale.float()
        z = zero.float()
        lo, hi = qp.scheme.qmin - z, qp.scheme.qmax - z
        ratio = wv / s
        floor = torch.floor(ratio)
        rest = (ratio - floor).clamp(0.0, 1.0)
        v = rectified_sigmoid_inverse(rest).clamp(-20.0, 20.0).requires_grad_(True)
        b = tensor_attr(layer, "bias")
        bias = b.detach().float() if b is not None else None
        x_all = self.inputs.finish()
        target = torch.cat(self.targets)
        n = x_all.shape[0]

        def weights(h: Tensor) -> Tensor:
            q = torch.minimum(torch.maximum(floor + h, lo), hi)
            return (q * s).reshape(w.shape)

        soft = _SoftRounding(floor, lo, hi, s)

        grid = self.inputs.qparams if self.inputs.exact and self.kind != "map" else None

        def loss_on(idx: Tensor | None, wt: Tensor) -> Tensor:
            xb = x_all if idx is None else x_all[idx]
            tb = target if idx is None else target[idx]
            if grid is None:
                y = self._forward(self.inputs.decode(xb), wt, bias)
            else:
                # x = S_x·(q − Z_x): multiply the codes, then rescale and remove the zero
                # point on the (small) output: W̃x = S_x·(W̃q) − S_x·Z_x·Σ_k W̃_k
                sx, zx = float(grid.scale), float(grid.zero_point)
                y = self._forward(xb.float(), wt, None) * sx
                y = y - (sx * zx) * wt.reshape(wt.shape[0], -1).sum(1)
                y = y + bias if bias is not None else y
            diff = self.act(y) - tb
            return diff.pow(2).sum(1).mean()

        nearest = (rest >= 0.5).float()
        with torch.no_grad():
            loss_nearest = float(self._full_loss(loss_on, weights(nearest), n))
        opt = _adam(v, lr)
        start_reg = int(warmup * iterations)
        if self.kind == "map":
            batch = min(self._map_batch(x_all, batch_rows), n)
        else:  # rows are memory-bound when wide (a depthwise row holds C·k² values): cap them
            width = int(math.prod(x_all.shape[1:]))
            batch = min(batch_rows, max(MIN_BATCH_ROWS, ROW_BUDGET // max(width, 1)), n)
        beta_start, beta_end = beta
        ranks = _ranks()
        for it in range(iterations):
            bt = 0.0  # no regulariser during the warm-up
            if it >= start_reg:
                rel = (it - start_reg) / max(1, iterations - start_reg)
                bt = beta_end + 0.5 * (beta_start - beta_end) * (1.0 + math.cos(rel * math.pi))
            idx = torch.randint(n, (batch,), generator=g) if batch < n else None
            wt, reg = soft(v, bt, reg_weight)
            loss = loss_on(idx, wt.reshape(w.shape))
            opt.zero_grad(set_to_none=True)
            if ranks is None:
                (loss + reg).backward()
            else:  # the reconstruction gradient of every rank's rows, weighted by their count
                local = float(batch if idx is not None else n)
                (loss * local).backward(retain_graph=True)
                assert v.grad is not None
                total = ranks.all_reduce(torch.tensor([local]), "sum", "AdaRound rows")
                v.grad = ranks.all_reduce(v.grad, "sum", "AdaRound gradients") / total
                reg.backward()  # the regulariser is the same on every rank: added once
            opt.step()
        hard = (v.detach() >= 0).float()
        with torch.no_grad():
            learned = weights(hard)
            loss_learned = float(self._full_loss(loss_on, learned, n))
        codes = torch.minimum(torch.maximum(floor + hard, lo), hi) + z
        self._commit(learned, qp, codes.reshape(base.shape).to(torch.int32))
        flipped = float((hard != nearest).float().mean())
        return LayerResult(self.name, self.kind, n, loss_nearest, loss_learned, flipped, 0.0)

    def _full_loss(
        self, loss_on: Callable[[Tensor | None, Tensor], Tensor], wt: Tensor, n: int
    ) -> Tensor:
        chunk = 4096 if self.kind != "map" else max(1, n // 8)
        total = torch.zeros(())
        for i in range(0, n, chunk):
            idx = torch.arange(i, min(n, i + chunk))
            total += loss_on(idx, wt) * idx.numel()
        return total / n

    def _map_batch(self, x: Tensor, batch_rows: int) -> int:
        positions = max(1, int(math.prod(x.shape[2:])))
        return max(1, batch_rows // positions)

    def _forward(self, x: Tensor, wt: Tensor, bias: Tensor | None) -> Tensor:
        layer = self.layer
        if self.kind == "linear":
            y = x[:, 0, :] @ wt.t()
            return y + bias if bias is not None else y
        if self.kind == "conv":
            groups = int(getattr(layer, "groups", 1))
            c = wt.shape[0]
            if groups == 1:
                y = x[:, 0, :] @ wt.reshape(c, -1).t()
            elif groups == c:  # depthwise: one output per group, an element-wise product
                y = (x * wt.reshape(1, c, -1)).sum(-1)
            else:
                wg = wt.reshape(groups, c // groups, -1).transpose(1, 2)  # (g, Kg, C/g)
                y = torch.bmm(x.transpose(0, 1), wg).transpose(0, 1).reshape(x.shape[0], c)
            return y + bias if bias is not None else y
        if isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d):
            fn = F.conv_transpose1d if isinstance(layer, nn.ConvTranspose1d) else F.conv_transpose2d
            return fn(x, wt, bias, layer.stride, layer.padding, layer.output_padding,  # type: ignore[arg-type]
                      layer.groups, layer.dilation)  # type: ignore[arg-type]  # fmt: skip
        return layer._conv_forward(x, wt, bias)  # type: ignore[operator,no-any-return]

    def _commit(self, learned: Tensor, qp: QParams, codes: Tensor) -> None:
        layer = self.layer
        with torch.no_grad():
            layer.float_weight.copy_(learned.to(layer.float_weight.dtype))
        wq = layer.weight_quant
        assert isinstance(wq, FakeQuant)
        wq.set_qparams(qp)
        wq.mode = "quantize"
        w = layer.float_weight.detach()
        base = w.reshape(w.shape[0], -1) if _flattened_groups(layer, qp) else w
        if not torch.equal(quantize_int(base, qp).to(torch.int32), codes):
            raise RuntimeError(f"AdaRound: layer {self.name}'s weights do not re-quantize exactly")


class _SoftRounding:
    """W̃(V) and the regulariser in one autograd node (the element-wise chain written once in
    each direction instead of a dozen small kernels):

        h = clamp(σ(V)(ζ − γ) + γ, 0, 1),  W̃ = S·clamp(⌊W/S⌋ + h, qmin − Z, qmax − Z)
        R = λ Σ (1 − |2h − 1|^β)

    With integer ⌊W/S⌋, qmin − Z and qmax − Z the outer clamp only ever pins a weight whose
    floor lies outside [qmin − Z, qmax − Z − 1] to an end of the grid, whatever h is; such
    weights are fixed at that end (h ∈ [0, 0]) and the others never clamp: one clamp,
    h ∈ [0, b] with b ∈ {0, 1} per weight. Gradients:

        ∂W̃/∂V = S·[0 < h_raw < b]·(ζ − γ)σ(1 − σ),   ∂R/∂h = −2λβ|2h − 1|^(β−1)·sign(2h − 1)

    (fixed weights have h = 0, so they add nothing to R either).
    """

    def __init__(self, floor: Tensor, lo: Tensor, hi: Tensor, s: Tensor) -> None:
        movable = (floor >= lo) & (floor <= hi - 1)
        self.base = torch.where(movable, floor, torch.minimum(torch.maximum(floor, lo), hi))
        self.s = s
        self.a = torch.zeros_like(self.base)
        self.b = movable.to(floor.dtype)

    def __call__(self, v: Tensor, beta: float, reg_weight: float) -> tuple[Tensor, Tensor]:
        return _SoftRoundingFn.apply(v, self, beta, reg_weight)  # type: ignore[no-any-return]


class _SoftRoundingFn(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, v: Tensor, soft: _SoftRounding, beta: float, reg_weight: float
    ) -> tuple[Tensor, Tensor]:
        sig = torch.sigmoid(v)
        h_raw = (sig * (ZETA - GAMMA)).add_(GAMMA)
        inside = (h_raw > soft.a).logical_and_(h_raw < soft.b)
        h = torch.clamp(h_raw, soft.a, soft.b)
        wt = (h + soft.base).mul_(soft.s)
        reg = torch.zeros(())
        slope: Tensor | None = None
        if beta > 0:
            centred = h.mul_(2.0).sub_(1.0)  # h is not needed any more: reuse it
            t = centred.abs()
            t_pow = torch.log(t).mul_(beta - 1.0).exp_()  # t^(β−1), 2x faster than pow
            reg = reg_weight * (t.numel() - torch.dot(t_pow.reshape(-1), t.reshape(-1)))
            slope = t_pow.mul_(centred.sign_())  # |2h − 1|^(β−1)·sign(2h − 1)
        ctx.save_for_backward(sig, inside, slope)
        ctx.soft, ctx.beta, ctx.reg_weight = soft, beta, reg_weight
        return wt, reg

    @staticmethod
    def backward(ctx: Any, grad_w: Tensor, grad_reg: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        sig, inside, slope = ctx.saved_tensors
        g = grad_w * ctx.soft.s  # ∂L/∂h through W̃
        if slope is not None:
            g.add_(slope, alpha=-2.0 * ctx.reg_weight * ctx.beta * float(grad_reg))
        g.mul_(inside).mul_(sig).mul_(1.0 - sig).mul_(ZETA - GAMMA)
        return g, None, None, None


def _ranks() -> Any:
    """The torch.distributed ranks AdaRound's gradients are reduced over (None: one process):
    each rank reconstructs from its shard of the samples, and every rank learns the rounding of
    all of them (the reconstruction loss is a mean over rows, so its gradient is the row-count
    weighted mean of the ranks' gradients)."""
    from zeropoint.distributed import RankGroup, is_distributed

    return RankGroup() if is_distributed() else None


def _adam(v: Tensor, lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where this build of torch has it for v's device (on CPU ~7x
    faster per step than the multi-tensor form)."""
    try:
        return torch.optim.Adam([v], lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam([v], lr=lr)


def _flattened_groups(layer: QuantMixin, qp: QParams) -> bool:
    return qp.scheme.group_size is not None and layer.float_weight.dim() > 2


def _geometry(layer: nn.Module) -> tuple[tuple[int, int], ...]:
    """(kernel, stride, padding, dilation) as (h, w) pairs; a Conv1d is a conv of height 1."""
    values = [getattr(layer, k) for k in ("kernel_size", "stride", "padding", "dilation")]
    if isinstance(layer, nn.Conv1d):
        ones = (1, 1, 0, 1)
        return tuple((one, int(v[0])) for one, v in zip(ones, values, strict=True))
    return tuple((int(v[0]), int(v[1])) for v in values)


# --------------------------------------------------------------------------- the passes


def _float_targets(
    model: nn.Module, x: Tensor, problems: dict[str, _Problem], batch_size: int, g: torch.Generator
) -> None:
    """One float pass (quantizers off): every layer's target rows f_a(W x + b)."""
    handles = []
    for p in problems.values():

        def hook(mod: nn.Module, args: Any, out: Tensor, p: _Problem = p) -> None:
            pos = p.choose(out, g)
            p.positions.append(pos)
            rows = p.target_rows(out, pos)
            p.targets.append(p.act(rows).detach())

        handles.append(p.layer.register_forward_hook(hook))
    try:
        with quantizers_off(model):
            run(model, x, batch_size)
    finally:
        for h in handles:
            h.remove()


def _learn_in_one_pass(
    model: nn.Module,
    x: Tensor,
    problems: dict[str, _Problem],
    batch_size: int,
    g: torch.Generator,
    opts: dict[str, Any],
    report: AdaRoundReport,
    bar: Any,
) -> None:
    """One pass of the quantized model over all samples at once; each layer's pre-hook takes its
    input rows x̂ — computed by the preceding layers with their learned rounding already in
    place — learns the layer's rounding and commits it before the layer runs. So every layer
    reconstructs from the already-quantized prefix at the cost of a single forward pass."""
    tracker = GridTracker(activation_quantizers(model))
    handles = []
    for p in problems.values():

        def hook(mod: nn.Module, args: tuple[Any, ...], p: _Problem = p) -> None:
            t0 = time.perf_counter()
            xin = args[0]
            grid = tracker.grid_of(xin)
            iq = p.layer.input_quant
            if isinstance(iq, FakeQuant) and iq.mode == "quantize":
                xin = iq(xin)
                grid = iq.qparams() if iq.scale.dim() == 0 else None
            for i, pos in enumerate(p.positions):
                chunk = xin[i * batch_size : (i + 1) * batch_size].detach()
                p.inputs.add(p.input_rows(chunk, pos), grid)
            with torch.enable_grad():
                result = p.solve(g, **opts)
            p.release()
            result.seconds = time.perf_counter() - t0
            report.layers.append(result)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(layer=p.name, loss=f"{result.loss_learned:.3g}")

        handles.append(p.layer.register_forward_pre_hook(hook))
    try:
        # the float simulation (the converted layers would otherwise run their integer kernels,
        # the same codes but several times slower, rebuilt after every commit)
        with torch.no_grad(), float_simulation(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
        tracker.remove()


__all__ = [
    "MIN_SAMPLES",
    "AdaRoundReport",
    "LayerResult",
    "adaround",
    "adaround_report",
    "rectified_sigmoid",
    "rectified_sigmoid_inverse",
]
