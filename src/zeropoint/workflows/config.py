"""Quantization configs: plain frozen dataclasses, per-layer rules, and the common presets.

A `QuantConfig` says how weights and activations are quantized by default, which layer types are
quantized, and an ordered tuple of `LayerRule`s that override the default for layers matched by
name (glob, or a regex prefixed with "re:") or type — the first matching rule wins. Layers named
in ``skip`` stay in float.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from zeropoint.qparams import Scheme

#: Weights: int8, scale-only (Z = 0), restricted range [−127, 127], per output channel.
INT8_WEIGHT = Scheme(bits=8, symmetric=True, narrow=True, axis=0)
#: Activations: uint8, affine (with a zero point), per tensor — ONNX Runtime's U8S8 fast path.
UINT8_ACTIVATION = Scheme(bits=8, signed=False)

QUANTIZABLE: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
)


@dataclass(frozen=True)
class LayerRule:
    """Override for the layers it matches: by ``name`` pattern and/or by ``types``.

    ``weight``/``activation`` replace the config's schemes (None: leave that part in float);
    ``skip=True`` keeps the layer in float entirely.
    """

    name: str | None = None
    types: tuple[type[nn.Module], ...] = ()
    weight: Scheme | None = None
    activation: Scheme | None = None
    skip: bool = False

    def __post_init__(self) -> None:
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"LayerRule.name must be a string pattern or None, got {self.name!r}")
        if not isinstance(self.types, tuple) or not all(
            isinstance(t, type) and issubclass(t, nn.Module) for t in self.types
        ):
            raise TypeError(
                f"LayerRule.types must be a tuple of nn.Module classes, got {self.types!r}"
            )
        if self.name is None and not self.types:
            raise ValueError("a LayerRule needs a name pattern, module types, or both")
        for what in ("weight", "activation"):
            value = getattr(self, what)
            if value is not None and not isinstance(value, Scheme):
                raise TypeError(f"LayerRule.{what} must be a Scheme or None, got {value!r}")
        if not isinstance(self.skip, bool):
            raise TypeError(f"LayerRule.skip must be a bool, got {self.skip!r}")
        if self.name is not None and self.name.startswith("re:"):
            try:
                re.compile(self.name[3:])
            except re.error as err:
                raise ValueError(
                    f"LayerRule.name={self.name!r} is not a valid regex: {err}"
                ) from None

    def matches(self, qualified_name: str, module: nn.Module) -> bool:
        if self.types and not isinstance(module, self.types):
            return False
        if self.name is None:
            return bool(self.types)
        return name_matches(self.name, qualified_name)


def name_matches(pattern: str, qualified_name: str) -> bool:
    """Glob match ("encoder.*.dense"), or regex full match when the pattern starts with "re:"."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], qualified_name) is not None
    return fnmatch.fnmatchcase(qualified_name, pattern)


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.

    weight / activation: default schemes (activation None: weight-only quantization).
    weight_observer / activation_observer: calibration methods (see `zeropoint.observers`).
    dynamic: activations quantized per input at run time (per_token: one scale per token/row).
    learnable: QAT quantizers — None (fake quant with moving-average min-max observers),
        "lsq", "lsq+" or "pact" (PACT for activations, LSQ for weights).
    requantization: how integer layers round their output, in the integer program AND in the
        converted simulation (so that the simulation computes what is deployed): "float32"
        (default; ONNX Runtime's arithmetic, bit for bit), "single" or "double" (fixed-point
        M0·2^−n, TFLite's single rounding or gemmlowp's double rounding).
    first_last_bits: QAT at low widths often keeps the first and last layers at 8 bits; set to 8
        to do that: the weights and output quantizers of the first and last quantized layers and
        the quantizers of the model's inputs (None: every layer at the config's widths).
    seed: the random numbers of stochastic rounding (a scheme with rounding="stochastic", a
        QAT option): each quantizer draws from its own torch.Generator seeded from (seed, its
        name) (`generator_for`), so a run is reproducible and layers draw independent streams.
        Required by stochastic schemes; zeropoint never draws from the global RNG.
    pair_bounded_weights: 8-bit per-channel weights of Linear and convolution layers take codes
        with |q_2j| + |q_2j+1| ≤ 128 along the kernels' reduction order at convert
        (`zeropoint.nn.saturation`): exact on x86 int8 kernels without VNNI, which add pairs of
        u8·s8 products in a saturating int16. `int8_static` sets it where this machine's kernels
        saturate.
    quantize_outputs: False leaves the values the model returns in float: the layers that
        produce them keep their quantized weights and inputs and add their bias to the int32
        accumulator in float, y = S_x·S_w·(Σ (q_x − Z_x)(q_w − Z_w)) + b, as NNCF and TensorRT
        do (logits on an 8-bit grid cost MobileNetV2 several points of top-1, docs/ptq.md).
        True (default): int8 out, what `IntegerProgram.run_int` returns.
    """

    weight: Scheme | None = INT8_WEIGHT
    activation: Scheme | None = UINT8_ACTIVATION
    weight_observer: str = "minmax"
    activation_observer: str = "minmax"
    activation_observer_options: tuple[tuple[str, Any], ...] = ()
    module_types: tuple[type[nn.Module], ...] = QUANTIZABLE
    rules: tuple[LayerRule, ...] = ()
    skip: tuple[str, ...] = ()
    dynamic: bool = False
    per_token: bool = False
    learnable: str | None = None
    first_last_bits: int | None = None
    fold_bn: bool = True
    requantization: str = "float32"
    seed: int | None = None
    pair_bounded_weights: bool = False
    quantize_outputs: bool = True

    def __post_init__(self) -> None:
        from zeropoint.observers.registry import OBSERVERS

        if self.learnable not in (None, "lsq", "lsq+", "pact"):
            raise ValueError(
                f"learnable={self.learnable!r} is unknown: expected None, 'lsq', 'lsq+' or 'pact'"
            )
        if self.requantization not in ("float32", "single", "double"):
            raise ValueError(
                f"requantization={self.requantization!r} is unknown: expected 'float32', "
                "'single' or 'double'"
            )
        for what in ("weight", "activation"):
            value = getattr(self, what)
            if value is not None and not isinstance(value, Scheme):
                raise TypeError(f"QuantConfig.{what} must be a Scheme or None, got {value!r}")
        if self.weight is None and self.activation is None:
            raise ValueError("a config that quantizes neither weights nor activations does nothing")
        for what in ("weight_observer", "activation_observer"):
            if getattr(self, what) not in OBSERVERS:
                raise ValueError(
                    f"QuantConfig.{what}={getattr(self, what)!r} is unknown: expected one of "
                    f"{sorted(OBSERVERS)}"
                )
        for what, kind in (("rules", LayerRule), ("skip", str), ("module_types", type)):
            value = getattr(self, what)
            if not isinstance(value, tuple) or not all(isinstance(v, kind) for v in value):
                raise TypeError(
                    f"QuantConfig.{what} must be a tuple of {kind.__name__}, got {value!r}"
                )
        options = self.activation_observer_options
        if not isinstance(options, tuple) or not all(
            isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], str) for o in options
        ):
            raise TypeError(
                "QuantConfig.activation_observer_options must be a tuple of (name, value) pairs, "
                f"got {options!r}"
            )
        fl = self.first_last_bits
        if fl is not None and (
            isinstance(fl, bool) or not isinstance(fl, int) or not 2 <= fl <= 16
        ):
            raise ValueError(f"QuantConfig.first_last_bits={fl!r}: expected None or 2..16")
        if not isinstance(self.pair_bounded_weights, bool):
            raise TypeError(
                "QuantConfig.pair_bounded_weights must be a bool, got "
                f"{self.pair_bounded_weights!r}"
            )
        if not isinstance(self.quantize_outputs, bool):
            raise TypeError(
                f"QuantConfig.quantize_outputs must be a bool, got {self.quantize_outputs!r}"
            )
        if self.per_token and not self.dynamic:
            raise ValueError("QuantConfig.per_token=True needs dynamic=True (run-time scales)")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"QuantConfig.seed={self.seed!r}: expected None or an int >= 0")
        if self.stochastic and self.seed is None:
            raise ValueError(
                "the config rounds stochastically (a scheme with rounding='stochastic'), which "
                "draws random numbers: give it a seed, QuantConfig(..., seed=0); zeropoint never "
                "draws from the global RNG"
            )

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        """Every scheme the config names (defaults and rules)."""
        found = [self.weight, self.activation]
        for rule in self.rules:
            found += [rule.weight, rule.activation]
        return tuple(s for s in found if s is not None)

    @property
    def stochastic(self) -> bool:
        """Does any scheme of the config round stochastically?"""
        return any(s.rounding == "stochastic" for s in self.schemes)

    def generator_for(self, name: str) -> torch.Generator | None:
        """The generator of the quantizer called ``name`` (a layer's weight, an activation
        edge): seeded with the first 63 bits of SHA-256("seed:name"); None without a seed."""
        if self.seed is None:
            return None
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def deterministic(self) -> QuantConfig:
        """The config rounding to nearest where it rounds stochastically: what a converted
        model runs (stochastic rounding is a training-time option)."""

        def fix(scheme: Scheme | None) -> Scheme | None:
            if scheme is None or scheme.rounding != "stochastic":
                return scheme
            return scheme.with_(rounding="half_even")

        rules = tuple(
            replace(r, weight=fix(r.weight), activation=fix(r.activation)) for r in self.rules
        )
        return replace(self, weight=fix(self.weight), activation=fix(self.activation), rules=rules)

    def with_(self, **changes: Any) -> QuantConfig:
        return replace(self, **changes)

    def resolve(
        self, qualified_name: str, module: nn.Module
    ) -> tuple[Scheme | None, Scheme | None] | None:
        """(weight scheme, activation scheme) for this layer, or None to leave it in float."""
        if any(name_matches(p, qualified_name) for p in self.skip):
            return None
        for rule in self.rules:
            if rule.matches(qualified_name, module):
                return None if rule.skip else (rule.weight, rule.activation)
        if not isinstance(module, self.module_types):
            return None
        return self.weight, self.activation

    def check_names(self, model: nn.Module) -> None:
        """Raise ValueError for a rule or skip pattern that matches no module of ``model``."""
        names = [n for n, _ in model.named_modules() if n]
        patterns = [r.name for r in self.rules if r.name is not None] + list(self.skip)
        for pattern in patterns:
            if not any(name_matches(pattern, n) for n in names):
                raise ValueError(
                    f"the config names layer {pattern!r}, but the model has no such module "
                    f"(it has e.g. {names[:6]})"
                )

    @property
    def observer_options(self) -> dict[str, Any]:
        return dict(self.activation_observer_options)


def int8_dynamic() -> QuantConfig:
    """Linear weights int8 per channel, activations quantized per token at run time; embedding
    tables int8 per row."""
    return QuantConfig(
        activation=Scheme(bits=8, signed=False),
        dynamic=True,
        per_token=True,
        module_types=(nn.Linear, nn.Embedding),
    )


#: Weights in 7 bits, [−63, 63]: 2·255·63 < 2^15, so no pair of u8·s8 products saturates.
INT7_WEIGHT = Scheme(bits=7, symmetric=True, narrow=True, axis=0)


def int8_static(observer: str = "minmax", reduce_range: bool | str = "auto") -> QuantConfig:
    """Weights int8 symmetric per channel, activations uint8 affine per tensor, calibrated.

    ``reduce_range``: x86 int8 kernels without VNNI (ONNX Runtime's U8S8 GEMM and convolution,
    fbgemm) add pairs of u8·s8 products in a saturating int16 (``vpmaddubsw``), so arbitrary
    int8 weights can give wrong results there (on the digits CNN, ONNX Runtime's outputs agree
    with the exact arithmetic on only 17 % of logits). "auto" (default): where this machine's
    kernels saturate (probed once), 8-bit weights whose consecutive pairs are bounded,
    |q_2j| + |q_2j+1| ≤ 128 (`QuantConfig.pair_bounded_weights`, exact there at almost no
    cost), elsewhere plain 8-bit weights; True: 7-bit weights [−63, 63], exact on every x86 CPU
    (torch.ao's and ONNX Runtime's ``reduce_range``: MobileNetV2 loses most of its agreement with
    fp32 this way); False: plain 8-bit weights, exact where the CPU has VNNI (and always in
    zeropoint's own integer engine)."""
    pairs = False
    if reduce_range == "auto":
        from zeropoint.nn.dynamic import fbgemm_saturates

        reduce_range, pairs = False, fbgemm_saturates()
    if not isinstance(reduce_range, bool):
        raise ValueError(f"reduce_range={reduce_range!r}: expected True, False or 'auto'")
    weight = INT7_WEIGHT if reduce_range else INT8_WEIGHT
    return QuantConfig(weight=weight, activation_observer=observer, pair_bounded_weights=pairs)


def int4_weight_only(group_size: int = 32) -> QuantConfig:
    """Weights int4 symmetric in groups of ``group_size`` along the input dimension (embedding
    rows likewise); float activations (the weight-loading bottleneck of transformers)."""
    return QuantConfig(
        weight=Scheme(bits=4, symmetric=True, group_size=group_size),
        activation=None,
        module_types=(nn.Linear, nn.Embedding),
    )


def w4a4_qat(learnable: str | None = "lsq") -> QuantConfig:
    return _low_bit_qat(4, learnable)


def w2a2_qat(learnable: str | None = "lsq") -> QuantConfig:
    return _low_bit_qat(2, learnable)


def w3a3_qat(learnable: str | None = "lsq") -> QuantConfig:
    return _low_bit_qat(3, learnable)


def _low_bit_qat(bits: int, learnable: str | None) -> QuantConfig:
    """b-bit weights (scale-only, full signed range [−2^(b−1), 2^(b−1) − 1] as in LSQ, per
    channel) and activations (affine per tensor); the first and last layers stay at 8 bits, as
    is usual in the low-bit QAT literature."""
    return QuantConfig(
        weight=Scheme(bits=bits, symmetric=True, axis=0),
        activation=Scheme(bits=bits, signed=False),
        activation_observer="moving_average",
        learnable=learnable,
        first_last_bits=8,
    )


def float_static(float_format: str = "e4m3fn", observer: str = "minmax") -> QuantConfig:
    """Scaled float weights and activations, as fp8 serving stacks run them: weights per output
    channel, activations per tensor, both r̂ = S·fp(r/S) with S = amax / max_f (Z = 0);
    ``float_format`` "e4m3fn" or "e5m2" (fp8) or "e2m1" (fp4). Simulated and exported to ONNX;
    the integer engine has no float arithmetic (`zp.to_integer` refuses)."""
    from zeropoint.qparams import FLOAT_SCHEME_FORMATS

    if float_format not in FLOAT_SCHEME_FORMATS:
        raise ValueError(
            f"float_format={float_format!r} is unknown: expected one of "
            f"{tuple(FLOAT_SCHEME_FORMATS)}"
        )
    bits = FLOAT_SCHEME_FORMATS[float_format].bits
    return QuantConfig(
        weight=Scheme(bits=bits, float_format=float_format, axis=0),
        activation=Scheme(bits=bits, float_format=float_format),
        activation_observer=observer,
    )


PRESETS: dict[str, Callable[[], QuantConfig]] = {
    "int8_dynamic": int8_dynamic,
    "int8_static": int8_static,
    "int4_weight_only": int4_weight_only,
    "w4a4_qat": w4a4_qat,
    "w3a3_qat": w3a3_qat,
    "w2a2_qat": w2a2_qat,
    "fp8_static": float_static,
}

WORKFLOW_DEFAULTS: dict[str, Callable[[], QuantConfig]] = {
    "static": int8_static,
    "qat": w4a4_qat,
    "dynamic": int8_dynamic,
}


def resolve_config(config: QuantConfig | str | None, workflow: str) -> QuantConfig:
    """The config a workflow runs: ``config`` itself, a preset given by name ("int8_static"),
    or the workflow's default (None). A config meant for another workflow is refused:

    * static PTQ (``quantize_static``/``prepare``): not dynamic, activations quantized, not
      learnable (QAT quantizers are trained: ``prepare_qat``);
    * QAT (``prepare_qat``): not dynamic;
    * dynamic (``quantize_dynamic``): dynamic, or weight-only (activation=None); not learnable.
    """
    entry = {"static": "quantize_static", "qat": "prepare_qat", "dynamic": "quantize_dynamic"}
    if workflow not in entry:
        raise ValueError(f"unknown workflow {workflow!r}: expected one of {list(entry)}")
    if config is None:
        return WORKFLOW_DEFAULTS[workflow]()
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(
                f"unknown preset {config!r}: expected a QuantConfig or one of {sorted(PRESETS)}"
            )
        config = PRESETS[config]()
    if not isinstance(config, QuantConfig):
        raise TypeError(
            f"{entry[workflow]} needs a QuantConfig or a preset name, got {type(config).__name__}"
        )
    problem = ""
    if workflow != "dynamic" and config.dynamic:
        problem = "is dynamic (activations quantized at run time): use zp.quantize_dynamic"
    elif workflow == "static" and config.activation is None:
        problem = "is weight-only (activation=None): use zp.quantize_dynamic"
    elif workflow == "dynamic" and any(s.float_format for s in config.schemes):
        problem = (
            "has float-format schemes (fp8 / fp4), which the dynamic and weight-only int8 / "
            "int4 kernels cannot run: use zp.quantize_static with zp.float_static(...), or "
            "fp8 / fp4 weight-only layers (zeropoint.nn.codebook_weights.quantize_weights)"
        )
    elif workflow in ("static", "dynamic") and config.stochastic:
        problem = (
            "rounds stochastically (rounding='stochastic'), a training-time option: use "
            "zp.prepare_qat, or config.deterministic() (round to nearest) for post-training "
            "quantization"
        )
    elif workflow in ("static", "dynamic") and config.learnable is not None:
        problem = (
            f"has learnable={config.learnable!r}, a QAT setting: use zp.prepare_qat, or "
            "config.with_(learnable=None) for post-training quantization"
        )
    elif workflow == "dynamic" and not config.dynamic and config.activation is not None:
        problem = (
            "is static (calibrated activations): use zp.quantize_static; quantize_dynamic needs "
            "a dynamic config (e.g. zp.int8_dynamic()) or a weight-only one (activation=None, "
            "e.g. zp.int4_weight_only())"
        )
    if problem:
        raise ValueError(f"{entry[workflow]}: the config {_config_name(config)} {problem}")
    return config


def _config_name(config: QuantConfig) -> str:
    for name, make in PRESETS.items():
        try:
            if make() == config:
                return f"({name})"
        except TypeError:
            continue
    return f"(dynamic={config.dynamic}, activation={config.activation}, learnable={config.learnable!r})"


__all__ = [
    "INT8_WEIGHT",
    "PRESETS",
    "UINT8_ACTIVATION",
    "WORKFLOW_DEFAULTS",
    "LayerRule",
    "QuantConfig",
    "float_static",
    "int4_weight_only",
    "int8_dynamic",
    "int8_static",
    "resolve_config",
    "w2a2_qat",
    "w3a3_qat",
    "w4a4_qat",
]
