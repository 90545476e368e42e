"""ZeroQ: quantization with no data (Cai et al. 2020, "ZeroQ: A Novel Zero Shot Quantization
Framework").

Distilled data: inputs x^r, started from N(0, 1) noise, optimised so that at every batch norm
the statistics of its input match the running statistics it stored in training (paper eq. 3):

    min_{x^r}  Σ_i ‖μ̃_i^r − μ_i‖²₂ + ‖σ̃_i^r − σ_i‖²₂   (+ the same for the input, optional)

μ̃_i^r, σ̃_i^r: mean and standard deviation per channel of batch norm i's input on x^r (over the
batch and the spatial positions: ``statistics="batch"``, the paper's equation; or per sample,
averaged over the batch: ``statistics="sample"``, as ZeroQ's released code does). μ_i, σ_i:
its running mean and √(running variance + ε). Adam (lr 0.5 by default, halved when the loss
stops falling, as in ZeroQ's code) runs ``iterations`` steps per batch of samples. No real
sample is read: only the model's parameters and buffers.

Level 1 (`zeroq_quantize`): static quantization calibrated on distilled data (any observer).
Level 2 (`zeroq_finetune`): quantization-aware fine-tuning on distilled data with the float
model as teacher — knowledge distillation on the outputs,

    L = T² · KL(softmax(f(x)/T) ‖ softmax(f̂(x)/T))   (``loss="kl"``)   or   ‖f(x) − f̂(x)‖²

— through the straight-through (or LSQ) quantizers of `zp.prepare_qat`, batch norms frozen at
their running statistics; then `zp.convert`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeropoint.nn.modules import QuantMixin
from zeropoint.nn.quantizers import FakeQuant
from zeropoint.ptq.equalize import fold_batchnorms
from zeropoint.ptq.simulation import simulate
from zeropoint.workflows.config import QuantConfig, int8_static
from zeropoint.workflows.qat import freeze_bn, prepare_qat
from zeropoint.workflows.static import convert

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
REPORT_KEY = "_zeropoint_zeroq"


@dataclass
class ZeroQReport:
    """What produced a ZeroQ model: distilled samples, the final statistics loss, seconds."""

    level: int
    num_samples: int
    distill_loss: float
    distill_seconds: float
    finetune_seconds: float = 0.0
    finetune_loss: float = float("nan")


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    bns: list[nn.modules.batchnorm._BatchNorm] = [
        m
        for m in model.modules()
        if isinstance(m, BATCHNORMS) and m.running_mean is not None and m.running_var is not None
    ]
    if not bns:
        raise ValueError(
            f"ZeroQ needs batch-norm layers with running statistics: the distilled data is made "
            f"to match each BatchNorm's running mean and variance, and {type(model).__name__} "
            "has none (pass the float model before its batch norms are folded)"
        )
    return bns


def distill_data(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_samples: int = 64,
    *,
    batch_size: int = 32,
    iterations: int = 500,
    lr: float = 0.5,
    statistics: str = "batch",
    input_stats: tuple[float, float] | None = None,
    input_range: tuple[Sequence[float] | float, Sequence[float] | float] | None = None,
    smoothness: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> Tensor:
    """``num_samples`` distilled inputs of shape ``input_shape`` (per sample) for ``model``
    (a float model with batch norms, in eval mode). ``input_stats``: (mean, std) the input
    channels should have (ZeroQ uses (0, 1) for normalised images; None: no input term).
    ``input_range``: (lo, hi), numbers or one per input channel, the domain of a real input
    (for images normalised by (p − mean_c)/std_c with pixels p in [0, 1]: lo_c = −mean_c/std_c,
    hi_c = (1 − mean_c)/std_c): every optimisation step is followed by the projection
    x ← min(max(x, lo), hi) (projected gradient descent), so no distilled value lies where no
    real input can (unprojected, MobileNetV2's distilled images reached −23…19 against real
    −2.1…2.6, and the input quantizer's range followed them). Knowledge of the input format,
    not data. ``smoothness``: λ ≥ 0 of an image prior added to the loss (DeepInversion's
    total-variation term, Yin et al. 2020), λ · Σ_axes mean((x_{…,k+1,…} − x_{…,k,…})²) over the
    spatial axes: the statistics loss alone leaves the distilled images as rough as the noise
    they start from (MobileNetV2: 3.96 per pixel against 0.13 for real photos; a network's
    features pooled over such images are smaller than over real ones; λ is the model's to
    choose, docs/ptq.md §6). Returns a float32 tensor
    (num_samples, *input_shape); the model is not changed."""
    if statistics not in ("batch", "sample"):
        raise ValueError(f"statistics={statistics!r} is unknown: expected 'batch' or 'sample'")
    if num_samples < 1 or batch_size < 1 or iterations < 1:
        raise ValueError(
            f"num_samples={num_samples}, batch_size={batch_size} and iterations={iterations} "
            "must be positive"
        )
    if not (math.isfinite(smoothness) and smoothness >= 0.0):
        raise ValueError(f"smoothness={smoothness} must be a finite number ≥ 0")
    if model.training:
        raise ValueError(
            "put the model in eval mode: batch norms must use their running statistics"
        )
    bounds = _input_bounds(input_range, input_shape)
    bns = _batchnorms(model)
    seen: dict[int, Tensor] = {}
    handles = [
        bn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0]))
        for i, bn in enumerate(bns)
    ]
    targets = [
        (bn.running_mean.detach().float(), torch.sqrt(bn.running_var.detach().float() + bn.eps))  # type: ignore[union-attr,operator]
        for bn in bns
    ]
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    batches: list[Tensor] = []
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        total = iterations * -(-num_samples // batch_size)
        bar = tqdm(total=total, desc="ZeroQ distilling", unit="step", leave=False)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            x = torch.randn((n, *input_shape), generator=g)
            if bounds is not None:
                x.clamp_(*bounds)
            x.requires_grad_(True)
            opt = torch.optim.Adam([x], lr=lr)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, min_lr=1e-4, patience=100)
            for _ in range(iterations):
                seen.clear()
                model(x)
                loss = torch.zeros(())
                for i, (mu, sigma) in enumerate(targets):
                    if i in seen:
                        loss = loss + _stat_loss(seen[i], mu, sigma, statistics)
                if input_stats is not None:
                    c = x.shape[1]
                    mu_in = torch.full((c,), float(input_stats[0]))
                    sd_in = torch.full((c,), float(input_stats[1]))
                    loss = loss + _stat_loss(x, mu_in, sd_in, statistics)
                if smoothness:
                    loss = loss + smoothness * roughness(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if bounds is not None:
                    with torch.no_grad():
                        x.clamp_(*bounds)  # the projection
                value = loss.detach().item()
                sched.step(value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.3g}")
            batches.append(x.detach())
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
        if bar is not None:
            bar.close()
    return torch.cat(batches)


@torch.no_grad()
def statistics_loss(
    model: nn.Module, x: Tensor, statistics: str = "batch", batch_size: int = 64
) -> float:
    """The batch-norm statistics loss Σ_i ‖μ̃_i − μ_i‖² + ‖σ̃_i − σ_i‖² of inputs ``x`` (per
    batch of ``batch_size``, averaged): small for data that looks like the training data."""
    bns = _batchnorms(model)
    seen: dict[int, Tensor] = {}
    handles = [
        bn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0]))
        for i, bn in enumerate(bns)
    ]
    total, count = 0.0, 0
    try:
        for start in range(0, x.shape[0], batch_size):
            seen.clear()
            model(x[start : start + batch_size])
            for i, bn in enumerate(bns):
                if i in seen:
                    sigma = torch.sqrt(bn.running_var.float() + bn.eps)  # type: ignore[union-attr,operator]
                    total += float(_stat_loss(seen[i], bn.running_mean.float(), sigma, statistics))  # type: ignore[union-attr]
            count += 1
    finally:
        for h in handles:
            h.remove()
    return total / max(count, 1)


def _input_bounds(
    input_range: tuple[Sequence[float] | float, Sequence[float] | float] | None,
    input_shape: tuple[int, ...],
) -> tuple[Tensor, Tensor] | None:
    """(lo, hi) shaped to broadcast over (n, C, …) inputs; ValueError for a bad range."""
    if input_range is None:
        return None
    if len(input_range) != 2:
        raise ValueError(f"input_range must be (lo, hi), got {input_range!r}")
    trailing = [1] * (len(input_shape) - 1)
    lo, hi = (torch.as_tensor(b, dtype=torch.float32).reshape(-1) for b in input_range)
    for name, b in (("lo", lo), ("hi", hi)):
        if b.numel() not in (1, input_shape[0]):
            raise ValueError(
                f"input_range {name} has {b.numel()} values: expected 1 or one per input channel "
                f"({input_shape[0]})"
            )
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo < hi).all()):
        raise ValueError(f"input_range needs finite lo < hi, got {input_range!r}")
    return lo.reshape(1, -1, *trailing), hi.reshape(1, -1, *trailing)


def roughness(x: Tensor) -> Tensor:
    """Σ over the spatial axes d of x (n, C, …) of mean((x_{k+1} − x_k)²) along d (0 for x
    with no spatial axis)."""
    total = torch.zeros(())
    for d in range(2, x.dim()):
        total = total + torch.diff(x, dim=d).pow(2).mean()
    return total


def _stat_loss(y: Tensor, mu: Tensor, sigma: Tensor, statistics: str) -> Tensor:
    """‖μ̃ − μ‖² + ‖σ̃ − σ‖² for the channel statistics (axis 1) of y."""
    if statistics == "sample" and y.dim() > 2:
        flat = y.reshape(y.shape[0], y.shape[1], -1)
        mean = flat.mean(2)
        std = torch.sqrt(flat.var(2, unbiased=False) + 1e-5)
        return ((mean - mu).pow(2).sum(1) + (std - sigma).pow(2).sum(1)).mean()
    dims = [d for d in range(y.dim()) if d != 1]
    mean = y.mean(dims)
    std = torch.sqrt(y.var(dims, unbiased=False) + 1e-5)
    return (mean - mu).pow(2).sum() + (std - sigma).pow(2).sum()


def zeroq_quantize(
    model: nn.Module,
    config: QuantConfig | None = None,
    *,
    input_shape: tuple[int, ...],
    num_samples: int = 64,
    distilled: Tensor | None = None,
    batch_size: int = 32,
    progress: bool = True,
    **distill_options: Any,
) -> nn.Module:
    """ZeroQ level 1: static quantization with ``config`` (any observer) calibrated on distilled
    data (made by `distill_data` unless given). Returns the converted model."""
    t0 = time.perf_counter()
    if distilled is None:
        distilled = distill_data(
            model,
            input_shape,
            num_samples,
            batch_size=batch_size,
            progress=progress,
            **distill_options,
        )
    else:
        _batchnorms(model)
    seconds = time.perf_counter() - t0
    batches = [distilled[i : i + batch_size] for i in range(0, distilled.shape[0], batch_size)]
    model_q = simulate(model, batches, config or int8_static(), progress=progress)
    loss = statistics_loss(model, distilled)
    model_q.__dict__[REPORT_KEY] = ZeroQReport(1, distilled.shape[0], loss, seconds)
    return model_q


def zeroq_finetune(
    model: nn.Module,
    config: QuantConfig | None = None,
    *,
    input_shape: tuple[int, ...],
    num_samples: int = 256,
    distilled: Tensor | None = None,
    epochs: int = 10,
    lr: float = 1e-4,
    batch_size: int = 32,
    temperature: float = 1.0,
    loss: str = "kl",
    learnable: str | None = None,
    generator: torch.Generator | None = None,
    start: nn.Module | None = None,
    progress: bool = True,
    **distill_options: Any,
) -> nn.Module:
    """ZeroQ level 2: fine-tune ``zp.prepare_qat(model, config)`` on distilled data with the
    float ``model`` as teacher (module doc), batch norms frozen; returns ``zp.convert``'s
    model. ``config``: the schemes (a static or QAT config); ``learnable``: the quantizers
    trained — None (default): straight-through fake quantization, weights at their min-max
    range and activations at moving-average min-max ranges; or "lsq", "lsq+", "pact" (overrides
    the config's). On the digits CNN at W4A4 and W2A4 the straight-through quantizers fine-tune
    far better from distilled data than LSQ's learned steps (see docs/ptq.md). ``start``: a
    model converted from ``model`` whose layers' weights and biases start the fine-tuning
    instead of the float ones — e.g. ``adaround(model, distilled, config)``, AdaRound's learned
    rounding on the same distilled data; its layers hold batch-norm-folded weights, so the
    student is built from ``model`` with its batch norms folded, and its straight-through
    weight quantizers keep the start's (S, Z) (learnable ones start from their own)."""
    if loss not in ("kl", "mse"):
        raise ValueError(f"loss={loss!r} is unknown: expected 'kl' or 'mse'")
    if epochs < 1 or lr <= 0 or temperature <= 0:
        raise ValueError(f"epochs={epochs}, lr={lr} and temperature={temperature} must be positive")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    if distilled is None:
        distilled = distill_data(
            model, input_shape, num_samples, batch_size=batch_size, generator=g,
            progress=progress, **distill_options,
        )  # fmt: skip
    else:
        _batchnorms(model)
    distill_seconds = time.perf_counter() - t0
    cfg = (config or int8_static()).with_(learnable=learnable)
    if learnable is None and cfg.activation_observer == "minmax":
        cfg = cfg.with_(activation_observer="moving_average")
    teacher = model.eval()
    with torch.no_grad():
        soft = torch.cat(
            [
                teacher(distilled[i : i + batch_size])
                for i in range(0, distilled.shape[0], batch_size)
            ]
        )
    example = distilled[: max(batch_size, 1)]
    if start is None:
        student = prepare_qat(model, cfg, example_inputs=example)
    else:
        student = prepare_qat(fold_batchnorms(model), cfg)
        _start_from(student, start)
        with torch.no_grad():
            student(example)  # the activation ranges, on the starting weights
    freeze_bn(student)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = distilled.shape[0]
    steps = epochs * -(-n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="ZeroQ fine-tuning", unit="step", leave=False)
    t1 = time.perf_counter()
    last = float("nan")
    student.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            out = student(distilled[idx])
            target = soft[idx]
            if loss == "kl":
                t = temperature
                value = F.kl_div(
                    F.log_softmax(out / t, dim=1), F.log_softmax(target / t, dim=1),
                    reduction="batchmean", log_target=True,
                ) * (t * t)  # fmt: skip
            else:
                value = F.mse_loss(out, target)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            last = value.detach().item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last:.3g}")
    if bar is not None:
        bar.close()
    student.eval()
    model_q = convert(student)
    report = ZeroQReport(
        2, n, statistics_loss(model, distilled), distill_seconds,
        time.perf_counter() - t1, last,
    )  # fmt: skip
    model_q.__dict__[REPORT_KEY] = report
    return model_q


def _start_from(student: nn.Module, start: nn.Module) -> None:
    """Copy every quantized layer's weight and bias from ``start`` (same layer names)."""
    theirs = dict(start.named_modules())
    for name, layer in student.named_modules():
        if not isinstance(layer, QuantMixin) or layer.weight_quant is None:
            continue
        source = theirs.get(name)
        if (
            not isinstance(source, QuantMixin)
            or source.float_weight.shape != layer.float_weight.shape
        ):
            raise ValueError(
                f"start has no quantized layer {name!r} of weight shape "
                f"{tuple(layer.float_weight.shape)}: give a model converted from the same model"
            )
        with torch.no_grad():
            layer.float_weight.copy_(source.float_weight)
            bias, source_bias = getattr(layer, "bias", None), getattr(source, "bias", None)
            if isinstance(bias, Tensor) and isinstance(source_bias, Tensor):
                bias.copy_(source_bias)
        wq, source_wq = layer.weight_quant, source.weight_quant
        if isinstance(wq, FakeQuant) and isinstance(source_wq, FakeQuant) and source_wq.frozen:
            # the weights train on the start's grid: a min-max range recomputed from rounded
            # weights can differ by a step (4-bit symmetric: −8·S sets the range) and re-round
            wq.set_qparams(source_wq.qparams())
            wq.mode = "quantize"


def zeroq_report(model: nn.Module) -> ZeroQReport:
    report = model.__dict__.get(REPORT_KEY)
    if not isinstance(report, ZeroQReport):
        raise ValueError(f"{type(model).__name__} was not quantized by ZeroQ")
    return report


__all__ = [
    "ZeroQReport",
    "distill_data",
    "roughness",
    "statistics_loss",
    "zeroq_finetune",
    "zeroq_quantize",
    "zeroq_report",
]
