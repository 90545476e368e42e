"""Batch-norm folding is exact: the folded layer equals layer + BN in eval mode (float32, 1e-5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from zeropoint.fold import bn_scale_shift, fold_bn


def _randomize_bn(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=g))  # type: ignore[union-attr]
        bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)  # type: ignore[union-attr]
        bn.weight.copy_(torch.randn(n, generator=g))
        bn.bias.copy_(torch.randn(n, generator=g))
    bn.eval()


@pytest.mark.parametrize(
    ("layer", "bn", "shape"),
    [
        (nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), (2, 3, 9, 9)),
        (nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), (2, 8, 7, 7)),
        (nn.Conv1d(4, 6, 5), nn.BatchNorm1d(6), (3, 4, 20)),
        (nn.Linear(10, 7), nn.BatchNorm1d(7), (5, 10)),
        (nn.ConvTranspose2d(6, 4, 2, stride=2), nn.BatchNorm2d(4), (2, 6, 5, 5)),
        (
            nn.ConvTranspose2d(6, 4, 3, stride=2, groups=2, bias=False),
            nn.BatchNorm2d(4),
            (2, 6, 5, 5),
        ),
    ],
    ids=["conv", "depthwise", "conv1d", "linear", "convT", "convT-groups"],
)
@pytest.mark.parametrize("relu", [False, True])
def test_folded_layer_equals_layer_then_bn(
    layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...], relu: bool
) -> None:
    _randomize_bn(bn, seed=len(shape))
    layer.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    act = nn.ReLU() if relu else nn.Identity()
    with torch.no_grad():
        reference = act(bn(layer(x)))
        folded = act(fold_bn(layer, bn)(x))
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)


def test_scale_and_shift_closed_form() -> None:
    bn = nn.BatchNorm1d(2, eps=0.0)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))  # type: ignore[union-attr]
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))  # type: ignore[union-attr]
        bn.weight.copy_(torch.tensor([3.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
    s, t = bn_scale_shift(bn)
    # s = γ/√σ² = [3/2, 1/0.5]; t = β − s·μ = [0.5 − 1.5, 0 + 4]
    assert s.tolist() == [1.5, 2.0] and t.tolist() == [-1.0, 4.0]


def test_folding_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="running statistics"):
        fold_bn(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(ValueError, match="3 features but Conv2d has 2"):
        fold_bn(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(3))
    with pytest.raises(TypeError, match="cannot fold"):
        fold_bn(nn.ReLU(), nn.BatchNorm2d(2))  # type: ignore[arg-type]
