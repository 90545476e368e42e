"""`import zeropoint` is light: torch, numpy, safetensors and tqdm only — none of the optional
extras (ONNX, ONNX Runtime, matplotlib) nor the demo's packages are imported with it; the
functions that need an extra name it when it is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import zeropoint as zp

OPTIONAL = ("onnx", "onnxruntime", "matplotlib", "sklearn", "sentence_transformers", "scipy")


def test_importing_the_library_imports_no_optional_package() -> None:
    code = f"import sys, zeropoint\nprint(','.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_importing_the_library_adds_only_its_own_modules() -> None:
    # an allowlist: after its four dependencies, `import zeropoint` adds zeropoint's own
    # modules and the standard library's, nothing else
    code = (
        "import sys\n"
        "import torch, numpy, safetensors, safetensors.torch, tqdm, tqdm.auto\n"
        "before = set(sys.modules)\n"
        "import zeropoint\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(','.join(sorted(m for m in new if m != 'zeropoint' and m not in "
        "sys.stdlib_module_names and not m.startswith('_'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_functions_that_need_an_extra_name_it(missing: str, monkeypatch, tmp_path) -> None:
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    model_q = zp.quantize_static(_Net().eval(), [x], progress=False)
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    hint = (
        rf"needs the 'onnx' extra \({missing} is not installed\): pip install 'zeropoint\[onnx\]'"
    )
    with pytest.raises(ImportError, match=r"compare_executions\(onnx=True\) " + hint):
        zp.compare_executions(model_q, [x], onnx=True)
    with pytest.raises(ImportError, match=hint):
        zp.analyze(None, model_q, [x], consistency=True, progress=False)
    if missing == "onnx":
        with pytest.raises(ImportError, match="ONNX export " + hint):
            zp.export_onnx(model_q, tmp_path / "m.onnx", x)
        wo = zp.quantize_dynamic(_Net().eval(), config=zp.int4_weight_only(group_size=4))
        with pytest.raises(ImportError, match="ONNX export " + hint):
            zp.export_weight_only_onnx(wo, tmp_path / "w.onnx", (x,))
