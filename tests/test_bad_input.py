"""Bad input through the public API: each case asserts the exception type AND that the message
names the offending value or key (a regex on the message), or — where the input is legal — the
correct result against a closed form.

Covered: Scheme, QParams, qparams_from_range, calibrate, quantize / dequantize / fake_quantize,
QTensor and packing, formats, observers, non-uniform quantizers, configs / presets / rules,
quantize_static / prepare / calibrate_model / convert, prepare_qat and the learnable quantizers,
quantize_dynamic. (Integer programs, ONNX export and checkpoints have their own suites.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import zeropoint as zp
from zeropoint.formats import FP8_E4M3, FixedPoint, FloatFormat, IntFormat, ieee754_fields
from zeropoint.nn import LSQ, PACT, FakeQuant, LSQPlus
from zeropoint.nonuniform import (
    BinaryCodeQuantizer,
    KMeansCodebook,
    LogQuantizer,
    RuleCodebook,
    codebook_from_levels,
)
from zeropoint.observers import (
    ACIQ,
    MSE,
    Entropy,
    Histogram,
    MinMax,
    MovingAverageMinMax,
    Percentile,
    make_observer,
)
from zeropoint.qparams import QParams, Scheme, qparams_from_range
from zeropoint.qtensor import QTensor, pack, unpack
from zeropoint.workflows.config import LayerRule, QuantConfig

S8 = Scheme()
QP = QParams(torch.tensor(0.1), torch.tensor(0), S8)
X = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))


def _nan() -> torch.Tensor:
    x = X.clone()
    x[2, 3] = math.nan
    return x


def _inf() -> torch.Tensor:
    x = X.clone()
    x[1, 7] = -math.inf
    return x


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def tiny() -> Tiny:
    return Tiny().eval()


def prepared() -> nn.Module:
    return zp.prepare(tiny())


def _observed(obs: Any, x: torch.Tensor) -> Any:
    obs.update(x)
    return obs


def _qat_lsq_per_channel() -> None:
    q = LSQ(Scheme(bits=4, symmetric=True, axis=0), 4, signed=True, weight=True)
    q(torch.randn(3, 5))


# (id, call, exception type, regex the message must match: it names the value or key)
CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # ---------------------------------------------------------------- Scheme
    ("scheme-bits-0", lambda: Scheme(bits=0), ValueError, r"bits=0"),
    ("scheme-bits-17", lambda: Scheme(bits=17), ValueError, r"bits=17"),
    ("scheme-bits-float", lambda: Scheme(bits=8.0), TypeError, r"bits must be an int, got float"),  # type: ignore[arg-type]
    ("scheme-bits-bool", lambda: Scheme(bits=True), TypeError, r"got bool"),
    ("scheme-rounding", lambda: Scheme(rounding="nearest"), ValueError, r"'nearest'"),
    ("scheme-axis-str", lambda: Scheme(axis="0"), TypeError, r"axis.*'0'"),  # type: ignore[arg-type]
    ("scheme-group-0", lambda: Scheme(group_size=0), ValueError, r"group_size=0"),
    ("scheme-group-float", lambda: Scheme(group_size=2.5), ValueError, r"group_size=2.5"),  # type: ignore[arg-type]
    ("scheme-signed-str", lambda: Scheme(signed="yes"), TypeError, r"signed.*'yes'"),  # type: ignore[arg-type]
    ("scheme-symmetric-int", lambda: Scheme(symmetric=1), TypeError, r"symmetric.*1"),  # type: ignore[arg-type]
    ("scheme-1-bit-signed", lambda: Scheme(bits=1), ValueError, r"bits=1, signed=True"),
    ("scheme-uint32", lambda: Scheme(bits=32, signed=False), ValueError, r"bits=32, signed=False"),
    (
        "scheme-one-level",
        lambda: Scheme(bits=1, signed=False, narrow=True),
        ValueError,
        r"fewer than two levels \[0, 0\]",
    ),
    ("scheme-with-unknown-key", lambda: S8.with_(bitz=4), TypeError, r"'bitz'"),
    # ---------------------------------------------------------------- QParams
    (
        "qparams-scale-0",
        lambda: QParams(torch.tensor(0.0), torch.tensor(0)),
        ValueError,
        r"first: 0.0",
    ),
    (
        "qparams-scale-neg",
        lambda: QParams(torch.tensor(-2.0), torch.tensor(0)),
        ValueError,
        r"first: -2.0",
    ),
    (
        "qparams-scale-nan",
        lambda: QParams(torch.tensor(math.nan), torch.tensor(0)),
        ValueError,
        r"first: nan",
    ),
    (
        "qparams-zp-range",
        lambda: QParams(torch.tensor(0.1), torch.tensor(200)),
        ValueError,
        r"zero point 200",
    ),
    (
        "qparams-zp-fraction",
        lambda: QParams(torch.tensor(0.1), torch.tensor(0.5)),
        ValueError,
        r"0.5",
    ),
    (
        "qparams-shapes",
        lambda: QParams(torch.ones(3), torch.zeros(2), Scheme(axis=0), 0),
        ValueError,
        r"\(3,\).*\(2,\)",
    ),
    (
        "qparams-per-tensor-3",
        lambda: QParams(torch.ones(3), torch.zeros(3)),
        ValueError,
        r"shape \(3,\)",
    ),
    (
        "qparams-per-channel-2d",
        lambda: QParams(torch.ones(2, 2), torch.zeros(2, 2), Scheme(axis=0), 0),
        ValueError,
        r"1-D scale, got shape \(2, 2\)",
    ),
    (
        "qparams-no-axis",
        lambda: QParams(torch.ones(3), torch.zeros(3), Scheme(axis=0)),
        ValueError,
        r"int8 asym per-channel\(axis=0\) needs the resolved axis",
    ),
    (
        "qparams-scheme-str",
        lambda: QParams(torch.tensor(0.1), torch.tensor(0), "int8"),
        TypeError,
        r"got str",
    ),  # type: ignore[arg-type]
    ("qparams-scale-str", lambda: QParams("0.1", torch.tensor(0)), TypeError, r"scale.*got str"),  # type: ignore[arg-type]
    (
        "qparams-axis-float",
        lambda: QParams(torch.ones(3), torch.zeros(3), Scheme(axis=0), 1.5),
        TypeError,
        r"1.5",
    ),  # type: ignore[arg-type]
    (
        "qparams-group-axis-5",
        lambda: QParams(torch.ones(2, 2), torch.zeros(2, 2), Scheme(group_size=2), 5),
        ValueError,
        r"axis=5",
    ),
    # ---------------------------------------------------------------- qparams_from_range
    ("range-reversed", lambda: qparams_from_range(2.0, 1.0, S8), ValueError, r"\[2.0.*1.0\]"),
    (
        "range-nan",
        lambda: qparams_from_range(math.nan, 1.0, S8),
        ValueError,
        r"lower bound contains 1 NaN",
    ),
    (
        "range-inf",
        lambda: qparams_from_range(0.0, math.inf, S8),
        ValueError,
        r"upper bound contains 0 NaN and 1 Inf",
    ),
    (
        "range-shapes",
        lambda: qparams_from_range(torch.zeros(3), torch.ones(2), Scheme(axis=0)),
        ValueError,
        r"\(3,\).*\(2,\)",
    ),
    (
        "range-negative-axis",
        lambda: qparams_from_range(torch.zeros(3), torch.ones(3), Scheme(axis=-1)),
        ValueError,
        r"axis=-1.*pass x_shape",
    ),
    # ---------------------------------------------------------------- calibrate
    ("calibrate-list", lambda: zp.calibrate([1.0, 2.0], S8), TypeError, r"got list"),  # type: ignore[arg-type]
    ("calibrate-int", lambda: zp.calibrate(torch.arange(4), S8), TypeError, r"torch.int64"),
    ("calibrate-empty", lambda: zp.calibrate(torch.empty(0, 3), S8), ValueError, r"shape \(0, 3\)"),
    ("calibrate-nan", lambda: zp.calibrate(_nan(), S8), ValueError, r"first at index \(2, 3\)"),
    ("calibrate-method", lambda: zp.calibrate(X, S8, method="kl"), ValueError, r"'kl'.*'entropy'"),
    (
        "calibrate-axis",
        lambda: zp.calibrate(X, Scheme(axis=2)),
        ValueError,
        r"axis 2 is out of range",
    ),
    (
        "calibrate-group",
        lambda: zp.calibrate(X, Scheme(group_size=3)),
        ValueError,
        r"group_size=3.*size 10",
    ),
    ("calibrate-scheme-str", lambda: zp.calibrate(X, "int8"), TypeError, r"got str"),  # type: ignore[arg-type]
    (
        "calibrate-percentile",
        lambda: zp.calibrate(X, S8, "percentile", percentile=101),
        ValueError,
        r"percentile=101",
    ),
    ("calibrate-option", lambda: zp.calibrate(X, S8, "minmax", bins=10), TypeError, r"'bins'"),
    (
        "calibrate-0d-axis",
        lambda: zp.calibrate(torch.tensor(1.0), Scheme(axis=0)),
        ValueError,
        r"0-d tensor",
    ),
    # ---------------------------------------------------------------- quantize / dequantize
    ("quantize-list", lambda: zp.quantize([0.1], QP), TypeError, r"got list"),  # type: ignore[arg-type]
    ("quantize-int", lambda: zp.quantize(torch.arange(3), QP), TypeError, r"torch.int64"),
    ("quantize-qparams-str", lambda: zp.quantize(X, "qp"), TypeError, r"needs QParams, got str"),  # type: ignore[arg-type]
    (
        "quantize-nan",
        lambda: zp.quantize(_nan(), QP),
        ValueError,
        r"1 NaN.*first at index \(2, 3\)",
    ),
    (
        "quantize-shape",
        lambda: zp.quantize(torch.randn(5, 10), zp.calibrate(X, Scheme(axis=0))),
        ValueError,
        r"4 per-channel scales do not match size 5",
    ),
    (
        "quantize-stochastic",
        lambda: zp.quantize(
            X, QParams(torch.tensor(0.1), torch.tensor(0), Scheme(rounding="stochastic"))
        ),
        ValueError,
        r"rounding='stochastic'.*generator",
    ),
    (
        "quantize-generator-str",
        lambda: zp.quantize(X, QP, "seed"),
        TypeError,
        r"generator.*got str",
    ),  # type: ignore[arg-type]
    ("dequantize-float", lambda: zp.dequantize(X, QP), TypeError, r"torch.float32"),
    (
        "dequantize-range",
        lambda: zp.dequantize(
            torch.tensor([1, 100, -3], dtype=torch.int8),
            QParams(torch.tensor(0.1), torch.tensor(0), Scheme(bits=4)),
        ),
        ValueError,
        r"code 100 \(at index \(1,\)\).*\[-8, 7\]",
    ),
    (
        "dequantize-narrow",
        lambda: zp.dequantize(
            torch.tensor([-128], dtype=torch.int8),
            QParams(torch.tensor(0.1), torch.tensor(0), Scheme(narrow=True)),
        ),
        ValueError,
        r"code -128",
    ),
    (
        "dequantize-no-qparams",
        lambda: zp.dequantize(torch.zeros(3, dtype=torch.int8)),
        TypeError,
        r"needs the QParams",
    ),
    (
        "dequantize-dtype",
        lambda: zp.dequantize(torch.zeros(3, dtype=torch.int8), QP, dtype=torch.int32),
        TypeError,
        r"torch.int32",
    ),
    (
        "dequantize-bool",
        lambda: zp.dequantize(torch.zeros(3, dtype=torch.bool), QP),
        TypeError,
        r"torch.bool",
    ),
    ("dequantize-list", lambda: zp.dequantize([1, 2], QP), TypeError, r"got list"),  # type: ignore[arg-type]
    (
        "dequantize-qtensor-other-qparams",
        lambda: zp.dequantize(zp.quantize(X, QP), QParams(torch.tensor(0.2), torch.tensor(0), S8)),
        ValueError,
        r"takes its QParams from the QTensor",
    ),
    (
        "fake-quantize-inf",
        lambda: zp.fake_quantize(_inf(), QP),
        ValueError,
        r"1 Inf.*first at index \(1, 7\)",
    ),
    ("fake-quantize-none", lambda: zp.fake_quantize(X, None), TypeError, r"got NoneType"),  # type: ignore[arg-type]
    # ---------------------------------------------------------------- QTensor and packing
    ("qtensor-float", lambda: QTensor.from_int(X, QP), TypeError, r"torch.float32"),
    (
        "qtensor-range",
        lambda: QTensor.from_int(
            torch.tensor([3, 8, -1]), QParams(torch.tensor(1.0), torch.tensor(0), Scheme(bits=4))
        ),
        ValueError,
        r"code 8 \(at index \(1,\)\)",
    ),
    (
        "qtensor-shape",
        lambda: QTensor.from_int(
            torch.zeros(5, 10, dtype=torch.int8), zp.calibrate(X, Scheme(axis=0))
        ),
        ValueError,
        r"4 per-channel scales do not match size 5",
    ),
    (
        "qtensor-dtype",
        lambda: QTensor.from_int(torch.zeros(3, dtype=torch.int8), QP, dtype=torch.int8),
        TypeError,
        r"torch.int8",
    ),
    ("pack-range", lambda: pack(torch.tensor([8]), 4, True), ValueError, r"\[-8, 7\]"),
    ("pack-bits", lambda: pack(torch.tensor([1]), 6, True), ValueError, r"got 6"),
    (
        "unpack-short",
        lambda: unpack(torch.zeros(1, dtype=torch.uint8), 4, True, 3),
        ValueError,
        r"1 bytes.*3",
    ),
    # ---------------------------------------------------------------- formats
    ("intformat-bits", lambda: IntFormat(0), ValueError, r"bits=0"),
    ("intformat-bits-str", lambda: IntFormat("8"), TypeError, r"got str"),  # type: ignore[arg-type]
    ("fixed-int-bits", lambda: FixedPoint(-1, 3), ValueError, r"int_bits=-1"),
    (
        "fixed-overflow",
        lambda: FixedPoint(3, 3, overflow="error").encode(100.0),
        ValueError,
        r"100.0",
    ),
    (
        "fixed-rounding",
        lambda: FixedPoint(3, 3, rounding="stochastic"),
        ValueError,
        r"'stochastic'",
    ),
    ("float-format-exp", lambda: FloatFormat("f", 0, 3), ValueError, r"exp_bits=0"),
    ("float-format-width", lambda: FloatFormat("wide", 12, 30), ValueError, r"'wide'.*43 bits"),
    ("ieee754-str", lambda: ieee754_fields("7.6"), TypeError, r"got str"),  # type: ignore[arg-type]
    ("ieee754-format", lambda: ieee754_fields(1.0, "fp7"), ValueError, r"'fp7'"),
    # ---------------------------------------------------------------- observers
    ("observer-no-data", lambda: MinMax().qparams(), ValueError, r"MinMax has seen no data"),
    ("observer-percentile-0", lambda: Percentile(percentile=0), ValueError, r"percentile=0"),
    (
        "observer-percentile-low",
        lambda: Percentile(S8, percentile=30),
        ValueError,
        r"percentile=30",
    ),
    ("observer-histogram-bins", lambda: Histogram(1, bins=1000), ValueError, r"bins=1000"),
    ("observer-mse-bins", lambda: MSE(bins=1000), ValueError, r"bins=1000"),
    (
        "observer-ema-constant",
        lambda: MovingAverageMinMax(averaging_constant=0),
        ValueError,
        r"averaging_constant=0",
    ),
    ("observer-aciq-distribution", lambda: ACIQ(distribution="cauchy"), ValueError, r"'cauchy'"),
    ("observer-merge-type", lambda: MinMax().merge(Entropy()), TypeError, r"Entropy into MinMax"),  # type: ignore[arg-type]
    (
        "observer-merge-scheme",
        lambda: _observed(MinMax(S8), X).merge(_observed(MinMax(Scheme(bits=4)), X)),
        ValueError,
        r"int4 asym per-tensor vs int8 asym per-tensor",
    ),
    (
        "observer-slices",
        lambda: _observed(MinMax(Scheme(axis=0)), X).update(torch.randn(5, 10)),
        ValueError,
        r"gives 5 slices.*earlier batches gave 4",
    ),
    ("observer-update-list", lambda: MinMax().update([1.0]), TypeError, r"got list"),  # type: ignore[arg-type]
    ("observer-scheme-str", lambda: MinMax("int8"), TypeError, r"got str"),  # type: ignore[arg-type]
    ("observer-option", lambda: make_observer("minmax", S8, foo=1), TypeError, r"'foo'"),
    # ---------------------------------------------------------------- non-uniform quantizers
    ("log-bits", lambda: LogQuantizer.fit(X, bits=1), ValueError, r"bits.*1"),
    ("log-alpha", lambda: LogQuantizer(alpha=-1.0, bits=4), ValueError, r"alpha=-1.0"),
    (
        "log-unsigned-negative",
        lambda: LogQuantizer.fit(X, bits=4, signed=False),
        ValueError,
        r"min -",
    ),
    ("binary-bases", lambda: BinaryCodeQuantizer.fit(X, m=5), ValueError, r"5"),
    ("kmeans-bits", lambda: KMeansCodebook.fit(X, bits=0), ValueError, r"bits.*0"),
    ("codebook-empty", lambda: codebook_from_levels([]), ValueError, r"empty"),
    (
        "rule-thresholds",
        lambda: RuleCodebook([1.0, 0.0], [0.0, 1.0, 2.0]),
        ValueError,
        r"t\[0\]=1.0 >= t\[1\]=0.0",
    ),
    ("rule-sizes", lambda: RuleCodebook([0.0], [0.0]), ValueError, r"1 threshold.*1 value"),
    (
        "log-decode-range",
        lambda: LogQuantizer(alpha=1.0, bits=3).decode(torch.tensor([0, 9])),
        ValueError,
        r"9",
    ),
    # ---------------------------------------------------------------- configs, presets, rules
    ("config-learnable", lambda: QuantConfig(learnable="adaround"), ValueError, r"'adaround'"),
    (
        "config-nothing",
        lambda: QuantConfig(weight=None, activation=None),
        ValueError,
        r"neither weights nor activations",
    ),
    (
        "config-observer",
        lambda: QuantConfig(activation_observer="kl"),
        ValueError,
        r"activation_observer='kl'",
    ),
    ("config-skip-str", lambda: QuantConfig(skip="head"), TypeError, r"skip.*'head'"),  # type: ignore[arg-type]
    ("config-weight-str", lambda: QuantConfig(weight="int8"), TypeError, r"weight.*'int8'"),  # type: ignore[arg-type]
    ("config-first-last", lambda: QuantConfig(first_last_bits=1), ValueError, r"first_last_bits=1"),
    ("config-per-token", lambda: QuantConfig(per_token=True), ValueError, r"per_token=True"),
    ("config-with-key", lambda: QuantConfig().with_(foo=1), TypeError, r"'foo'"),
    ("rule-empty", lambda: LayerRule(), ValueError, r"needs a name pattern"),
    ("rule-regex", lambda: LayerRule(name="re:fc[", skip=True), ValueError, r"'re:fc\['"),
    ("rule-types", lambda: LayerRule(types=nn.Linear), TypeError, r"Linear"),  # type: ignore[arg-type]
    ("rule-weight", lambda: LayerRule(name="fc1", weight=8), TypeError, r"weight.*8"),  # type: ignore[arg-type]
    ("preset-learnable", lambda: zp.w4a4_qat("adaround"), ValueError, r"'adaround'"),
    ("preset-group", lambda: zp.int4_weight_only(group_size=0), ValueError, r"group_size=0"),
    # ---------------------------------------------------------------- static PTQ
    (
        "static-dynamic-config",
        lambda: zp.quantize_static(tiny(), [X], zp.int8_dynamic()),
        ValueError,
        r"\(int8_dynamic\) is dynamic",
    ),
    (
        "static-preset-name",
        lambda: zp.quantize_static(tiny(), [X], "int8"),
        ValueError,
        r"unknown preset 'int8'.*'int8_static'",
    ),
    ("static-config-type", lambda: zp.quantize_static(tiny(), [X], 8), TypeError, r"got int"),  # type: ignore[arg-type]
    (
        "static-empty",
        lambda: zp.quantize_static(tiny(), [], progress=False),
        ValueError,
        r"calibration data is empty",
    ),
    (
        "static-training",
        lambda: zp.quantize_static(Tiny(), [X], progress=False),
        ValueError,
        r"Tiny is in training mode",
    ),
    (
        "static-skip-unknown",
        lambda: zp.quantize_static(tiny(), [X], QuantConfig(skip=("decoder.*",)), progress=False),
        ValueError,
        r"'decoder.\*'.*\['fc1', 'fc2'\]",
    ),
    ("static-model-str", lambda: zp.quantize_static("model", [X]), TypeError, r"got str"),  # type: ignore[arg-type]
    (
        "static-tensor-data",
        lambda: zp.quantize_static(tiny(), X, progress=False),
        TypeError,
        r"got Tensor",
    ),
    (
        "static-item-float",
        lambda: zp.calibrate_model(prepared(), [3.0], progress=False),
        TypeError,
        r"type float",
    ),
    (
        "static-item-key",
        lambda: zp.calibrate_model(prepared(), [{1: X}], progress=False),
        TypeError,
        r"got 1",
    ),
    (
        "static-not-prepared",
        lambda: zp.calibrate_model(tiny(), [X], progress=False),
        ValueError,
        r"Tiny was not prepared",
    ),
    ("convert-not-prepared", lambda: zp.convert(tiny()), ValueError, r"Tiny was not prepared"),
    ("convert-not-calibrated", lambda: zp.convert(prepared()), ValueError, r"saw no data"),
    (
        "prepare-qat-config",
        lambda: zp.prepare(tiny(), zp.w4a4_qat()),
        ValueError,
        r"learnable='lsq'",
    ),
    (
        "static-batch-shape",
        lambda: zp.quantize_static(tiny(), [torch.randn(4, 7)], progress=False),
        RuntimeError,
        r"4x7",
    ),
    # ---------------------------------------------------------------- QAT
    (
        "qat-dynamic-config",
        lambda: zp.prepare_qat(tiny(), zp.int8_dynamic()),
        ValueError,
        r"prepare_qat.*\(int8_dynamic\)",
    ),
    ("qat-preset-name", lambda: zp.prepare_qat(tiny(), "w5a5_qat"), ValueError, r"'w5a5_qat'"),
    ("qat-model-str", lambda: zp.prepare_qat("model"), TypeError, r"got str"),  # type: ignore[arg-type]
    (
        "qat-groups-decay",
        lambda: zp.qat_param_groups(tiny(), weight_decay=-1),
        ValueError,
        r"weight_decay=-1",
    ),
    ("qat-groups-model", lambda: zp.qat_param_groups([1]), TypeError, r"got list"),  # type: ignore[arg-type]
    ("fakequant-mode", lambda: FakeQuant(S8, mode="sometimes"), ValueError, r"'sometimes'"),
    ("fakequant-scheme", lambda: FakeQuant("int8"), TypeError, r"got str"),  # type: ignore[arg-type]
    ("fakequant-observer", lambda: FakeQuant(S8, observer="kl"), ValueError, r"'kl'"),
    (
        "fakequant-unfrozen",
        lambda: FakeQuant(S8, mode="quantize")(X),
        ValueError,
        r"int8 asym per-tensor.*no quantization parameters",
    ),
    ("lsq-group", lambda: LSQ(Scheme(group_size=4)), ValueError, r"group\(4"),
    ("lsq-num-scales", lambda: LSQ(S8, num_scales=3), ValueError, r"not 3"),
    ("lsq-signed", lambda: LSQ(S8, signed="yes"), TypeError, r"'yes'"),  # type: ignore[arg-type]
    ("lsq-slices", _qat_lsq_per_channel, ValueError, r"built for 4 scales.*\(3, 5\) has 3 slices"),
    ("lsqplus-scheme", lambda: LSQPlus("int4"), TypeError, r"got str"),  # type: ignore[arg-type]
    ("pact-axis", lambda: PACT(Scheme(axis=0)), ValueError, r"per-channel\(axis=0\)"),
    ("pact-alpha", lambda: PACT(S8, alpha=-1.0), ValueError, r"alpha=-1.0"),
    # ---------------------------------------------------------------- dynamic
    (
        "dynamic-static-config",
        lambda: zp.quantize_dynamic(tiny(), zp.int8_static()),
        ValueError,
        r"\(int8_static\) is static",
    ),
    (
        "dynamic-preset-name",
        lambda: zp.quantize_dynamic(tiny(), "int8_dynamik"),
        ValueError,
        r"'int8_dynamik'",
    ),
    (
        "dynamic-qat-config",
        lambda: zp.quantize_dynamic(tiny(), zp.w2a2_qat()),
        ValueError,
        r"learnable='lsq'",
    ),
    ("dynamic-config-type", lambda: zp.quantize_dynamic(tiny(), 3), TypeError, r"got int"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(
    ("call", "error", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_raises_naming_the_offender(
    call: Callable[[], object], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        call()


def test_case_ids_are_unique_and_numerous() -> None:
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids) >= 80


# ---------------------------------------------------------------- legal edge inputs: results


def test_legal_edges_give_the_closed_form() -> None:
    # ternary: 2-bit signed narrow symmetric has levels {−S, 0, S}, S = max|x|
    qp = zp.calibrate(torch.tensor([-0.6, 0.2, 0.9]), Scheme(bits=2, symmetric=True, narrow=True))
    assert qp.qmin == -1 and qp.qmax == 1 and qp.scale.item() == pytest.approx(0.9)
    # the affine formula: [−1, 3] on int8 gives S = 4/255, Z = −128 − round(−1/S) = −64
    qp = qparams_from_range(-1.0, 3.0, S8)
    assert qp.scale.item() == pytest.approx(4 / 255, rel=1e-7) and int(qp.zero_point) == -64
    # an int seed is a generator: the same seed, the same stochastic codes
    sq = QParams(torch.tensor(1.0), torch.tensor(0), Scheme(rounding="stochastic"))
    x = torch.full((1000,), 0.5)
    assert torch.equal(zp.quantize_int(x, sq, 5), zp.quantize_int(x, sq, 5))
    # an empty tensor quantizes to an empty tensor
    assert zp.quantize_int(torch.empty(0), QP).shape == (0,)
    # a scalar (0-d) quantizes per tensor: 0.25 / 0.1 = 2.5 → 2 (half to even)
    assert int(zp.quantize_int(torch.tensor(0.25), QP)) == 2
    # fp8 e4m3 rounds 500 to its largest finite value only when saturating
    assert FP8_E4M3.round(torch.tensor([500.0]), saturate=True).item() == 448.0
    # the full int8 range is never checked code by code: every int8 code is legal
    codes = torch.tensor([-128, 127], dtype=torch.int8)
    assert zp.dequantize(codes, QP).tolist() == pytest.approx([-12.8, 12.7])
    # a preset by name everywhere a config is accepted
    model = tiny()
    q = zp.quantize_static(model, [X], "int8_static", progress=False)
    assert torch.equal(q(X), zp.quantize_static(model, [X], zp.int8_static(), progress=False)(X))
