"""The metrics the issues report, as plain functions on tensors.

Agreement metrics compare a model's logits with the fp32 model's on the same inputs (there are no
labels for the scikit-image photos): the fp32 top-1 class is the reference label.

- top-k agreement: the share of inputs whose fp32 top-1 class is among the model's k best;
- confident agreement: the same, only on the inputs where the fp32 softmax gives its top class
  probability ≥ 0.5 (many photos are not ImageNet objects; unsure views flip easily);
- mean KL: the mean over inputs of KL(p_fp32 ‖ p_model) = Σ_c p_fp32,c (log p_fp32,c − log p_model,c),
  the softmax taken in float64 (smooth; less noisy than agreement);
- accuracy against labels, and PSNR = 10·log10(peak² / MSE) per image, averaged.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import Tensor

CONFIDENT_PROBABILITY = 0.5


def _check_pair(logits: Tensor, reference: Tensor) -> None:
    if logits.ndim != 2 or logits.shape != reference.shape:
        raise ValueError(
            f"logits and reference must be (N, classes) of one shape, got {tuple(logits.shape)} "
            f"and {tuple(reference.shape)}"
        )


def top_k_agreement(logits: Tensor, reference: Tensor, k: int = 1) -> float:
    """Percentage of rows whose reference top-1 class is among ``logits``' top ``k`` classes."""
    _check_pair(logits, reference)
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be in [1, {logits.shape[1]}], got {k}")
    if logits.shape[0] == 0:
        return float("nan")
    target = reference.argmax(1, keepdim=True)
    hits = (logits.topk(k, dim=1).indices == target).any(1)
    return 100.0 * float(hits.double().mean())


def confident_mask(reference: Tensor, threshold: float = CONFIDENT_PROBABILITY) -> Tensor:
    """Boolean (N,): the rows whose softmax top-1 probability is ≥ ``threshold``."""
    return torch.softmax(reference.double(), dim=1).amax(1) >= threshold


def confident_agreement(
    logits: Tensor, reference: Tensor, k: int = 1, threshold: float = CONFIDENT_PROBABILITY
) -> float:
    """Top-k agreement restricted to the rows where the reference is confident (see
    :func:`confident_mask`); NaN when no row is."""
    _check_pair(logits, reference)
    mask = confident_mask(reference, threshold)
    return top_k_agreement(logits[mask], reference[mask], k)


def mean_kl(logits: Tensor, reference: Tensor) -> float:
    """Mean over rows of KL(softmax(reference) ‖ softmax(logits)) in nats, computed in float64."""
    _check_pair(logits, reference)
    log_p = torch.log_softmax(reference.double(), dim=1)
    log_q = torch.log_softmax(logits.double(), dim=1)
    return float((log_p.exp() * (log_p - log_q)).sum(1).mean())


def agreement_report(logits: Tensor, reference: Tensor) -> dict[str, float]:
    """Every agreement metric at once: top-1, top-5, confident top-1 and top-5 (percent), the
    number of confident rows and the mean KL."""
    k5 = min(5, logits.shape[1])
    return {
        "top1": top_k_agreement(logits, reference, 1),
        "top5": top_k_agreement(logits, reference, k5),
        "confident_top1": confident_agreement(logits, reference, 1),
        "confident_top5": confident_agreement(logits, reference, k5),
        "n_confident": float(confident_mask(reference).sum()),
        "n": float(reference.shape[0]),
        "kl": mean_kl(logits, reference),
    }


def class_histogram(logits: Tensor) -> Counter[int]:
    """How many rows have each top-1 class."""
    return Counter(int(c) for c in logits.argmax(1))


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent against integer labels."""
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"expected logits (N, classes) and labels (N,), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    return 100.0 * float((logits.argmax(1) == labels).double().mean())


def psnr(prediction: Tensor, target: Tensor, peak: float = 1.0) -> float:
    """Mean over images (dim 0) of 10·log10(peak² / MSE_image), in dB, computed in float64."""
    if prediction.shape != target.shape or prediction.ndim < 2:
        raise ValueError(
            f"prediction and target must be batches of one shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    err = (prediction.double() - target.double()).flatten(1).pow(2).mean(1)
    return float((10.0 * torch.log10(peak**2 / err)).mean())
