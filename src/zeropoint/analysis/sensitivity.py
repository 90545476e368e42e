"""Per-unit sensitivity of a converted model: exact one-at-a-time measurements and a fast estimate.

Exact (AIMET's per-layer quantizer analysis): the model's metric with *only* unit u quantized,
and with every unit *but* u quantized, each on the same data, as a drop from the float model
(`zeropoint.analysis.metrics`). Each run starts from cached values: the nodes that do not depend
on u keep their value from a base run (every unit off, or every unit on), so a unit near the
output costs a fraction of a forward pass (`torch.fx.Interpreter`'s ``initial_env``).

Fast (a Fisher estimate; BRECQ, Li et al. 2021, uses the same output Fisher): quantizing u alone
moves its output value P by δ = P_q − P (one layer forward on the float input, cached). To second
order the expected change of the model's output distribution is

    KL(p ‖ p_δ) ≈ ½ · δᵀ Jᵀ F J δ,   F = E_{y∼p}[∇_z log p(y) ∇_z log p(y)ᵀ]  (z: the logits)

and with g = ∂ log p(y)/∂P for a label y sampled from the float model's own softmax,
E_y[(gᵀδ)²] = δᵀ Jᵀ F J δ: so the estimate is ½ · mean over rows and samples of (gᵀδ)², from
one forward and ``samples`` backward passes of the float model for all units together (and one
forward of each unit). For outputs that are not logits (``likelihood="gaussian"``), y − z ∼ N(0, I)
gives E[(gᵀδ)²] = ‖J δ‖², the first-order squared change of the output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from zeropoint.analysis.metrics import Metric
from zeropoint.analysis.units import (
    PartialRunner,
    Unit,
    descendants,
    enabled,
    float_simulation,
    output_tensor,
    state_of,
)

Progress = Callable[[str, int], Any]


def _graph(model: nn.Module) -> fx.GraphModule:
    gm = state_of(model).graph_module
    assert gm is not None  # find_units refused models without a graph
    return gm


def _by_name(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


@dataclass
class Batch:
    """One batch of the analysis data with the float model's output on it."""

    x: Tensor
    labels: Tensor | None
    reference: Tensor


class ExactSensitivity:
    """One-at-a-time measurements on ``batches`` (see the module docstring).

    ``variants``: other converted versions of the same model (other bit widths, from the same
    float model and config structure): ``only(name, variant)`` quantizes that variant's unit
    alone. Node names must match (they do for one model under configs that quantize the same
    layers)."""

    def __init__(self, model: nn.Module, units: list[Unit], batches: list[Batch],
                 metric: Metric) -> None:  # fmt: skip
        self.model, self.units, self.batches, self.metric = model, units, batches, metric
        self.gm = _graph(model)
        self.reference_value = metric.fn(
            torch.cat([b.reference for b in batches]), torch.cat([b.reference for b in batches]),
            _labels(batches),
        )  # fmt: skip

    def _value(self, outputs: list[Tensor]) -> float:
        ref = torch.cat([b.reference for b in self.batches])
        return self.metric.fn(torch.cat(outputs), ref, _labels(self.batches))

    def drop_of(self, outputs: list[Tensor]) -> float:
        return self.metric.drop(self._value(outputs), self.reference_value)

    def full(self, model: nn.Module, on: set[str] | None = None) -> float:
        """The drop of ``model`` with the units in ``on`` quantized (None: all)."""
        units = find_units_cached(model)
        names = {u.name for u in units} if on is None else on
        outs = []
        with enabled(units, names), float_simulation(model):
            gm = _graph(model)
            for b in self.batches:
                outs.append(output_tensor(gm(b.x)).detach())
        return self.drop_of(outs)

    def one_at_a_time(
        self, names: Sequence[str] | None = None, variant: nn.Module | None = None,
        all_but: bool = True, progress: Progress | None = None,
    ) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
        """(drop with only u quantized, drop with all but u quantized) per unit name. With a
        ``variant``, "only u" quantizes the variant's unit (the "all but" side is skipped)."""
        target = variant if variant is not None else self.model
        units = find_units_cached(target)
        names = list(names) if names is not None else [u.name for u in units]
        by_name = {u.name: u for u in units}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"no unit named {missing[0]!r} (units: {list(by_name)[:6]} ...)")
        everything = set(by_name)
        gm = _graph(target)
        nodes = _by_name(gm)
        only_out: dict[str, list[Tensor]] = {n: [] for n in names}
        allbut_out: dict[str, list[Tensor]] = {n: [] for n in names}
        with float_simulation(target):
            for b in self.batches:
                base_off = _record(target, units, gm, b.x, set())
                base_on = _record(target, units, gm, b.x, everything) if all_but else {}
                for name in names:
                    dirty = {n.name for n in descendants(by_name[name].nodes)}
                    with enabled(units, {name}):
                        only_out[name].append(_resume(gm, nodes, base_off, dirty, b.x))
                    if all_but and variant is None:
                        with enabled(units, everything - {name}):
                            allbut_out[name].append(_resume(gm, nodes, base_on, dirty, b.x))
                    if progress is not None:
                        progress(name, 1)
        only = {n: self.drop_of(o) for n, o in only_out.items()}
        allbut = {n: self.drop_of(o) for n, o in allbut_out.items() if o}
        return only, allbut


_UNITS: dict[int, tuple[Any, list[Unit]]] = {}


def find_units_cached(model: nn.Module) -> list[Unit]:
    """`find_units`, remembered per model object (the graph does not change after convert)."""
    from zeropoint.analysis.units import find_units

    gm = state_of(model).graph_module
    hit = _UNITS.get(id(model))
    if hit is not None and hit[0] is gm:
        return hit[1]
    units = find_units(model)
    _UNITS.clear()  # one model at a time is the common case; keep no stale references
    _UNITS[id(model)] = (gm, units)
    return units


def _labels(batches: list[Batch]) -> Tensor | None:
    if any(b.labels is None for b in batches):
        return None
    return torch.cat([b.labels for b in batches])  # type: ignore[misc]


def _record(model: nn.Module, units: list[Unit], gm: fx.GraphModule, x: Tensor,
            on: set[str]) -> dict[str, Any]:  # fmt: skip
    with enabled(units, on):
        runner = PartialRunner(gm)
        runner.run(x)
    return {n.name: v for n, v in runner.kept.items()}


def _resume(gm: fx.GraphModule, nodes: dict[str, fx.Node], base: dict[str, Any],
            dirty: set[str], x: Tensor) -> Tensor:  # fmt: skip
    env = {nodes[k]: v for k, v in base.items() if k not in dirty and k in nodes}
    out = PartialRunner(gm, keep=set()).run(x, initial_env=env)
    return output_tensor(out).detach()


# ---------------------------------------------------------------------------- fast estimate


def unit_deltas(
    variant: nn.Module, names: Sequence[str], base_values: dict[str, Any]
) -> dict[str, Tensor]:
    """δ = P_q − P for each named unit of ``variant`` quantized alone, from the float values of
    its inputs (``base_values``: node name → value of a float run)."""
    units = {u.name: u for u in find_units_cached(variant)}
    gm = _graph(variant)
    deltas: dict[str, Tensor] = {}
    with float_simulation(variant):
        for name in names:
            unit = units[name]
            with enabled(list(units.values()), {name}):
                runner = fx.Interpreter(gm, garbage_collect_values=False)
                for n in unit.nodes:
                    for arg in _arg_nodes(n):
                        if arg not in runner.env:
                            runner.env[arg] = base_values[arg.name]
                    runner.env[n] = runner.run_node(n)
                quantized = runner.env[unit.point]
            deltas[name] = (quantized - base_values[unit.point.name]).detach()
    return deltas


def _arg_nodes(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)  # type: ignore[func-returns-value]
    return found


def fisher_estimates(
    model: nn.Module,
    batches: list[Batch],
    variants: dict[Any, nn.Module] | None = None,
    names: Sequence[str] | None = None,
    samples: int = 4,
    likelihood: str = "categorical",
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[Any, dict[str, float]]:
    """Fisher estimates of the KL (categorical) or squared output change (gaussian) caused by
    quantizing each unit alone, for ``model`` (key None) and each of ``variants`` (see the
    module docstring). Labels are sampled with a generator seeded by ``seed``."""
    if likelihood not in ("categorical", "gaussian"):
        raise ValueError(f"likelihood={likelihood!r}: expected 'categorical' or 'gaussian'")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    models: dict[Any, nn.Module] = {None: model, **(variants or {})}
    units = find_units_cached(model)
    names = list(names) if names is not None else [u.name for u in units]
    by_name = {u.name: u for u in units}
    gm = _graph(model)
    points = [by_name[n].point for n in names]
    sums: dict[Any, dict[str, float]] = {k: dict.fromkeys(names, 0.0) for k in models}
    rows = 0
    generator = torch.Generator().manual_seed(seed)
    for b in batches:
        with enabled(units, set()), float_simulation(model):
            x = b.x.detach().clone().requires_grad_(True)
            runner = PartialRunner(gm)
            out = output_tensor(runner.run(x))
            base = {n.name: v for n, v in runner.kept.items()}
            values = [runner.kept[p] for p in points]
            deltas = {k: unit_deltas(m, names, base) for k, m in models.items()}
            for s in range(samples):
                z = out.reshape(-1, out.shape[-1]) if out.dim() > 1 else out.reshape(1, -1)
                if likelihood == "categorical":
                    log_p = torch.log_softmax(z.double(), dim=-1)
                    y = torch.multinomial(log_p.detach().exp(), 1, generator=generator)
                    score = log_p.gather(-1, y).sum()
                else:
                    eps = torch.randn(z.shape, generator=generator, dtype=z.dtype)
                    score = (z * eps).sum()
                grads = torch.autograd.grad(score, values, retain_graph=s + 1 < samples)
                for name, g in zip(names, grads, strict=True):
                    for k in models:
                        d = deltas[k][name]
                        # products in float32, sums in float64
                        inner = (g.detach() * d).reshape(d.shape[0], -1).sum(1, dtype=torch.float64)
                        sums[k][name] += float((inner**2).sum())
        rows += b.x.shape[0]
        if progress is not None:
            progress("fisher", 1)
    return {k: {n: 0.5 * v / (rows * samples) for n, v in d.items()} for k, d in sums.items()}


__all__ = ["Batch", "ExactSensitivity", "find_units_cached", "fisher_estimates", "unit_deltas"]
