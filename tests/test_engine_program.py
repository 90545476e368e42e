"""The integer program lowered from a simulated model: agreement with the simulation, accuracy,
fallbacks, persistence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy
from zeropoint.engine import IntegerProgram, to_integer


@pytest.fixture(scope="module")
def quantized(digits: tuple[DigitsCNN, DigitsData]) -> nn.Module:
    model, data = digits
    return zp.quantize_static(model, data.calibration_batches(), progress=False)


@pytest.mark.parametrize("rounding", ["single", "double"])
def test_integer_program_matches_the_simulation(
    quantized: nn.Module, digits: tuple[DigitsCNN, DigitsData], rounding: str
) -> None:
    _, data = digits
    program = to_integer(quantized, data.x_test[:2], rounding=rounding)
    assert program.fallbacks == []
    with torch.no_grad():
        sim = quantized(data.x_test)
    out = program(data.x_test)
    step = quantized.act_quant["head"].scale.item()
    lsb = (out - sim).abs() / step
    # Every layer requantizes in integers while the simulation rounds float values, and an
    # off-by-one code can propagate: the logits agree within one output step for ≥ 99%
    assert (lsb <= 1 + 1e-4).float().mean().item() >= 0.99
    assert (
        abs(
            accuracy(program, data.x_test, data.y_test)
            - accuracy(quantized, data.x_test, data.y_test)
        )
        <= 0.3
    )


def test_run_int_is_integer_end_to_end(
    quantized: nn.Module, digits: tuple[DigitsCNN, DigitsData]
) -> None:
    _, data = digits
    program = to_integer(quantized, data.x_test[:2])
    (in_qp,) = program.input_qparams
    assert in_qp is not None
    q_in = zp.quantize_int(data.x_test[:16], in_qp)
    q_out = program.run_int(q_in)
    assert isinstance(q_out, torch.Tensor) and q_out.dtype == torch.uint8
    out_qp = quantized.act_quant["head"].qparams()
    assert torch.equal(zp.dequantize(q_out, out_qp), program(data.x_test[:16]))
    assert torch.equal(program.run_int(q_in), q_out)  # deterministic
    kinds = [s.kind for s in program.steps]
    assert kinds[0] == "quantize" and kinds[-1] == "dequantize"
    assert {
        "conv2d",
        "conv_transpose2d",
        "add",
        "max_pool",
        "adaptive_avg_pool",
        "linear",
    } <= set(kinds)


def test_program_save_and_load_round_trip(
    quantized: nn.Module, digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    _, data = digits
    program = to_integer(quantized, data.x_test[:2])
    program.save(tmp_path / "prog")
    restored = IntegerProgram.load(tmp_path / "prog")
    assert torch.equal(restored(data.x_test), program(data.x_test))
    (tmp_path / "prog" / "program.json").write_text("{broken")
    with pytest.raises(ValueError, match="malformed"):
        IntegerProgram.load(tmp_path / "prog")


class _WithSoftmax(nn.Module):
    """softmax over channels has no integer kernel (it is not element-wise): it runs in float."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(torch.softmax(self.conv(x), 1), 1))


def test_unsupported_operation_falls_back_and_is_listed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _WithSoftmax().eval()
    x = torch.rand(32, 1, 8, 8)
    q = zp.quantize_static(model, [x], progress=False)
    program = to_integer(q, x[:2])
    assert program.fallbacks == ["softmax"]
    assert "float fallbacks: softmax" in program.summary()
    with torch.no_grad():
        torch.testing.assert_close(
            program(x), q(x), rtol=0, atol=2 * q.act_quant["head"].scale.item()
        )
    with pytest.raises(ValueError, match="cannot be saved without pickle"):
        program.save(tmp_path / "p")


def test_bad_input_names_the_problem(
    digits: tuple[DigitsCNN, DigitsData], quantized: nn.Module
) -> None:
    model, data = digits
    with pytest.raises(ValueError, match="example input does not fit"):
        to_integer(quantized, torch.randn(2, 3, 8, 8))
    prepared = zp.prepare(model)
    with pytest.raises(ValueError, match=r"act_quant\.x has no"):
        to_integer(prepared, data.x_test[:2])
    with pytest.raises(ValueError, match="not prepared by zeropoint"):
        to_integer(model, data.x_test[:2])
    with pytest.raises(ValueError, match="rounding"):
        to_integer(quantized, data.x_test[:2], rounding="stochastic")
