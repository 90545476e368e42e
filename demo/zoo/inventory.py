"""Which operation kinds a network contains, read from its torch.fx graph.

Each graph node is named by what it calls: a module by its class (``Conv2d``, ``ReLU6``), with
the variants that matter for deployment in brackets (``Conv2d[depthwise]``, ``Conv2d[groups]``,
``Conv2d[dilation]``, ``Conv2d[stride]``, ``Conv2d[padding_mode=reflect]``,
``MaxPool2d[padding]``, ``MaxPool2d[ceil_mode]``, ``Upsample[nearest]``); a function by its name
(``add``, ``cat``, ``interpolate[nearest]``, ``pad``, ``getitem``, ``hardtanh``); a tensor method
with a leading dot (``.view``, ``.size``, ``.mean``, ``.permute``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


def module_kinds(module: nn.Module) -> list[str]:
    """The kind of one module, and its variants (see the module doc)."""
    name = type(module).__name__
    kinds = [name]
    if isinstance(module, _CONVS):
        groups, cin = module.groups, module.in_channels
        if groups > 1:
            kinds.append(f"{name}[depthwise]" if groups == cin else f"{name}[groups]")
        if any(d != 1 for d in module.dilation):
            kinds.append(f"{name}[dilation]")
        if any(s != 1 for s in module.stride):
            kinds.append(f"{name}[stride]")
        if module.padding_mode != "zeros":
            kinds.append(f"{name}[padding_mode={module.padding_mode}]")
    elif isinstance(module, _POOLS):
        padding = module.padding
        if (padding if isinstance(padding, int) else max(padding)) != 0:
            kinds.append(f"{name}[padding]")
        if module.ceil_mode:
            kinds.append(f"{name}[ceil_mode]")
    elif isinstance(module, nn.Upsample):
        kinds.append(f"{name}[{module.mode}]")
    return kinds


def op_inventory(model: nn.Module, concrete_args: dict[str, Any] | None = None) -> Counter[str]:
    """How many graph nodes of each kind ``model`` has, captured with ``torch.fx.symbolic_trace``
    (``concrete_args`` fixes Python flags of ``forward``, e.g. ``{"embed": False}``)."""
    gm = torch.fx.symbolic_trace(model, concrete_args=concrete_args)
    modules = dict(gm.named_modules())
    counts: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            counts.update(module_kinds(modules[str(node.target)]))
        elif node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            counts[name] += 1
            if name == "interpolate":
                counts[f"interpolate[{node.kwargs.get('mode', 'nearest')}]"] += 1
        elif node.op == "call_method":
            counts[f".{node.target}"] += 1
    return counts
