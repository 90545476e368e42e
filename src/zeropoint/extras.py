"""Optional dependencies, imported only by the functions that need them.

``import zeropoint`` needs torch, numpy, safetensors and tqdm only; ONNX export and ONNX Runtime
comparisons need the ``onnx`` extra (``pip install 'zeropoint[onnx]'``). `require` imports such
a module or raises an ImportError that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnx_ir": "onnx", "matplotlib": "plots"}


def require(module: str, purpose: str) -> ModuleType:
    """``module`` imported, or ImportError: "<purpose> needs the '<extra>' extra (<module> is not
    installed): pip install 'zeropoint[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0])
        hint = f"the '{extra}' extra" if extra else f"the package {module!r}"
        install = f"pip install 'zeropoint[{extra}]'" if extra else f"pip install {module}"
        raise ImportError(f"{purpose} needs {hint} ({module} is not installed): {install}") from exc


__all__ = ["EXTRAS", "require"]
