"""The examples run as a user runs them (quick settings) and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "PATH": "https://fd-gally.netlify.app/hf/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quickstart() -> None:
    out = _run("quickstart.py")
    assert "int4 sym group(64, axis=-1)" in out and "Q3.3 of 7.625: 111.101" in out
    assert "exponent     10000001 = 129" in out


@pytest.mark.slow
def test_digits_static_int8_quick() -> None:
    out = _run("digits_static_int8.py", "--quick")
    assert "IntegerProgram: 13 steps" in out and "reloaded model identical: True" in out
