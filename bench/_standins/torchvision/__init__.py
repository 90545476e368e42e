"""A stand-in for torchvision, for bench/ptq.py only (never on the library's path).

The registry's torchvision wheel does not load with torch 2.13 here (``operator torchvision::nms
does not exist``), but aimet-torch imports it at module level for a handful of names it uses only
in code paths this benchmark never takes (RoI ops, an MNIST example, an ONNX op-name table). This
package provides those names; anything that would actually run them raises.
"""

from . import datasets, models, ops, transforms

__version__ = "0.0.0+standin"
__all__ = ["datasets", "models", "ops", "transforms"]
