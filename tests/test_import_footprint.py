"""`import zeropoint` is light: torch, numpy, safetensors and tqdm only — none of the optional
extras (ONNX, ONNX Runtime, matplotlib) nor the demo's packages are imported with it."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("onnx", "onnxruntime", "matplotlib", "sklearn", "sentence_transformers", "scipy")


def test_importing_the_library_imports_no_optional_package() -> None:
    code = f"import sys, zeropoint\nprint(','.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
