"""Output metrics of a model against its float reference, and rank correlation.

A metric compares a model's outputs with the float model's on the same inputs (and labels when
the data has them):

    accuracy    % of rows whose argmax is the label (needs labels)
    agreement   % of rows whose argmax is the float model's argmax
    cosine      mean over rows of ⟨y, y_ref⟩ / (‖y‖·‖y_ref‖)  (outputs flattened per row)
    kl          mean over rows of KL(p_ref ‖ p) = Σ_c p_ref,c (log p_ref,c − log p_c), the
                softmax over the last dimension, in float64 (nats; lower is better)

The *drop* of a model is how much worse it is than the float model: reference − value for the
metrics where higher is better, value − reference for KL (whose reference is 0). Drops are what
the sensitivity analysis and the mixed-precision search add and compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Metric:
    """A named metric: ``fn(outputs, reference_outputs, labels) -> float`` and its direction."""

    name: str
    fn: Callable[[Tensor, Tensor, Tensor | None], float]
    higher_is_better: bool = True
    needs_labels: bool = False
    unit: str = ""

    def drop(self, value: float, reference: float) -> float:
        """How much worse ``value`` is than ``reference`` (positive: worse)."""
        return reference - value if self.higher_is_better else value - reference


def _rows(y: Tensor) -> Tensor:
    return y.detach().double().reshape(y.shape[0], -1)


def accuracy(y: Tensor, ref: Tensor, labels: Tensor | None) -> float:
    if labels is None:
        raise ValueError("metric 'accuracy' needs labels: give (inputs, labels) batches")
    return 100.0 * float((y.argmax(-1) == labels.reshape(-1)).double().mean())


def agreement(y: Tensor, ref: Tensor, labels: Tensor | None) -> float:
    return 100.0 * float((y.argmax(-1) == ref.argmax(-1)).double().mean())


def cosine(y: Tensor, ref: Tensor, labels: Tensor | None) -> float:
    a, b = _rows(y), _rows(ref)
    den = a.norm(dim=1) * b.norm(dim=1)
    cos = torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.ones_like(den))
    return float(cos.mean())


def kl(y: Tensor, ref: Tensor, labels: Tensor | None) -> float:
    log_p = torch.log_softmax(ref.detach().double(), dim=-1)
    log_q = torch.log_softmax(y.detach().double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", accuracy, True, True, "%"),
    "agreement": Metric("agreement", agreement, True, False, "%"),
    "cosine": Metric("cosine", cosine, True, False, ""),
    "kl": Metric("kl", kl, False, False, "nats"),
}


def resolve_metric(metric: str | Metric | None, has_labels: bool) -> Metric:
    """A metric by name, or the default: accuracy with labels, KL of the outputs without."""
    if metric is None:
        return METRICS["accuracy" if has_labels else "kl"]
    if isinstance(metric, Metric):
        return metric
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(
            f"unknown metric {metric!r}: expected one of {sorted(METRICS)} or a Metric"
        )
    found = METRICS[metric]
    if found.needs_labels and not has_labels:
        raise ValueError(f"metric {metric!r} needs labels: give (inputs, labels) batches")
    return found


def ranks(values: Tensor) -> Tensor:
    """Ranks 1..n of ``values`` (ties share their average rank), in float64."""
    v = values.double().reshape(-1)
    order = torch.argsort(v, stable=True)
    r = torch.empty_like(v)
    r[order] = torch.arange(1, len(v) + 1, dtype=torch.float64)
    for value in torch.unique(v):
        tied = v == value
        if int(tied.sum()) > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: Tensor | list[float], b: Tensor | list[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks (ties averaged);
    NaN when either side is constant or fewer than two values are given."""
    x, y = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(
            f"spearman needs two 1-D sequences of one length, got {x.shape}, {y.shape}"
        )
    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x) - (len(x) + 1) / 2, ranks(y) - (len(y) + 1) / 2
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


__all__ = ["METRICS", "Metric", "ranks", "resolve_metric", "spearman"]
