"""Mixed precision: per-layer bit widths that keep the model's metric best under a budget.

    result = zp.mixed_precision(model, calib_batches, avg_weight_bits=4)
    result.config            # a QuantConfig: one LayerRule per layer, in graph order — edit it
    model_q = zp.quantize_static(model, calib_batches, result.config)

1. Sensitivity: for every candidate width pair (w, a) — weights in ``weight_bits``, the layer's
   output activation in ``activation_bits`` — the model is quantized uniformly at (w, a) and each
   layer's unit (its weight and output quantizers) is switched on *alone*; the metric's drop
   from the float model is d_l(w, a) (`zeropoint.analysis.sensitivity`: exact, or the fast
   Fisher estimate). Keeping a layer in float (``allow_float``) has d = 0.
2. Search: drops are taken to add up over layers (the assumption of HAWQ and of AIMET's
   per-layer analysis, second-order accurate for small perturbations), so the best assignment
   is a multiple-choice knapsack (`zeropoint.mixed.knapsack`):

       minimise Σ_l d_l(w_l, a_l)   subject to   Σ_l n_l·w_l / 8 + fixed ≤ model bytes
                                     (or Σ n_l·w_l / Σ n_l ≤ average weight bits,
                                     or Σ_l (n_l·w_l + m_l·a_l) / 8 + fixed ≤ bytes per sample),

   or, for a maximum drop D: minimise the model bytes subject to Σ_l d_l ≤ D (the drops in
   the metric's units: use exact sensitivities). The budget holds exactly for the chosen widths.

Model bytes count the weights at their width with ideal packing (n·w/8; the integer engine and
the ONNX export store weights of up to 8 bits in int8, and checkpoints pack 4 bits and below in
nibbles or crumbs), plus 4 bytes for every other parameter and every per-channel scale. Activation
widths do not change model bytes — under the first two budgets the widest activation candidate
is always the best choice. *Bytes per sample* is the memory traffic of one inference: the model
bytes (every weight read once) plus every searched layer's output written once at its width
(m_l values per sample, measured on the first batch; the activations of operations that are not
layers are not counted): there narrower activations buy room. The default candidates are (8,),
what the integer engine runs;
16-bit activations run in the simulation and ONNX Runtime only, not in the integer engine.
Operations that are not layers (the model's input, additions, averages) keep the base config's
activation width; their drops are measured once and added to the prediction.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zeropoint.analysis.metrics import Metric, resolve_metric
from zeropoint.analysis.sensitivity import (
    Batch,
    ExactSensitivity,
    find_units_cached,
    fisher_estimates,
)
from zeropoint.analysis.units import (
    find_units,
    first_tensor,
    float_weights,
    labels_of,
    output_tensor,
)
from zeropoint.mixed.knapsack import solve
from zeropoint.nn.modules import QuantMixin
from zeropoint.workflows.config import LayerRule, QuantConfig, int8_static

Width = int | None  # None: float


@dataclass(frozen=True)
class Budget:
    """Exactly one of: total model bytes, average weight bits over the searched layers, the
    largest predicted drop of the metric (then the smallest model is chosen), or the bytes one
    inference moves (model bytes + the searched layers' outputs at their widths)."""

    model_bytes: float | None = None
    avg_weight_bits: float | None = None
    max_drop: float | None = None
    bytes_per_sample: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one budget: model_bytes, avg_weight_bits, max_drop or "
                f"bytes_per_sample (got {given or 'none'})"
            )
        value = getattr(self, given[0])
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"budget {given[0]}={value!r}: expected a non-negative number")

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)


KINDS = ("model_bytes", "avg_weight_bits", "max_drop", "bytes_per_sample")


@dataclass
class LayerChoice:
    """The widths chosen for one layer (None: float), its weight count and predicted drop."""

    name: str
    weight_bits: Width
    activation_bits: Width
    parameters: int
    drop: float

    @property
    def weight_bytes(self) -> float:
        return self.parameters * (32 if self.weight_bits is None else self.weight_bits) / 8


@dataclass
class MixedPrecisionResult:
    """The chosen config and what the search predicted for it."""

    config: QuantConfig
    choices: list[LayerChoice]
    budget: Budget
    metric: str
    predicted_drop: float
    model_bytes: float
    avg_weight_bits: float
    fixed_bytes: float
    sensitivity: dict[tuple[Width, Width], dict[str, float]] = field(default_factory=dict)
    other_drop: float = 0.0
    wall_s: dict[str, float] = field(default_factory=dict)
    activation_bytes: float = 0.0  # the searched layers' outputs per sample at their widths

    @property
    def bytes_per_sample(self) -> float:
        """Model bytes plus the searched layers' outputs of one sample at their widths."""
        return self.model_bytes + self.activation_bytes

    def rules_source(self) -> str:
        """The config's layer rules as Python source to paste and edit: it defines ``W`` and
        ``A`` (the base config's weight and activation schemes) and ``rules``, one
        `LayerRule` per searched layer; ``config.with_(rules=rules + config.rules)`` with the
        base config is `config` again (needs ``import zeropoint as zp``)."""
        weight, activation = self.config.weight, self.config.activation
        lines = [f"W = zp.{weight!r}", f"A = zp.{activation!r}", "rules = ("]
        for c, rule in zip(self.choices, self.config.rules, strict=False):
            if c.weight_bits is None:
                lines.append(f"    zp.LayerRule(name={rule.name!r}, skip=True),")
            else:
                lines.append(
                    f"    zp.LayerRule(name={rule.name!r}, weight=W.with_(bits={c.weight_bits}), "
                    f"activation=A.with_(bits={c.activation_bits})),"
                )
        lines.append(")")
        return "\n".join(lines)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"layer": c.name, "weight bits": c.weight_bits or "float",
             "activation bits": c.activation_bits or "float", "params": c.parameters,
             "predicted drop": c.drop}
            for c in self.choices
        ]  # fmt: skip


def total_bytes(choices: Sequence[LayerChoice], fixed_bytes: float) -> float:
    """Σ n_l·w_l / 8 over the searched layers (float: 32 bits) plus the fixed part."""
    return fixed_bytes + sum(c.weight_bytes for c in choices)


def _fixed_bytes(model_q: nn.Module, searched: dict[str, QuantMixin]) -> float:
    """4 bytes for every parameter not searched and every per-channel scale of a searched
    layer."""
    searched_weights = {id(layer.float_weight) for layer in searched.values()}
    rest = sum(p.numel() for p in model_q.parameters() if id(p) not in searched_weights)
    scales = sum(int(layer.float_weight.shape[0]) for layer in searched.values())
    return 4.0 * (rest + scales)


def _batches(data: Iterable[Any], model: nn.Module, limit: int | None) -> list[Batch]:
    out: list[Batch] = []
    for item in data:
        if limit is not None and len(out) >= limit:
            break
        x = first_tensor(item)
        with torch.no_grad():
            out.append(Batch(x, labels_of(item), output_tensor(model(x)).detach()))
    if not out:
        raise ValueError("mixed precision needs at least one batch of data")
    return out


def _candidate_config(base: QuantConfig, w: int, a: int) -> QuantConfig:
    assert base.weight is not None and base.activation is not None
    return base.with_(weight=base.weight.with_(bits=w), activation=base.activation.with_(bits=a))


def _check_widths(weight_bits: Sequence[int], activation_bits: Sequence[int]) -> None:
    for what, widths, lo, hi in (("weight_bits", weight_bits, 2, 8),
                                 ("activation_bits", activation_bits, 2, 16)):  # fmt: skip
        if not widths or any(isinstance(b, bool) or not isinstance(b, int) for b in widths):
            raise ValueError(f"{what} must be a non-empty sequence of integers, got {widths!r}")
        if any(not lo <= b <= hi for b in widths):
            raise ValueError(f"{what}={tuple(widths)}: every width must lie in [{lo}, {hi}]")


@dataclass
class SensitivityTable:
    """Step 1 of the search, reusable for any number of budgets (`choose`): the drop of every
    searched layer at every candidate width pair, and what the budget arithmetic needs.
    ``variants``: the candidate models, quantized uniformly at each width pair (uniform
    round-to-nearest models, ready to evaluate)."""

    base: QuantConfig
    weight_bits: tuple[int, ...]
    activation_bits: tuple[int, ...]
    allow_float: bool
    metric: str
    drops: dict[tuple[Width, Width], dict[str, float]]
    parameters: dict[str, int]
    fixed_bytes: float
    other_drop: float
    variants: dict[tuple[int, int], nn.Module] = field(default_factory=dict)
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the drops could not separate
    outputs: dict[str, int] = field(default_factory=dict)  # output values per sample, by layer

    def uniform_bytes(self, weight_bits: int) -> float:
        """Model bytes of every searched layer at ``weight_bits``."""
        return self.fixed_bytes + sum(self.parameters.values()) * weight_bits / 8

    def choose(self, budget: Budget) -> MixedPrecisionResult:
        """Step 2: the widths that minimise the predicted drop under ``budget``."""
        t0 = time.perf_counter()
        names = list(self.parameters)
        requested = [(w, a) for w in self.weight_bits for a in self.activation_bits]
        options: list[tuple[Width, Width]] = [*requested] + (
            [(None, None)] if self.allow_float else []
        )
        params, fixed = self.parameters, self.fixed_bytes
        value = [[0.0 if o == (None, None) else self.drops[o][n] for o in options] for n in names]
        bits = [[float(params[n] * (32 if o[0] is None else o[0])) for o in options]
                for n in names]  # fmt: skip
        moved = [[float(self.outputs.get(n, 0) * (32 if o[1] is None else o[1])) for o in options]
                 for n in names]  # fmt: skip
        if budget.kind == "bytes_per_sample":  # weights read and outputs written, in bits
            bits = [[w + a for w, a in zip(bw, ba, strict=True)]
                    for bw, ba in zip(bits, moved, strict=True)]  # fmt: skip
        total_params = sum(params.values())
        if budget.kind == "max_drop":
            assert budget.max_drop is not None
            if self.metric.endswith("(Fisher estimate)"):
                raise ValueError(
                    "a max_drop budget needs drops in the metric's units: sensitivity='exact'"
                )
            capacity = budget.max_drop - self.other_drop
            if capacity < 0:
                raise ValueError(
                    f"max_drop={budget.max_drop:.4g} is below the drop of the operations that "
                    f"are not layers ({self.other_drop:.4g}): no choice of layer widths fits"
                )
            pick = solve(bits, [[max(v, 0.0) for v in row] for row in value], capacity)
        else:
            if budget.kind == "model_bytes":
                assert budget.model_bytes is not None
                capacity = 8.0 * (budget.model_bytes - fixed)
            elif budget.kind == "bytes_per_sample":
                assert budget.bytes_per_sample is not None
                capacity = 8.0 * (budget.bytes_per_sample - fixed)
            else:
                assert budget.avg_weight_bits is not None
                capacity = budget.avg_weight_bits * total_params
            try:
                pick = solve(value, bits, max(capacity, 0.0))
            except ValueError:
                least = fixed + sum(min(r) for r in bits) / 8
                raise ValueError(
                    f"the budget {budget.kind}={getattr(budget, budget.kind)} is below the "
                    f"smallest model the candidate widths give ({least:.0f} bytes, "
                    f"{min(self.weight_bits)}-bit weights everywhere"
                    + (f", {min(self.activation_bits)}-bit outputs"
                       if budget.kind == "bytes_per_sample" else "") + ")"
                ) from None  # fmt: skip
        choices = [
            LayerChoice(n, options[c][0], options[c][1], params[n], value[i][c])
            for i, (n, c) in enumerate(zip(names, pick, strict=True))
        ]
        config = self.base.with_(rules=tuple(_rule(self.base, c) for c in choices)
                                 + self.base.rules)  # fmt: skip
        result = MixedPrecisionResult(
            config, choices, budget, self.metric, sum(c.drop for c in choices) + self.other_drop,
            total_bytes(choices, fixed), sum(c.weight_bytes for c in choices) * 8 / total_params,
            fixed, self.drops, self.other_drop,
        )  # fmt: skip
        result.activation_bytes = sum(
            self.outputs.get(c.name, 0) * (32 if c.activation_bits is None else c.activation_bits)
            for c in choices) / 8  # fmt: skip
        result.wall_s = {"sensitivity": self.wall_s, "search": time.perf_counter() - t0}
        return result


def measure_sensitivities(
    model: nn.Module,
    calib_data: Iterable[Any],
    *,
    data: Iterable[Any] | None = None,
    base: QuantConfig | None = None,
    weight_bits: Sequence[int] = (2, 3, 4, 8),
    activation_bits: Sequence[int] = (8,),
    allow_float: bool = False,
    metric: str | Metric | None = None,
    sensitivity: str = "exact",
    max_batches: int | None = None,
    fisher_samples: int = 4,
    progress: bool = True,
    variants: dict[tuple[int, int], nn.Module] | None = None,
) -> SensitivityTable:
    """Step 1 of `mixed_precision` (same arguments): a `SensitivityTable`.

    ``variants``: the candidate models, one per (weight, activation) width pair — every pair
    of ``weight_bits`` × ``activation_bits`` and (max(weight_bits), base activation width) —
    already quantized by the caller, e.g. by AdaRound at each width, so that the drops are
    those of the weights the model will have (default: round-to-nearest `quantize_static`
    with ``base`` at each width). They must come from ``model`` with the same layers."""

    t_start = time.perf_counter()
    if sensitivity not in ("exact", "fast"):
        raise ValueError(f"sensitivity={sensitivity!r}: expected 'exact' or 'fast'")
    _check_widths(weight_bits, activation_bits)
    base = base if base is not None else int8_static(reduce_range=False)
    if base.weight is None or base.activation is None or base.dynamic:
        raise ValueError(
            "mixed precision varies a static config with weight and activation schemes"
        )
    if base.first_last_bits is not None:
        raise ValueError(
            "base.first_last_bits fixes widths the search would choose: set it to None"
        )
    calib = list(calib_data)
    pairs = [(w, a) for w in weight_bits for a in activation_bits]
    # the operations that are not layers keep the base activation width: measured at it
    base_pair = (max(weight_bits), base.activation.bits)
    if base_pair not in pairs:
        pairs.append(base_pair)
    if variants is not None:
        missing = [p for p in pairs if p not in variants]
        if missing:
            raise ValueError(
                f"variants lacks the candidate models of the width pairs {missing} "
                "((weight, activation) bits): give one per pair searched"
            )
        variants = {p: variants[p] for p in pairs}
    else:
        variants = _round_to_nearest_variants(model, calib, base, pairs, progress)
    reference = variants[base_pair]
    units = find_units_cached(reference)
    searched = {u.name: u.layer for u in units if u.layer is not None and u.weight is not None}
    batches = _batches(data if data is not None else calib, model, max_batches)
    m = resolve_metric(metric, all(b.labels is not None for b in batches))
    names = list(searched)
    drops: dict[tuple[Width, Width], dict[str, float]] = {}
    others = [u.name for u in units if u.name not in searched]
    steps = (len(pairs) * len(names) + len(others)) * len(batches) if sensitivity == "exact" else (
        len(batches))  # fmt: skip
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        # candidates whose weights lie on their grid (AdaRound's, pair-bounded, loaded) compute
        # with the float model's weights while off (`zeropoint.analysis.units.float_weights`)
        for pair, variant in variants.items():
            found = stack.enter_context(float_weights(
                variant, model, find_units(variant), batches[0].x, batches[0].reference))  # fmt: skip
            notes += [f"candidate {pair}: {n}" for n in found]
        bar = _progress(progress, steps, "mixed precision: sensitivities", "step")
        step = None if bar is None else (lambda _name, n: bar.update(n))
        if sensitivity == "exact":
            probe = ExactSensitivity(reference, units, batches, m)
            for pair, variant in variants.items():
                drops[pair] = probe.one_at_a_time(names, variant=variant, all_but=False,
                                                  progress=step)[0]  # fmt: skip
            other_drop = sum(
                probe.one_at_a_time(others, variant=variants[base_pair], all_but=False,
                                    progress=step)[0].values()
            ) if others else 0.0  # fmt: skip
        else:
            est = fisher_estimates(reference, batches, variants=variants, names=names + others,  # type: ignore[arg-type]
                                   samples=fisher_samples, progress=step,
                                   likelihood="categorical" if m.name != "cosine" else "gaussian")  # fmt: skip
            drops = {pair: {n: est[pair][n] for n in names} for pair in variants}  # type: ignore[index]
            other_drop = sum(est[base_pair][n] for n in others)  # type: ignore[index]
    if bar is not None:
        bar.close()
    params = {n: searched[n].float_weight.numel() for n in names}  # type: ignore[union-attr]
    outputs = _outputs_per_sample(reference, searched, batches[0].x)
    return SensitivityTable(
        base, tuple(weight_bits), tuple(activation_bits), allow_float,
        m.name + (" (Fisher estimate)" if sensitivity == "fast" else ""), drops, params,
        _fixed_bytes(reference, searched), other_drop, variants, time.perf_counter() - t_start,
        notes, outputs,
    )  # fmt: skip


def _outputs_per_sample(
    model: nn.Module, layers: dict[str, Any], x: torch.Tensor
) -> dict[str, int]:
    """Output values per sample of each layer (its output's size on ``x`` over the batch)."""
    sizes: dict[str, int] = {}
    from zeropoint.ptq.layer_io import run_hooked

    hooks = [layer.register_forward_hook(
        lambda _m, _i, out, name=name: sizes.__setitem__(name, out.numel() // x.shape[0]))
        for name, layer in layers.items()]  # fmt: skip
    run_hooked(model, x, hooks)
    return sizes


def _round_to_nearest_variants(
    model: nn.Module,
    calib: list[Any],
    base: QuantConfig,
    pairs: list[tuple[int, int]],
    progress: bool,
) -> dict[tuple[int, int], nn.Module]:
    from zeropoint.workflows.static import quantize_static

    bar = _progress(progress, len(pairs), "mixed precision: candidate models", "model")
    variants: dict[tuple[int, int], nn.Module] = {}
    for w, a in pairs:
        variants[(w, a)] = quantize_static(model, calib, _candidate_config(base, w, a),
                                           progress=False)  # fmt: skip
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return variants


def mixed_precision(
    model: nn.Module,
    calib_data: Iterable[Any],
    budget: Budget | None = None,
    *,
    model_bytes: float | None = None,
    avg_weight_bits: float | None = None,
    max_drop: float | None = None,
    bytes_per_sample: float | None = None,
    sensitivities: SensitivityTable | None = None,
    **options: Any,
) -> MixedPrecisionResult:
    """Per-layer widths for ``model`` under a budget (see the module docstring): give exactly
    one of ``budget``, ``model_bytes``, ``avg_weight_bits``, ``max_drop`` or
    ``bytes_per_sample``.

    Options (passed to `measure_sensitivities`): ``data`` — the batches the sensitivities are
    measured on (default: ``calib_data``; each candidate model is calibrated on
    ``calib_data``); ``base`` — the config whose schemes are varied (default
    ``int8_static(reduce_range=False)``: 8-bit weights are 8-bit); ``weight_bits``,
    ``activation_bits``, ``allow_float`` — the candidates; ``metric``; ``sensitivity`` —
    "exact" (one unit at a time) or "fast" (Fisher estimate; its drops are not in the metric's
    units, so not with ``max_drop``); ``max_batches``, ``fisher_samples``, ``progress``.
    ``sensitivities``: a table measured before (another budget, same model): reused."""
    if budget is None:
        budget = Budget(model_bytes, avg_weight_bits, max_drop, bytes_per_sample)
    elif any(v is not None for v in (model_bytes, avg_weight_bits, max_drop, bytes_per_sample)):
        raise ValueError("give the budget either as a Budget or as one keyword, not both")
    if options.get("sensitivity") == "fast" and budget.kind == "max_drop":
        raise ValueError("a max_drop budget needs drops in the metric's units: sensitivity='exact'")
    table = sensitivities or measure_sensitivities(model, calib_data, **options)
    return table.choose(budget)


def _rule(base: QuantConfig, c: LayerChoice) -> LayerRule:
    name = re.sub(r"([*?\[\]])", r"[\1]", c.name)  # a glob that matches only this name
    if c.weight_bits is None:
        return LayerRule(name=name, skip=True)
    assert base.weight is not None and base.activation is not None and c.activation_bits
    return LayerRule(name=name, weight=base.weight.with_(bits=c.weight_bits),
                     activation=base.activation.with_(bits=c.activation_bits))  # fmt: skip


def _progress(progress: bool, total: int, desc: str, unit: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


__all__ = [
    "Budget",
    "LayerChoice",
    "MixedPrecisionResult",
    "SensitivityTable",
    "measure_sensitivities",
    "mixed_precision",
    "total_bytes",
]
