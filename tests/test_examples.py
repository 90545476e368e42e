"""The examples run as a user runs them (quick settings) and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *args: str) -> str:
    env = {
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": "https://fd-gally.netlify.app/hf/usr/bin:/bin",
    }
    if "PYTHONPATH" in os.environ:  # a checkout other than the installed one (a worktree)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _percent(out: str, label: str) -> float:
    match = re.search(re.escape(label) + r" ([0-9.]+)%", out)
    assert match, (label, out)
    return float(match.group(1))


def test_every_example_is_tested() -> None:
    tested = {"quickstart.py", "digits_static_int8.py", "digits_qat_w2a2.py"}
    tested.add("minilm_dynamic_int8.py")
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_quickstart() -> None:
    out = _run("quickstart.py")
    assert "int4 sym group(64, axis=-1)" in out and "Q3.3 of 7.625: 111.101" in out
    assert "exponent     10000001 = 129" in out


@pytest.mark.slow
def test_digits_static_int8_quick() -> None:
    out = _run("digits_static_int8.py", "--quick")
    assert "IntegerProgram: 13 steps" in out and "reloaded model identical: True" in out
    fp32, sim = _percent(out, "fp32 accuracy"), _percent(out, "int8 simulation")
    assert fp32 > 50 and abs(sim - fp32) < 5  # 3 epochs: a half-trained CNN, int8 close to it


@pytest.mark.slow
def test_digits_qat_w2a2_quick() -> None:
    out = _run("digits_qat_w2a2.py", "--quick")
    fp32, rtn = _percent(out, "fp32"), _percent(out, "round-to-nearest W2A2")
    qat = _percent(out, "LSQ QAT W2A2")
    assert fp32 > 50 and 0 <= rtn <= 100 and qat > rtn  # two QAT epochs already beat RTN


@pytest.mark.slow
def test_minilm_dynamic_int8_quick() -> None:
    pytest.importorskip("sentence_transformers")
    out = _run("minilm_dynamic_int8.py", "--quick")
    means = dict(re.findall(r"^(zeropoint int8|torch.ao int8)\s+cosine mean ([0-9.]+)", out, re.M))
    assert set(means) == {"zeropoint int8", "torch.ao int8"}, out
    assert float(means["zeropoint int8"]) > 0.95
