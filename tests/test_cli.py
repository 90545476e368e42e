"""The `zeropoint` command end to end on a small model defined in the tests
(`tests.cli_models`), and every bad input ending in one line and exit status 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zeropoint as zp
from tests.cli_models import build_model, calib_batches
from zeropoint.cli import main

MODEL = "tests.cli_models:build_model"
CALIB = "tests.cli_models:calib_batches"


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    line = err[-1]
    assert line.startswith("zeropoint: error: ")
    return line


def _quantized(out: Path) -> None:
    """``zeropoint quantize`` of the test model into ``out`` (no ONNX export, quiet)."""
    assert main(["quantize", MODEL, "--calib", CALIB, "--out", str(out), "--quiet",
                 "--no-onnx"]) == 0  # fmt: skip


def test_quantize_writes_checkpoint_onnx_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["quantize", MODEL, "--calib", CALIB, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    for name in ("checkpoint", "model.onnx", "report.html", "report.json", "zeropoint.json"):
        assert (out / name).exists(), name
    # progress bars on the long steps (tqdm writes them to stderr)
    assert "calibrating" in captured.err and "analysing" in captured.err
    assert "report:" in captured.out
    # the checkpoint is the quantized model: loading it reproduces zp.quantize_static exactly
    expected = zp.quantize_static(build_model().eval(), calib_batches(), "int8_static",
                                  progress=False)  # fmt: skip
    loaded = zp.load(out / "checkpoint", build_model().eval())
    x = calib_batches()[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))
    # ONNX Runtime runs the export and agrees with the integer program (the lowering's promise)
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    assert torch.allclose(got, zp.to_integer(expected, x[:2])(x), atol=0, rtol=0)
    doc = json.loads((out / "report.json").read_text())
    names = {d["name"] for d in doc["analysis"]["layers"]}
    assert {"conv1", "conv2", "fc"} <= names
    methods = [r["method"] for r in doc["summary"]]
    assert methods[0] == "fp32 (PyTorch)" and "zeropoint integer engine" in methods
    html = (out / "report.html").read_text()
    assert "conv2" in html and "<svg" in html


def test_report_rerenders_from_the_saved_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["quantize", MODEL, "--calib", CALIB, "--out", str(out), "--quiet"]) == 0
    (out / "report.html").unlink()
    labelled = "tests.cli_models:labelled_batches"
    assert main(["report", str(out), "--data", labelled, "--quiet"]) == 0
    doc = json.loads((out / "report.json").read_text())
    # labels given: accuracy is the default metric
    assert doc["analysis"]["metric"] == "accuracy"
    assert doc["analysis"]["samples"] == 16
    assert (out / "report.html").read_text().count("<tr>") > 6
    assert capsys.readouterr().err.strip() == ""  # --quiet: no progress bars, nothing printed


def test_quantize_dynamic_config_writes_checkpoint_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dyn"
    args = ["quantize", MODEL, "--calib", CALIB, "--config", "int8_dynamic", "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    assert (out / "checkpoint").is_dir() and not (out / "model.onnx").exists()
    doc = json.loads((out / "report.json").read_text())
    assert doc["analysis"] is None and doc["summary"][0]["method"] == "fp32 (PyTorch)"


def test_quantize_weight_only_config_exports_matmulnbits_onnx(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "wo"
    argv = ["quantize", "tests.cli_models:build_mlp", "--calib", "tests.cli_models:mlp_batches",
            "--config", "int4_weight_only", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    import onnx
    import onnxruntime as ort

    from tests.cli_models import build_mlp, mlp_batches

    proto = onnx.load(str(out / "model.onnx"))
    assert sum(n.op_type == "MatMulNBits" for n in proto.graph.node) == 2
    # ONNX Runtime runs the file at another batch size and computes the loaded checkpoint's
    # function (the int4 codes dequantized; float accumulation order differs)
    loaded = zp.load(out / "checkpoint", build_mlp().eval())
    x = torch.cat(mlp_batches())[:5]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, loaded(x), atol=1e-5, rtol=1e-5)
    methods = [r["method"] for r in json.loads((out / "report.json").read_text())["summary"]]
    assert "zeropoint ONNX export → ONNX Runtime" in methods


def test_report_render_only_needs_no_model_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _quantized(out)
    before = (out / "report.html").read_text()
    (out / "report.html").unlink()
    (out / "zeropoint.json").unlink()  # nothing left to rebuild the model from
    assert main(["report", str(out), "--render-only", "--quiet"]) == 0
    assert (out / "report.html").read_text() == before
    (out / "report.json").write_text("[1, 2]")
    assert main(["report", str(out), "--render-only"]) == 2
    assert "report.json is damaged" in _error_line(capsys)


def test_every_subcommand_has_help_with_examples() -> None:
    for command in ("quantize", "report", "formats"):
        run = subprocess.run([sys.executable, "-m", "zeropoint.cli", command, "--help"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "example" in run.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["quantize", MODEL, "--calib", CALIB, "--config", "int9_static"],
         "unknown config 'int9_static'"),
        (["quantize", MODEL, "--calib", CALIB, "--config", "w4a4_qat"], "quantization-aware"),
        (["quantize", "tests.cli_models:no_such_model", "--calib", CALIB],
         "has no attribute 'no_such_model'"),
        (["quantize", "tests.no_such_module:build", "--calib", CALIB], "cannot import module"),
        (["quantize", "tests.cli_models", "--calib", CALIB], "MODULE:ATTRIBUTE"),
        (["quantize", "tests.cli_models:not_a_model", "--calib", CALIB],
         "expected an nn.Module"),
        (["quantize", MODEL, "--calib", "tests.cli_models:wrong_shape_batches"],
         "calibration data does not fit the model: on a batch of shape (4, 5, 12, 12)"),
        (["quantize", MODEL, "--calib", "tests.cli_models:not_a_model"], "expected an iterable"),
        (["quantize", MODEL, "--calib", CALIB, "--observer", "median"], "activation_observer"),
        (["quantize", MODEL, "--calib", CALIB, "--metric", "accuracy"], "needs labels"),
        (["quantize", MODEL, "--calib", CALIB, "--max-batches", "0"], "--max-batches"),
        (["quantize", MODEL], "the following arguments are required: --calib"),
        (["quantize", MODEL, "--calib", CALIB, "--metric", "f1"], "invalid choice: 'f1'"),
        (["quantize", "tests.cli_models:build_mlp", "--calib", "tests.cli_models:mlp_batches",
          "--config", "int4_weight_only", "--no-onnx", "--data", CALIB],
         "evaluation data does not fit the model"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
    except SystemExit as exc:  # argparse's own errors exit from parse_args
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line: no usage block, no traceback
    assert err[0].startswith("zeropoint: error: ") and expected in err[0]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--data", "tests.cli_models:no_such_batches"], "has no attribute 'no_such_batches'"),
        (["--data", "tests.cli_models:wrong_shape_batches"],
         "evaluation data does not fit the model: on a batch of shape (4, 5, 12, 12)"),
        (["--metric", "accuracy"], "needs labels"),
        (["--max-batches", "0"], "--max-batches"),
        (["--metric", "f1"], "invalid choice: 'f1'"),
    ],
)  # fmt: skip
def test_report_bad_input_is_one_line_and_status_2(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _quantized(out)
    capsys.readouterr()
    try:
        status = main(["report", str(out), *argv, "--quiet"])
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zeropoint: error: ") and expected in err[0], err


def test_report_of_a_directory_not_written_by_quantize(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "was not written by `zeropoint quantize`" in _error_line(capsys)


def test_report_with_a_damaged_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _quantized(out)
    (out / "checkpoint" / "encodings.json").write_text("{}")
    assert main(["report", str(out), "--quiet"]) == 2
    assert "cannot load the checkpoint" in _error_line(capsys)


def test_console_script_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "zeropoint.cli", "quantize", MODEL, "--calib", CALIB, "--config",
         "nope", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "unknown config 'nope'" in run.stderr


def test_formats_lists_each_format_with_its_closed_form_range(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`zeropoint formats` end to end: the rows against the formats' closed forms
    (IEEE-style e/m fields: max = (2 − 2^−m)·2^e_max, or (1 + 6/8)·2^8 for e4m3fn, whose top
    mantissa pattern is NaN; min normal 2^(1 − bias); min subnormal 2^(1 − bias − m))."""
    assert main(["formats"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    head = lines[0].split()
    rows = {ln.split()[0]: dict(zip(head, ln.split(), strict=True)) for ln in lines[2:]}
    expected = {
        "int8": (-128, 127, None, None),
        "uint4": (0, 15, None, None),
        "fp16": (-65504.0, (2 - 2**-10) * 2**15, 2.0**-14, 2.0**-24),
        "fp8_e4m3fn": (-448.0, (1 + 6 / 8) * 2**8, 2.0**-6, 2.0**-9),
        "fp8_e5m2": (-57344.0, (2 - 2**-2) * 2**15, 2.0**-14, 2.0**-16),
        "fp4_e2m1": (-6.0, (2 - 2**-1) * 2**2, 1.0, 0.5),
    }
    for name, (lo, hi, normal, subnormal) in expected.items():
        row = rows[name]
        # printed with 7 significant digits: equal to 1e-6 relative
        assert float(row["min"]) == pytest.approx(lo, rel=1e-6), name
        assert float(row["max"]) == pytest.approx(hi, rel=1e-6), name
        if normal is not None:
            assert float(row["min_normal"]) == pytest.approx(normal, rel=1e-6), name
            assert float(row["min_subnormal"]) == pytest.approx(subnormal, rel=1e-6), name
    # dynamic range of an integer grid: 20·log10(levels − 1) dB (printed to 2 decimals)
    assert float(rows["int8"]["dynamic_range_db"]) == pytest.approx(20 * math.log10(255), abs=5e-3)
