"""Conv + batch norm for QAT, folded the way Jacob et al. (2018, §3.2 and fig. C.8) fold it.

While training, the batch statistics of this batch's float convolution y = W ∗ x are used:

    μ_B, σ²_B = mean and variance of y per output channel
    W_fold = W · γ/√(σ²_B + ε),   b_fold = β + (b − μ_B) · γ/√(σ²_B + ε)
    output = Q(W_fold) ∗ x + b_fold

so the weights that are fake-quantized are the ones inference will use; the running statistics
are updated as in nn.BatchNorm2d. After `freeze_bn()` (late in training) the running statistics
replace the batch statistics, and `to_conv()` folds them for good (the inference form of
`zeropoint.fold`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zeropoint.fold import fold_bn
from zeropoint.nn.modules import QuantConv2d


class QuantConvBn2d(QuantConv2d):
    """A QuantConv2d that carries its batch norm and folds it on the fly."""

    bn: nn.BatchNorm2d

    @classmethod
    def from_conv_bn(cls, conv: QuantConv2d, bn: nn.BatchNorm2d) -> QuantConvBn2d:
        new = cls.from_float(conv, conv.weight_quant, conv.input_quant, conv.output_quant)
        new.bn = bn
        new.bn_frozen = False
        return new  # type: ignore[no-any-return]

    def _fold(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        bn = self.bn
        gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        bias = self.bias if self.bias is not None else torch.zeros_like(var)
        return self.float_weight * scale.reshape(-1, 1, 1, 1), beta + (bias - mean) * scale

    def folded_weight_bias(self) -> tuple[Tensor, Tensor]:
        """(W_fold, b_fold) with the running statistics (the inference form)."""
        assert self.bn.running_mean is not None and self.bn.running_var is not None
        return self._fold(self.bn.running_mean, self.bn.running_var)

    def forward(self, x: Tensor) -> Tensor:
        x = self._in(x)
        if self.training and not self.bn_frozen:
            y = self._conv_forward(x, self.float_weight, self.bias)  # the float conv, for stats
            mean = y.mean(dim=(0, 2, 3))
            var = y.var(dim=(0, 2, 3), unbiased=False)
            bn = self.bn
            if bn.running_mean is not None and bn.running_var is not None:
                with torch.no_grad():
                    n = y.numel() / y.shape[1]
                    m = bn.momentum if bn.momentum is not None else 0.1
                    bn.running_mean.mul_(1 - m).add_(m * mean.detach())
                    bn.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n - 1, 1))
                    if bn.num_batches_tracked is not None:
                        bn.num_batches_tracked.add_(1)
            w, b = self._fold(mean, var)
        else:
            w, b = self.folded_weight_bias()
        if self.weight_quant is not None:
            w = self.weight_quant(w)
        return self._out(self._conv_forward(x, w, self.quantized_bias(b)))

    def freeze_bn(self) -> None:
        """Use the running statistics from now on (Jacob et al.: late in training)."""
        self.bn_frozen = True

    def to_conv(self) -> QuantConv2d:
        """Fold the running statistics into the weights (`zeropoint.fold`): a plain QuantConv2d."""
        conv = QuantConv2d.from_float(self, self.weight_quant, self.input_quant, self.output_quant)
        conv._modules.pop("bn", None)
        conv.weight = nn.Parameter(self.float_weight.detach().clone())
        if self.bias is not None:
            conv.bias = nn.Parameter(self.bias.detach().clone())
        return fold_bn(conv, self.bn)  # type: ignore[return-value]
