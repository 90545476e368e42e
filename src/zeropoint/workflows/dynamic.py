"""Dynamic quantization (and weight-only quantization): swap Linear layers, no calibration data.

    model_q = zp.quantize_dynamic(model)                          # int8 weights, per-token acts
    model_q = zp.quantize_dynamic(model, zp.int4_weight_only())   # int4 groups of 32, float acts

The layers are swapped in place in a copy of the model (the float model is untouched unless
``inplace=True``), so the model keeps its class and its methods — e.g. a sentence-transformers
model still has `encode`. No graph capture is needed: the quantizers live inside the layers.
"""

from __future__ import annotations

import copy

from torch import nn

from zeropoint.nn.dynamic import DynamicQuantLinear, WeightOnlyEmbedding, WeightOnlyLinear
from zeropoint.workflows.config import QuantConfig, int8_dynamic
from zeropoint.workflows.graph import QuantState


def quantize_dynamic(
    model: nn.Module,
    config: QuantConfig | None = None,
    inplace: bool = False,
    reduce_range: bool = False,
) -> nn.Module:
    """Swap every Linear the config selects for `DynamicQuantLinear` (config.dynamic, int8
    weights) or `WeightOnlyLinear` (config.activation is None: weight-only), and every Embedding
    it selects for `WeightOnlyEmbedding` (codes per row, or per group within a row)."""
    config = config or int8_dynamic()
    if not config.dynamic and config.activation is not None:
        raise ValueError(
            "quantize_dynamic needs a dynamic config (activations chosen at run time, e.g. "
            "zp.int8_dynamic()) or a weight-only one (activation=None, e.g. zp.int4_weight_only())"
        )
    if config.weight is None:
        raise ValueError("quantize_dynamic needs a weight scheme")
    model = model if inplace else copy.deepcopy(model)
    config.check_names(model)
    state = QuantState(config, "dynamic" if config.dynamic else "weight_only", capture="module")
    targets = []
    for name, module in model.named_modules():
        if type(module) not in (nn.Linear, nn.Embedding):
            continue
        resolved = config.resolve(name, module)
        if resolved is None or resolved[0] is None:
            continue
        targets.append((name, module, resolved))
    for name, module, (w_scheme, a_scheme) in targets:
        assert w_scheme is not None
        new: nn.Module
        if isinstance(module, nn.Embedding):
            new = WeightOnlyEmbedding(module, w_scheme)  # a lookup has no activation to quantize
        elif config.dynamic and a_scheme is not None:
            new = DynamicQuantLinear(module, w_scheme, config.per_token, reduce_range)
        else:
            new = WeightOnlyLinear(module, w_scheme)
        model.set_submodule(name, new)
        state.layers[name] = (w_scheme, a_scheme if config.dynamic else None)
    if not targets:
        raise ValueError(
            f"{type(model).__name__} has no Linear or Embedding layer that the config selects"
        )
    model.__dict__["_zeropoint"] = state
    return model
