"""Graph capture with torch.fx: which forward arguments become constants, and, when capture fails,
which Python construct in which module stopped it.

Models branch on Python arguments (``forward(x, embed=False)``): those arguments are taken as
constants — their default values, overridden by the non-tensor values the user passes as
``concrete_args`` (or in a mapping-style calibration batch). The captured graph then asserts them
at run time (torch.fx inserts the check), so calling it with another value fails loudly instead of
running the wrong branch.
"""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass
from typing import Any

from torch import Tensor, fx, nn

from zeropoint.nn.channel_clip import ChannelClip


@dataclass(frozen=True)
class Capture:
    """How a model was captured: the graph (None when capture failed), the arguments taken as
    constants, and otherwise the reason (naming the construct and the module)."""

    graph: fx.GraphModule | None
    concrete_args: dict[str, Any]
    reason: str = ""

    @property
    def description(self) -> str:
        if self.graph is None:
            return "module-boundary"
        if not self.concrete_args:
            return "fx"
        args = ", ".join(f"{k}={v!r}" for k, v in self.concrete_args.items())
        return f"fx (constants: {args})"


def constant_arguments(model: nn.Module, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """forward's parameters with a non-tensor default (bool, int, float, str, None), taken at
    that default unless ``given`` says otherwise; ``given`` values that are tensors are ignored
    (tensors stay graph inputs)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    constants: dict[str, Any] = {}
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is inspect.Parameter.empty:
            continue
        if isinstance(p.default, bool | int | float | str | type(None)):
            constants[name] = p.default
    for name, value in (given or {}).items():
        if name not in params:
            raise ValueError(
                f"concrete_args names {name!r}, but {type(model).__name__}.forward has no such "
                f"parameter (it has {list(params)})"
            )
        if not isinstance(value, Tensor):
            constants[name] = value
    return constants


class _Tracer(fx.Tracer):
    """fx's tracer, remembering which module it is inside when something goes wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.path: list[str] = []
        self.failed_in: str | None = None  # the innermost module when tracing failed

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # equalization's per-channel clip stays one node, a clip the layer before it fuses
        return isinstance(m, ChannelClip) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if type(m) is nn.Identity and len(args) == 1 and not kwargs:
            # no node: a batch norm folded into its conv leaves an Identity between the conv and
            # its activation, and a node there would split the pair (and quantize between them)
            return args[0]
        self.path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path[-1]
            raise
        finally:
            self.path.pop()


def _construct(exc: BaseException) -> str:
    """The user's source line where tracing failed (the last frame outside torch)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    line = (f.line or "").split("  #")[0].strip()
    return f"`{line}` ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})" if line else ""


def capture(model: nn.Module, concrete_args: dict[str, Any] | None = None) -> Capture:
    """torch.fx capture of ``model`` with its Python arguments as constants (module docstring)."""
    constants = constant_arguments(model, concrete_args)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model, concrete_args=constants or None)
    except Exception as exc:
        where = tracer.failed_in or ""
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        construct = _construct(exc)
        reason = f"{type(exc).__name__}: {message}"
        if construct:
            reason += f" at {construct}"
        reason += f" in module {where!r}" if where else f" in {type(model).__name__}.forward"
        return Capture(None, constants, reason)
    name = type(model).__name__
    return Capture(fx.GraphModule(tracer.root, graph, name), constants)


__all__ = ["Capture", "capture", "constant_arguments"]
