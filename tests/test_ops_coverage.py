"""Every entry of the operator table through the whole pipeline: simulation, integer engine and
ONNX Runtime agree per layer (fed the same codes) and end to end, the export keeps the batch
dimension dynamic, and nothing runs in float that the table covers.

The networks are small and random (seeded): the point is the arithmetic of each operation, not
accuracy (the zoo of trained networks checks that)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import zeropoint as zp
from tests.deployment import deploy, seeded
from zeropoint.ops import OPS


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, gate: nn.Module) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(c, max(c // 4, 2), 1)
        self.expand = nn.Conv2d(max(c // 4, 2), c, 1)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(F.silu(self.reduce(s)))
        return x * self.gate(s)


class Conv2dZoo(nn.Module):
    """Padding modes, TF-"same" padding, depthwise and grouped convs, dilation, BN after ReLU,
    element-wise activations, squeeze-excitation, pools, up-sampling with skip concatenation,
    a transposed conv, slicing and a flattening head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, padding_mode="reflect")
        self.bn_after_relu = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, groups=16)  # TF-"same" explicit pad before it
        self.grouped = nn.Conv2d(
            16, 16, 3, padding=2, dilation=2, groups=4, padding_mode="replicate"
        )
        self.same = nn.Conv2d(16, 16, 4, padding="same", padding_mode="circular")
        self.se = SqueezeExcite(16, nn.Hardsigmoid())
        self.se2 = SqueezeExcite(16, nn.Sigmoid())
        self.pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.merge = nn.Conv2d(8 + 16, 16, 1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.head = nn.Linear(8 * 3 * 3, 10)
        self.act = nn.LeakyReLU(0.1)
        with torch.no_grad():  # a batch norm with real statistics
            self.bn_after_relu.running_mean.uniform_(0.1, 0.5)
            self.bn_after_relu.running_var.uniform_(0.5, 2.0)
            self.bn_after_relu.weight.uniform_(0.5, 1.5)
            self.bn_after_relu.bias.uniform_(-0.2, 0.2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn_after_relu(F.relu(self.stem(x)))  # 32x32
        y = self.dw(F.pad(x, (0, 1, 0, 1)))  # 16x16
        y = F.hardtanh(y, 0.0, 6.0)
        y = self.act(self.grouped(y))
        y = F.gelu(self.same(y)) + y
        y = self.se(F.hardswish(y))
        y = self.se2(torch.tanh(y))
        up = F.relu(self.up(y))  # 32x32
        skip = F.interpolate(y, scale_factor=2, mode="nearest")
        z = self.merge(torch.cat([up, skip], dim=1))
        z = torch.clamp(self.pool(z), -1.0, 3.0)  # 16x16; a clip of a max pool: a table
        z = self.avg(self.pad(z))  # 17x17
        z = F.adaptive_avg_pool2d(F.relu(z[:, :8]), (3, 3))  # a ReLU on codes; uneven windows
        z = z.permute(0, 1, 3, 2).transpose(2, 3)
        return self.head(z.view(z.size(0), -1))


class Conv1dZoo(nn.Module):
    """A 1-D audio-style network: BatchNorm1d after ReLU, MaxPool1d, AvgPool1d, ConvTranspose1d,
    adaptive pooling, unsqueeze / squeeze and a Python flag in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 8, 5, stride=2, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 16, 3, dilation=2, padding=2, padding_mode="reflect")
        self.t = nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1)
        self.head = nn.Linear(8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(0.1, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: Tensor, embed: bool = False) -> Tensor:
        x = F.max_pool1d(self.bn(F.relu(self.c1(x))), 2)
        x = F.avg_pool1d(F.elu(self.c2(x)), 2, ceil_mode=True)
        x = F.relu6(self.t(x))
        e = F.adaptive_avg_pool1d(x, 1).squeeze(-1)
        if embed:
            return e
        return self.head(e)[:, None].squeeze(1)


class SequenceMlp(nn.Module):
    """Linear on (N, T, K) inputs, a residual, scalar arithmetic (x * 0.5 + 1, 3 - x), a
    division and maximum of two tensors, and a LayerNorm, which has no integer kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 24)
        self.b = nn.Linear(24, 12)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.b(F.gelu(self.a(x))) + x
        h = torch.maximum(h * 0.5 + 1, 3 - h) / (torch.sigmoid(h) + 1)
        return self.head(self.norm(h)).mean(1)


@pytest.fixture(scope="module")
def conv2d_zoo() -> tuple[nn.Module, list[Tensor], Tensor]:
    torch.manual_seed(0)
    model = Conv2dZoo().eval()
    gen = seeded(1)
    calib = [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(4)]
    return model, calib, torch.randn(8, 3, 32, 32, generator=gen)


def test_every_2d_operation_deploys_with_three_executions_agreeing(
    conv2d_zoo: tuple[nn.Module, list[Tensor], Tensor], tmp_path: Path
) -> None:
    model, calib, test = conv2d_zoo
    d = deploy(model, calib, test, tmp_path)
    kinds = {s.kind for s in d.program.steps}
    assert {"conv2d", "channel_affine", "pad", "unary_table", "binary_table", "add", "mean",
            "conv_transpose2d", "upsample_nearest", "cat", "max_pool", "avg_pool",
            "adaptive_avg_pool", "getitem", "permute", "reshape", "linear", "table",
            "relu_codes"} <= kinds  # fmt: skip
    assert d.report.predictions["sim_engine"] >= 0.875  # 8 random samples: at most one flip


def test_1d_network_with_a_python_flag_deploys(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Conv1dZoo().eval()
    gen = seeded(2)
    calib = [torch.randn(8, 1, 64, generator=gen) for _ in range(4)]
    d = deploy(model, calib, torch.randn(8, 1, 64, generator=gen), tmp_path)
    kinds = {s.kind for s in d.program.steps}
    assert {"conv1d", "channel_affine", "max_pool", "avg_pool", "conv_transpose1d",
            "adaptive_avg_pool", "squeeze", "unary_table"} <= kinds  # fmt: skip
    assert "embed=False" in zp.workflows.graph.state_of(d.model_q).capture
    with pytest.raises(Exception, match="embed"):  # the captured branch is asserted
        d.model_q(torch.randn(2, 1, 64), embed=True)


def test_unknown_operations_run_in_float_everywhere_and_are_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SequenceMlp().eval()
    gen = seeded(3)
    calib = [torch.randn(6, 5, 12, generator=gen) for _ in range(4)]
    d = deploy(model, calib, torch.randn(8, 5, 12, generator=gen), tmp_path, float_ok=("norm",))
    assert d.program.fallbacks == ["norm"]
    report = zp.export_onnx.__module__  # the exporter names it the same way
    from zeropoint.export.onnx import export_report

    assert export_report(d.model_q, torch.randn(2, 5, 12))["float"] == ["norm"], report


def test_operator_table_entries_are_complete() -> None:
    """Every node-matching entry knows how to run in integers and how to be written to ONNX."""
    for spec in OPS:
        if spec.role == "identity" or spec.role == "clip":
            continue
        assert spec.kernel is not None and spec.emit is not None, spec.kind
        assert spec.lower is not None or spec.finalize is not None, spec.kind


class DeadChannels(nn.Module):
    """After batch-norm folding some output channels have weights ≈ 1e-9 and bias −1: their
    per-channel weight scale is tiny, and S_x·S_w would put the bias far outside int32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.conv.weight[:3] = 3e-9  # dead channels
            self.conv.bias[:3] = 0.0
            self.bn.bias[:3] = -1.0
            self.bn.running_var.fill_(1.0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return torch.cat([y, self.out(F.relu(y))], 1)


def test_dead_channels_raise_the_weight_scale_and_agree_everywhere(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DeadChannels().eval()
    gen = seeded(4)
    calib = [torch.randn(4, 3, 16, 16, generator=gen) for _ in range(3)]
    test = torch.randn(8, 3, 16, 16, generator=gen)
    d = deploy(model, calib, test, tmp_path)
    conv = d.model_q.conv
    w_qp = conv.weight_qparams()
    x_qp = conv.input_qparams()
    assert x_qp is not None
    # the raised scale keeps |q_b| = |b| / (S_x·S_w) within 2^30 (zeropoint.bias.BIAS_LIMIT)
    q_b = (conv.bias.detach().double() / (x_qp.scale.double() * w_qp.scale.double())).abs()
    assert float(q_b.max()) <= 2**30 * (1 + 1e-6)
    base = zp.nn.modules.frozen_qparams(conv.weight_quant)
    assert base is not None  # the weights' own scale, ~3e-9 / 63, was raised (by ~500x here)
    assert bool((w_qp.scale[:3] > 100 * base.scale[:3]).all())
    assert torch.equal(w_qp.scale[3:], base.scale[3:])  # live channels keep their scale
    with torch.no_grad():
        fp32 = model(test)[:, :3]
        sim = d.model_q(test)[:, :3]
    out_qp = d.model_q.act_quant["cat"].qparams()
    ort_out = torch.from_numpy(
        __import__("tests.deployment", fromlist=["session"])
        .session(d.onnx_path)
        .run(None, {"x": test.numpy()})[0]
    )[:, :3]
    step = float(out_qp.scale)
    assert torch.allclose(fp32, torch.full_like(fp32, -1.0), atol=1e-6)
    assert (sim - fp32).abs().max() <= step  # the dead channels stay at −1 in the simulation
    assert (ort_out - sim).abs().max() <= step * 1.0001  # and in ONNX Runtime, within 1 LSB


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if y.mean() > 0:  # data-dependent control flow: torch.fx cannot capture it
            y = y * 2
        return y


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _Branchy()

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


def test_uncapturable_model_names_the_construct_and_module() -> None:
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"if y\.mean\(\) > 0.*in module 'block'"):
        q = zp.quantize_static(_Outer().eval(), [x], progress=False)
    for call in (zp.to_integer, lambda m, e: zp.export_onnx(m, "/tmp/never.onnx", e)):
        with pytest.raises(ValueError, match=r"module boundaries .*if y\.mean\(\) > 0.*'block'"):
            call(q, x)


def test_dynamic_models_say_why_they_have_no_integer_program() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    q = zp.quantize_dynamic(model)
    with pytest.raises(ValueError, match="quantized at run time, per call"):
        zp.to_integer(q, torch.randn(2, 8))
