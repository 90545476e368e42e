"""Cross-layer equalization and high-bias absorption: the float function kept, the ranges equal
after convergence, ReLU6 carried by a per-channel clip, absorption where the 3σ bound holds,
and every pair it cannot treat reported."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import zeropoint as zp
from zeropoint.ptq.equalize import (
    ChannelClip,
    channel_stats,
    equalization_report,
    equalize,
    fold_batchnorms,
)


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 2.8 + 0.2)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 3 - 1)
        if isinstance(m, nn.Conv2d):  # very different channel ranges: what equalization fixes
            m.weight.data *= torch.rand(m.weight.shape[0], 1, 1, 1, generator=gen) * 8 + 0.05


def cbr(i: int, o: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(i, o, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(o), nn.ReLU6()
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand → ReLU6 → 3x3 depthwise → ReLU6 → 1x1 project (+ x)."""

    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(
            cbr(c, h, 1), cbr(h, h, 3, groups=h), nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.blocks = nn.Sequential(InvertedResidual(8), InvertedResidual(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.fixture
def mobile() -> TinyMobileNet:
    torch.manual_seed(0)
    model = TinyMobileNet()
    _randomise_bn(model, torch.Generator().manual_seed(1))
    return model.eval()


def test_equalization_keeps_the_function_through_relu6_and_depthwise(mobile: nn.Module) -> None:
    x = torch.randn(8, 3, 12, 12)
    eq = equalize(mobile, absorb_bias=False)
    report = equalization_report(eq)
    # both pairs of each block's depthwise-separable chain; stem → block is a residual fork
    assert {(a, b) for a, b, _ in report.pairs} == {
        (f"blocks.{i}.conv.{a}.0", f"blocks.{i}.conv.{b}")
        for i in range(2)
        for a, b in ((0, "1.0"), (1, "2"))
    }
    assert report.converged and report.folded == []
    # the scaling of layer₁ lives in its batch norm: the model keeps its structure
    assert sum(isinstance(m, nn.BatchNorm2d) for m in eq.modules()) == 7
    folded = equalize(mobile, absorb_bias=False, fold=True)
    assert len(equalization_report(folded).folded) == 7
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        reference = mobile(x)
        for out in (eq(x), folded(x)):
            assert torch.allclose(
                out, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item()
            )


def test_converged_ranges_are_equal_across_every_pair(mobile: nn.Module) -> None:
    """DFQ's optimum: output channel i of W₁ and input channel i of W₂ have the same range
    √(r₁ᵢ r₂ᵢ) — for both pairs of a chain at once, after the sweeps converge. Ranges of the
    weights as quantized: batch norms folded."""
    eq = fold_batchnorms(equalize(mobile, absorb_bias=False, tol=1e-10, iterations=500))
    for first, second, _ in equalization_report(equalize(mobile, absorb_bias=False)).pairs:
        w1 = eq.get_submodule(first).weight.detach().double()
        w2 = eq.get_submodule(second).weight.detach().double()
        r1 = w1.reshape(w1.shape[0], -1).abs().amax(1)
        if eq.get_submodule(second).groups > 1:  # depthwise: input channel i is kernel i
            r2 = w2.reshape(w2.shape[0], -1).abs().amax(1)
        else:
            r2 = w2.abs().amax(dim=(0, 2, 3))
        assert torch.allclose(r1, r2, rtol=1e-4)


def test_relu6_becomes_a_clip_at_six_over_s(mobile: nn.Module) -> None:
    eq = equalize(mobile, absorb_bias=False)
    report = equalization_report(eq)
    clip = eq.get_submodule("blocks.0.conv.0.2")
    assert isinstance(clip, ChannelClip)
    s = report.scales[("blocks.0.conv.0.0", "blocks.0.conv.1.0")]
    assert torch.allclose(clip.upper.double(), 6.0 / s, rtol=1e-6)
    assert ("blocks.0.conv.0.2", "ChannelClip (exact)") in report.replaced


def test_relu6_as_relu_changes_the_model_and_says_so(mobile: nn.Module) -> None:
    eq = equalize(mobile, relu6="relu", absorb_bias=False)
    assert isinstance(eq.get_submodule("blocks.0.conv.0.2"), nn.ReLU)
    assert any("changes the float model" in why for _, why in equalization_report(eq).replaced)
    skipped = equalize(mobile, relu6="skip")
    assert not equalization_report(skipped).pairs
    assert any("ReLU6" in why for _, _, why in equalization_report(skipped).skipped)


class LinearBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 10, bias=False)
        self.bn = nn.BatchNorm1d(10)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.bn(self.fc1(x))))


def test_bias_absorption_is_exact_where_the_three_sigma_bound_holds() -> None:
    """c = max(0, β − 3|γ|) (scaled by equalization) moves from fc1's bias into fc2's: exact
    for every input whose pre-activation v ≥ c in every channel."""
    torch.manual_seed(0)
    model = LinearBnRelu().eval()
    bn = model.bn
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.weight.data = torch.rand(10) + 0.2
    bn.bias.data = torch.rand(10) * 6 - 1  # several channels far above zero
    eq = equalize(model)
    report = equalization_report(eq)
    c = report.absorbed[("fc1", "fc2")]
    s = report.scales[("fc1", "fc2")]
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    assert torch.allclose(c, torch.clamp(beta / s - 3 * gamma.abs() / s, min=0), atol=1e-12)
    assert int((c > 0).sum()) >= 3
    x = torch.randn(4096, 6) * 3  # wider than the batch norm saw: some rows break the bound
    with torch.no_grad():
        v = model.bn(model.fc1(x)).double() / s  # pre-activation, scaled as after equalization
        ok = ((v >= c) | (c == 0)).all(1)
        ref, out = model(x), eq(x)
    assert int(ok.sum()) > 100 and int((~ok).sum()) > 100
    assert torch.allclose(out[ok], ref[ok], atol=1e-5)
    assert not torch.allclose(out[~ok], ref[~ok], atol=1e-5)  # the 3σ assumption, not exactness
    # the batch norm carries both: scaled by 1/s, its β lowered by c
    assert torch.allclose(eq.bn.bias.detach().double(), beta / s - c, atol=1e-6)
    assert torch.allclose(eq.bn.weight.detach().double(), gamma / s, atol=1e-6)


def test_absorption_into_a_padded_layer_is_skipped_and_reported(mobile: nn.Module) -> None:
    eq = equalize(mobile)
    report = equalization_report(eq)
    padded = [(a, b) for a, b, why in report.skipped if "zero padding" in why]
    assert ("blocks.0.conv.0.0", "blocks.0.conv.1.0") in padded
    assert ("blocks.0.conv.1.0", "blocks.0.conv.2") not in padded  # 1x1 project: no padding
    forced = equalization_report(equalize(mobile, absorb_padded=True))
    assert not any("zero padding" in why for _, _, why in forced.skipped)
    assert any(pair in forced.absorbed for pair in padded)


class GeluPair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def test_a_pair_joined_by_a_non_homogeneous_activation_is_skipped_and_reported() -> None:
    torch.manual_seed(0)
    model = GeluPair().eval()
    eq = equalize(model)
    report = equalization_report(eq)
    assert report.pairs == []
    assert report.skipped == [("fc1", "fc2", "act is not positively homogeneous (f(s·x) ≠ s·f(x))")]
    assert torch.equal(eq.fc1.weight, model.fc1.weight) and torch.equal(
        eq.fc2.weight, model.fc2.weight
    )
    assert "skipped fc1 → fc2" in str(report)


def test_bad_input() -> None:
    model = GeluPair().eval()
    with pytest.raises(ValueError, match="relu6"):
        equalize(model, relu6="drop")
    q = zp.quantize_static(model, [torch.randn(16, 4)], progress=False)
    with pytest.raises(ValueError, match="float model, before quantizing"):
        equalize(q)


def test_fold_batchnorms_records_the_normal_model_of_each_channel(mobile: nn.Module) -> None:
    folded = fold_batchnorms(mobile)
    bn = mobile.stem[1]
    mean, std = channel_stats(folded)["stem.0"]
    assert torch.equal(mean, bn.bias.detach().double()) and torch.equal(
        std, bn.weight.detach().double().abs()
    )
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(folded(x), mobile(x), atol=1e-4)


def test_a_model_with_folded_batchnorms_quantizes_as_the_original(mobile: nn.Module) -> None:
    """fold_batchnorms leaves an Identity between each conv and its ReLU6; the capture passes
    through it, so the conv and its activation still fuse: the same activation quantizers with
    the same (S, Z) and the same outputs as quantizing the unfolded model (before the fix every
    conv output had a quantizer of its own before its ReLU6 — 99 instead of 64 in MobileNetV2,
    each clipped activation rounded twice). Also for QAT's prepared model."""
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=8, symmetric=True, narrow=True),
        activation=zp.Scheme(bits=8, signed=False),
    )
    folded = fold_batchnorms(mobile)
    assert any(isinstance(m, nn.Identity) for m in folded.modules())
    q_plain = zp.quantize_static(mobile, [x], config, progress=False)
    q_folded = zp.quantize_static(folded, [x], config, progress=False)

    def grids(m: nn.Module) -> dict[str, tuple[float, int]]:
        return {n: (float(q.scale), int(q.zero_point)) for n, q in m.named_modules()
                if n.startswith("act_quant.")}  # fmt: skip

    assert grids(q_folded) == grids(q_plain) and len(grids(q_plain)) > 5
    with torch.no_grad():
        assert torch.equal(q_folded(x), q_plain(x))

    def quantizer_names(m: nn.Module) -> list[str]:
        return [n for n, _ in m.named_modules() if n.startswith("act_quant.")]

    qat_plain = zp.prepare_qat(mobile, config, example_inputs=x)
    assert quantizer_names(zp.prepare_qat(folded, config)) == quantizer_names(qat_plain)


def _relu_chain() -> nn.Sequential:
    def block(i: int, o: int, k: int, groups: int = 1) -> nn.Sequential:
        conv = nn.Conv2d(i, o, k, padding=k // 2, groups=groups, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(o), nn.ReLU())

    return nn.Sequential(
        block(3, 16, 3), block(16, 16, 3, 16), block(16, 32, 1), block(32, 32, 3, 32),
        nn.Conv2d(32, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def test_per_tensor_quantization_recovers_after_equalization() -> None:
    """A depthwise-separable chain whose channel ranges were spread over three decades by a
    function-preserving rescaling (batch norm γᵢ·dᵢ, next layer's input channel i / dᵢ, through
    ReLU): per-tensor W8A8 falls apart; equalized, it is as good as before the spread (SQNR of
    the logits against the float model, which never changes)."""
    torch.manual_seed(0)
    model = _relu_chain().eval()
    x = torch.randn(256, 3, 12, 12)
    with torch.no_grad():  # batch norms that match the data (as after training)
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        model(x)
        model.eval()
    spread = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    for i in range(4):
        bn, nxt = spread[i][1], (spread[i + 1][0] if i < 3 else spread[4])
        d = torch.exp(torch.rand(bn.num_features, generator=g) * 7 - 6)  # e⁻⁶ … e¹
        bn.weight.data *= d
        bn.bias.data *= d
        if nxt.groups > 1:
            nxt.weight.data /= d.reshape(-1, 1, 1, 1)
        else:
            nxt.weight.data /= d.reshape(1, -1, 1, 1)
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=8, symmetric=True, narrow=True),
        activation=zp.Scheme(bits=8, signed=False),
    )
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(spread(x), ref, atol=1e-4)

    def sqnr(m: nn.Module) -> float:
        with torch.no_grad():
            out = zp.quantize_static(m, [x[:64]], config, progress=False)(x)
        return float(10 * torch.log10(ref.pow(2).sum() / (out - ref).pow(2).sum()))

    eq = equalize(spread, absorb_bias=False)
    assert len(equalization_report(eq).pairs) == 4
    with torch.no_grad():
        assert torch.allclose(eq(x), ref, atol=1e-4)
    balanced, spoiled, equalized = sqnr(model), sqnr(spread), sqnr(eq)
    assert spoiled < balanced - 10.0
    assert equalized > spoiled + 10.0 and equalized > balanced - 3.0


def _relu6_as_channel_clips(model: nn.Module) -> nn.Module:
    """Every ReLU6 of ``model`` (a copy) as a `ChannelClip` at 6 on every channel: equalization
    with all scales 1 — the same float function."""
    clipped = copy.deepcopy(model)
    for name, m in list(clipped.named_modules()):
        if isinstance(m, nn.ReLU6):
            parent = clipped.get_submodule(name.rsplit(".", 1)[0])
            channels = next(c for c in parent if isinstance(c, nn.BatchNorm2d)).num_features
            clipped.set_submodule(name, ChannelClip(torch.full((channels,), 6.0)))
    return clipped


def test_the_per_channel_clip_quantizes_as_relu6_does(mobile: nn.Module) -> None:
    """Per-tensor W8A8: with every ReLU6 replaced by ChannelClip(6) (scales 1), the quantized
    model is the ReLU6 model's, output for output — the layer before the clip requantizes onto
    the grid after it (no quantizer in between: the same quantizers, the same (S, Z))."""
    x = torch.randn(32, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=8, symmetric=True, narrow=True),
        activation=zp.Scheme(bits=8, signed=False),
    )
    q_relu6 = zp.quantize_static(mobile, [x], config, progress=False)
    q_clip = zp.quantize_static(_relu6_as_channel_clips(mobile), [x], config, progress=False)

    def grids(m: nn.Module) -> list[tuple[float, int]]:
        return [(float(q.scale), int(q.zero_point)) for n, q in m.named_modules()
                if n.startswith("act_quant.")]  # fmt: skip

    assert grids(q_clip) == grids(q_relu6) and len(grids(q_clip)) > 5
    with torch.no_grad():
        assert torch.equal(q_clip(x), q_relu6(x))


def test_an_equalized_model_deploys_with_the_clip_fused(mobile: nn.Module, tmp_path) -> None:
    """Equalized through ReLU6 (per-channel clips at 6/sᵢ, sᵢ spread), W8A8: every layer
    followed by a clip writes onto the clip's output grid with the envelope clamp; the
    per-channel clamps are the only float operations; the simulation, the integer program and
    ONNX Runtime agree code for code (the deployment check of the zoo). Per-channel,
    pair-bounded weights: ONNX Runtime's u8s8 kernels without VNNI saturate on this model's stem
    otherwise, with or without equalization (docs/quantization.md, "8-bit weights that x86
    kernels without VNNI compute exactly")."""
    from tests.deployment import deploy

    eq = equalize(mobile)
    scales = torch.cat([s.float() for s in equalization_report(eq).scales.values()])
    assert float(scales.max() / scales.min()) > 4  # the clips' bounds differ per channel
    gen = torch.Generator().manual_seed(3)
    calib, test = (
        torch.randn(32, 3, 12, 12, generator=gen),
        torch.randn(16, 3, 12, 12, generator=gen),
    )
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=8, symmetric=True, narrow=True, axis=0),
        activation=zp.Scheme(bits=8, signed=False),
        pair_bounded_weights=True,
    )
    clips = [n for n, m in eq.named_modules() if isinstance(m, ChannelClip)]
    d = deploy(eq, [calib], test, tmp_path, config, float_ok=tuple(clips))
    assert sorted(d.program.fallbacks) == sorted(clips) and len(clips) == 4
    layers = {s.op.where: s.op for s in d.program.steps if s.op.kind == "conv2d"}
    for name in clips:  # "blocks.0.conv.0.2" clips the output of "blocks.0.conv.0.0"
        clip = eq.get_submodule(name)
        op = layers[name.rsplit(".", 1)[0] + ".0"]
        assert op.clip == (0.0, float(clip.upper.max()))  # the envelope: max 6/sᵢ
        assert op.out_qparams is not None and op.out_qparams is d.program.graph.edges[op.output]
    assert d.report.outputs["sim_engine"].share == 1.0
    import onnx

    kinds = [n.op_type for n in onnx.load(str(d.onnx_path)).graph.node]
    assert kinds.count("Max") == kinds.count("Min") == len(clips)  # the per-channel clamps


def test_an_equalized_mlp_deploys_with_channel_last_clips(tmp_path) -> None:
    """The same on another architecture: Linear → BatchNorm1d → ReLU6 twice, then a classifier
    (the clips act on the last axis, ``trailing=0``): both ReLU6 become clips fused into their
    Linear (envelope bounds), and the three executions agree code for code."""
    from tests.deployment import deploy

    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU6(),
        nn.Linear(32, 32), nn.BatchNorm1d(32), nn.ReLU6(), nn.Linear(32, 5),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    _randomise_bn(mlp, gen)
    mlp[0].weight.data *= torch.rand(32, 1, generator=gen) * 8 + 0.05
    eq = equalize(mlp.eval())
    clips = [n for n, m in eq.named_modules() if isinstance(m, ChannelClip)]
    assert clips == ["2", "5"]
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=8, symmetric=True, narrow=True, axis=0),
        activation=zp.Scheme(bits=8, signed=False),
        pair_bounded_weights=True,
    )
    calib, test = torch.randn(64, 16, generator=gen), torch.randn(16, 16, generator=gen)
    d = deploy(eq, [calib], test, tmp_path, config, float_ok=tuple(clips))
    assert sorted(d.program.fallbacks) == clips
    layers = {s.op.where: s.op for s in d.program.steps if s.op.kind == "linear"}
    for clip_name, layer_name in (("2", "0"), ("5", "3")):
        upper = eq.get_submodule(clip_name).upper
        assert float(upper.max()) > float(upper.min())  # bounds differ per channel
        assert layers[layer_name].clip == (0.0, float(upper.max()))
    assert d.report.outputs["sim_engine"].share == 1.0
