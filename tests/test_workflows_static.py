"""Static PTQ on the digits CNN: quantizer placement, accuracy against fp32, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy
from zeropoint.nn import FakeQuant, QuantConv2d, QuantConvTranspose2d, QuantLinear
from zeropoint.workflows.config import LayerRule, QuantConfig, int8_static
from zeropoint.workflows.graph import state_of
from zeropoint.workflows.static import (
    calibrate_model,
    calibrating,
    convert,
    prepare,
    quantize_static,
)


def test_quantizers_sit_on_every_integer_edge(digits: tuple[DigitsCNN, DigitsData]) -> None:
    model, data = digits
    q = quantize_static(model, data.calibration_batches(), progress=False)
    state = state_of(q)
    assert state.capture == "fx" and type(q) is DigitsCNN  # same class, layers swapped
    # the input; each conv/linear output after its (fused) ReLU; the residual add after its
    # ReLU; the average pool (re-quantized)
    assert set(state.edges) == {
        "x", "stem_2", "relu", "block_conv2", "relu_1", "down_2", "up_2", "mix_2", "gap", "head",
    }  # fmt: skip
    assert len(state.folded) == 6  # every conv + bn pair
    assert isinstance(q.stem[0], QuantConv2d) and isinstance(q.stem[1], nn.Identity)
    assert isinstance(q.up[0], QuantConvTranspose2d) and isinstance(q.head, QuantLinear)
    assert all(isinstance(m, FakeQuant) and m.mode == "quantize" for m in q.act_quant.values())
    assert "uint8 asym per-tensor" in repr(q)  # printing shows what is quantized and how


def test_float_model_is_untouched_unless_inplace(digits: tuple[DigitsCNN, DigitsData]) -> None:
    model, data = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantize_static(model, data.calibration_batches(), progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.stem[1], nn.BatchNorm2d)


@pytest.mark.slow
def test_w8a8_minmax_within_half_a_point_of_fp32(digits: tuple[DigitsCNN, DigitsData]) -> None:
    model, data = digits
    fp32 = accuracy(model, data.x_test, data.y_test)
    results = {}
    for observer in ("minmax", "percentile", "entropy", "mse", "aciq"):
        q = quantize_static(
            model, data.calibration_batches(), int8_static(observer), progress=False
        )
        results[observer] = accuracy(q, data.x_test, data.y_test)
    assert fp32 >= 97.0
    assert results["minmax"] >= fp32 - 0.5
    assert min(results.values()) >= fp32 - 1.5, results


def test_step_by_step_equals_one_call(digits: tuple[DigitsCNN, DigitsData]) -> None:
    model, data = digits
    batches = data.calibration_batches()
    prepared = prepare(model)
    with calibrating(prepared):
        for x in batches:
            prepared(x)
    step = convert(prepared)
    once = quantize_static(model, batches, progress=False)
    x = data.x_test[:32]
    assert torch.equal(step(x), once(x))


def test_rules_override_and_skip(digits: tuple[DigitsCNN, DigitsData]) -> None:
    model, data = digits
    config = QuantConfig(
        rules=(LayerRule(name="head", weight=zp.Scheme(bits=4, symmetric=True, axis=0)),),
        skip=("up.0",),
    )
    q = quantize_static(model, data.calibration_batches(), config, progress=False)
    assert q.head.weight_quant.scheme.bits == 4
    assert type(q.up[0]) is nn.ConvTranspose2d  # skipped: stays float


def test_module_boundary_fallback_is_announced() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                x = -x
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    model = Branchy().eval()
    calib = torch.randn(64, 4)
    with pytest.warns(UserWarning, match="module-boundary"):
        q = quantize_static(model, [calib], progress=False)
    assert state_of(q).capture == "module-boundary"
    assert q.a.input_quant is not None and q.b.input_quant is not None
    # inside the calibrated range the 8-bit simulation stays within a few input steps
    x = calib[:16]
    step = q.a.input_quant.scale.item()
    torch.testing.assert_close(q(x), model(x), rtol=0, atol=10 * step)


def test_bad_input_names_the_problem(digits: tuple[DigitsCNN, DigitsData]) -> None:
    model, data = digits
    with pytest.raises(ValueError, match="calibration data is empty"):
        quantize_static(model, [], progress=False)
    with pytest.raises(ValueError, match="training mode"):
        quantize_static(DigitsCNN().train(), data.calibration_batches(), progress=False)
    with pytest.raises(ValueError, match="no such module"):
        quantize_static(model, data.calibration_batches(), QuantConfig(skip=("decoder.*",)))
    with pytest.raises(ValueError, match="not prepared by zeropoint"):
        convert(DigitsCNN())
    prepared = prepare(model)
    with pytest.raises(TypeError, match="calibration item"):
        calibrate_model(prepared, [3.0], progress=False)


def test_configs_of_other_workflows_are_refused_and_presets_accepted_by_name(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    calib = data.calibration_batches()
    with pytest.raises(ValueError, match=r"quantize_static: the config \(int8_dynamic\) is dyn"):
        quantize_static(model, calib, zp.int8_dynamic(), progress=False)
    with pytest.raises(ValueError, match=r"\(int4_weight_only\) is weight-only"):
        quantize_static(model, calib, zp.int4_weight_only(), progress=False)
    with pytest.raises(ValueError, match=r"learnable='lsq', a QAT setting: use zp.prepare_qat"):
        prepare(model, zp.w4a4_qat())
    with pytest.raises(ValueError, match=r"unknown preset 'int8'.*'int8_static'"):
        quantize_static(model, calib, "int8", progress=False)
    with pytest.raises(TypeError, match="needs a QuantConfig or a preset name, got dict"):
        quantize_static(model, calib, {"bits": 8}, progress=False)  # type: ignore[arg-type]
    by_name = quantize_static(model, calib, "int8_static", progress=False)
    by_value = quantize_static(model, calib, int8_static(), progress=False)
    x = data.x_test[:16]
    assert torch.equal(by_name(x), by_value(x))


class _KeywordModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self.fc(features) + offset


def test_mapping_calibration_items_are_keyword_arguments() -> None:
    from transformers import BatchEncoding

    model = _KeywordModel().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    o = torch.randn(32, 3, generator=g)
    # reference: the same calibration fed by a plain loop with keyword arguments
    prepared = prepare(model)
    with calibrating(prepared):
        prepared(offset=o, features=x)
    reference = convert(prepared)
    # keys in another order than the signature: matched by name, not position
    as_dicts = quantize_static(model, [{"offset": o, "features": x}], progress=False)
    encoding = BatchEncoding({"offset": o, "features": x})
    as_encodings = quantize_static(model, [encoding], progress=False)
    for q in (as_dicts, as_encodings):
        assert torch.equal(q(x, o), reference(x, o))
    with pytest.raises(TypeError, match="keys must be strings; got 0"):
        quantize_static(model, [{0: x}], progress=False)
    with pytest.raises(TypeError, match="wrap a single batch in a list"):
        quantize_static(model, x, progress=False)


def test_a_failure_midway_restores_an_in_place_model(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    model, data = digits
    work = DigitsCNN()
    work.load_state_dict(model.state_dict())
    work.eval()
    state = {k: v.clone() for k, v in work.state_dict().items()}
    modules = dict(work.named_modules())
    params = {k: p for k, p in work.named_parameters()}

    def loader():  # raises after two good batches, once batch norms were folded in place
        yield data.x_train[:32]
        yield data.x_train[32:64]
        raise OSError("disk read failed")

    with pytest.raises(OSError, match="disk read failed"):
        quantize_static(work, loader(), inplace=True, progress=False)
    assert dict(work.named_modules()).keys() == modules.keys()
    assert all(work.get_submodule(k) is m for k, m in modules.items())
    assert all(p is params[k] for k, p in work.named_parameters())
    assert all(torch.equal(v, state[k]) for k, v in work.state_dict().items())
    assert "_zeropoint" not in work.__dict__ and "forward" not in work.__dict__
    x = data.x_test[:16]
    assert torch.equal(work(x), model(x))
    # and the same model quantizes in place afterwards
    q = quantize_static(work, data.calibration_batches(), inplace=True, progress=False)
    assert q is work and state_of(work).workflow == "static"
