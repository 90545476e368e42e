"""Dynamic int8 and int4 weight-only quantization: layer arithmetic against an exact reference,
the real all-MiniLM-L6-v2 against fp32, persistence and bad input."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zeropoint as zp
from zeropoint.nn.dynamic import (
    DynamicQuantLinear,
    fbgemm_available,
    fbgemm_saturates,
    pair_bounded_codes,
    pairs_bounded,
)
from zeropoint.nn.weight_only import WeightOnlyEmbedding, WeightOnlyLinear
from zeropoint.workflows.dynamic import quantize_dynamic


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 16))


#: float32 unit round-off u = 2^-24. fbgemm turns its exact int32 accumulator into
#: y = fl(fl(S_x·S_w)·fl(acc)): at most three roundings (fl(acc) only when |acc| > 2^24), so
#: |y − S_x·S_w·acc| ≤ 3u·|S_x·S_w·acc| (first order); we allow 4u.
GEMM_TOLERANCE = 2.0**-22


def _kernel_reference(xt: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor, saturate: bool):
    """What fbgemm's dynamic u8·s8 GEMM computes, from PyTorch's own activation quantization
    and int64 arithmetic: u = quantize_per_tensor(x) with the (S_x, Z_x) torch chooses for
    dynamic quantization; each pair of products u_2j·q_2j + u_2j+1·q_2j+1 clamped to int16 when
    the kernel saturates (vpmaddubsw, x86 without VNNI); acc = Σ pairs − Z_x·Σ_k q_k;
    y = S_x·S_w·acc in float64."""
    s_x, z_x = torch._choose_qparams_per_tensor(xt, False)
    u = torch.quantize_per_tensor(xt, s_x, z_x, torch.quint8).int_repr().long()
    q = codes.long()
    products = u.unsqueeze(1) * q.unsqueeze(0)  # (M, N, K)
    if products.shape[-1] % 2:
        products = F.pad(products, (0, 1))
    pairs = products[..., 0::2] + products[..., 1::2]
    if saturate:
        pairs = pairs.clamp(-32768, 32767)
    acc = pairs.sum(-1) - z_x * q.sum(1)
    return acc.double() * (s_x * w_scale.double())


def _dynamic_input() -> torch.Tensor:
    torch.manual_seed(3)
    # per-token normalised rows (max |x| = 1) with positive bias: large uint8 codes
    x = torch.randn(8, 64) + 1.0
    return x / x.abs().amax(1, keepdim=True)


@pytest.mark.skipif(not fbgemm_available(), reason="fbgemm's dynamic kernel is not in this build")
def test_fbgemm_kernel_matches_the_int16_pair_model_of_this_cpu() -> None:
    """Full int8 weights: on a CPU without VNNI fbgemm saturates pair sums (the reference with
    saturation matches, the exact one does not); with VNNI it is exact."""
    layer = _mlp()[0]
    saturating = fbgemm_saturates()
    with pytest.warns(RuntimeWarning, match="saturate") if saturating else nullcontext():
        full = DynamicQuantLinear(layer, pair_bound=False)
    assert int(full.weight_codes.abs().max()) == 127
    xt = _dynamic_input()
    y = torch.ops.quantized.linear_dynamic(xt, full._pack(), False).double()
    ref = _kernel_reference(xt, full.weight_codes, full.weight_qparams.scale, saturating)
    assert ((y - ref).abs() <= GEMM_TOLERANCE * ref.abs()).all()
    if saturating:  # the saturation is real: the exact products are far from the kernel's
        exact = _kernel_reference(xt, full.weight_codes, full.weight_qparams.scale, False)
        assert ((y - exact).abs() > 100 * GEMM_TOLERANCE * exact.abs()).any()
        assert not full.kernel_is_exact() and full._packed is None  # so the layer simulates


def test_pair_bounded_codes_cannot_saturate_and_keep_most_of_the_8th_bit() -> None:
    torch.manual_seed(4)
    w = torch.randn(96, 65)  # odd K: the last channel pairs with fbgemm's zero padding
    codes, qp = pair_bounded_codes(w)
    q = codes.long()
    pairs = F.pad(q.abs(), (0, 1))
    assert int((pairs[:, 0::2] + pairs[:, 1::2]).max()) <= 128  # 255·128 = 32640 ≤ 32767
    assert qp.zero_point.eq(0).all() and qp.scale.shape == (96,)

    def mse(scale: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return ((c.double() * scale.double().unsqueeze(1) - w.double()) ** 2).sum(1)

    # the search is at least as good, row by row, as the end of its grid that shrinks nothing:
    # S = max(P/128, max|w|/127) with plain rounding (P the largest pair sum; half-to-even
    # keeps pairs ≤ 128); up to the float32 rounding of S in qparams_from_range (~1e-7 relative)
    wp = F.pad(w.abs(), (0, 1))
    s_safe = torch.maximum((wp[:, 0::2] + wp[:, 1::2]).amax(1) / 128, w.abs().amax(1) / 127)
    plain = torch.round(w / s_safe.unsqueeze(1))
    assert int(plain.abs().max()) <= 127
    assert (mse(qp.scale, codes) <= mse(s_safe, plain) * (1 + 1e-5)).all()
    # and it beats 7-bit weights [−63, 63] (the old remedy) by far, in total
    s7 = w.abs().amax(1) / 63
    seven = torch.round(w / s7.unsqueeze(1))
    assert mse(qp.scale, codes).sum() < 0.6 * mse(s7, seven).sum()


def test_per_token_dynamic_linear_matches_its_exact_simulation() -> None:
    layer = _mlp()[0]
    fast = DynamicQuantLinear(layer)
    # on a saturating CPU the default codes are pair-bounded, so the kernel is exact there too
    assert fast.kernel_is_exact()
    assert pairs_bounded(fast.weight_codes) or not fbgemm_saturates()
    exact = DynamicQuantLinear(layer, use_fbgemm=False)
    exact.set_codes(fast.weight_codes, fast.weight_qparams)  # the same codes on both paths
    # rows with very different magnitudes: per-token scales follow each row
    torch.manual_seed(5)
    x = torch.randn(6, 64) * torch.logspace(-2, 2, 6).unsqueeze(1)
    m = x.abs().amax(1, keepdim=True)
    g_exact = exact._gemm(x / m)
    # the kernel against the simulation: the GEMM within its float32 rounding (see above) ...
    assert ((fast._gemm(x / m) - g_exact).abs() <= GEMM_TOLERANCE * g_exact.abs()).all()
    # ... and the layer's output y = m·g + b, one more rounding of each side's own value
    y_fast, y_exact = fast(x), exact(x)
    bound = GEMM_TOLERANCE * (m * g_exact.abs() + y_exact.abs())
    assert ((y_fast - y_exact).abs() <= bound).all()
    # int8 per-token quantization error, relative to the float output of each row: the 8-bit
    # input step (2/255 of max|x|) and the weight step, a few 1e-3 here
    ref = F.linear(x, layer.weight, layer.bias)
    assert F.cosine_similarity(y_exact, ref, dim=1).min() > 0.9999
    # per token: a row scaled by 100 gives the output scaled by 100 (up to the bias)
    x2 = x.clone()
    x2[0] *= 100
    torch.testing.assert_close(
        exact(x2)[0] - layer.bias, 100 * (exact(x)[0] - layer.bias), rtol=1e-5, atol=1e-5
    )


def test_int4_weight_only_packs_and_dequantizes_groups() -> None:
    layer = _mlp()[0]
    q = WeightOnlyLinear(layer, zp.Scheme(bits=4, symmetric=True, group_size=32))
    assert q.packed and q.weight_data.numel() == 64 * 128 // 2
    x = torch.randn(3, 64)
    qp = zp.calibrate(layer.weight.detach(), zp.Scheme(bits=4, symmetric=True, group_size=32))
    torch.testing.assert_close(
        q(x), F.linear(x, zp.fake_quantize(layer.weight.detach(), qp), layer.bias)
    )


@pytest.mark.parametrize(
    "scheme",
    [zp.Scheme(bits=8, symmetric=True, axis=0), zp.Scheme(bits=4, symmetric=True, group_size=16)],
    ids=str,
)
def test_embedding_rows_are_gathered_then_dequantized(scheme: zp.Scheme) -> None:
    torch.manual_seed(1)
    emb = nn.Embedding(50, 32)
    q = WeightOnlyEmbedding(emb, scheme)
    idx = torch.tensor([[0, 7, 49], [7, 7, 1]])
    # reference: quantize the whole table with the same scheme, then look the rows up
    table_scheme = scheme.with_(axis=-1) if scheme.group_size else scheme
    table = zp.fake_quantize(emb.weight.detach(), zp.calibrate(emb.weight.detach(), table_scheme))
    assert torch.equal(q(idx), F.embedding(idx, table))
    assert q.weight_data.numel() == 50 * 32 * scheme.bits // 8
    with pytest.raises(IndexError, match="out of range"):
        q(torch.tensor([50]))


def test_quantize_dynamic_keeps_class_and_leaves_the_float_model(tmp_path: Path) -> None:
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    q = quantize_dynamic(model)
    assert type(q) is nn.Sequential and isinstance(q[0], DynamicQuantLinear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the save/load round trip of dynamic and weight-only models moved to tests/test_checkpoint.py


def _mode(layer: DynamicQuantLinear) -> int:
    """0: plain per tensor, 1: smoothed per tensor, 2: per token (cheapest first)."""
    return 2 if layer.per_token else int(layer._smoothed)


def test_calibrated_modes_follow_the_local_rule_then_the_budget() -> None:
    """The contract of `quantize_dynamic` with data: each Linear starts in the cheapest mode
    whose error on its own calibration inputs is not beaten by a costlier one by the factor
    GAIN; the end-to-end search then only moves layers to cheaper modes, and the model's
    calibration output error stays within (1 + BUDGET) of the locally chosen modes' error."""
    from zeropoint.nn.dynamic import smoothing_from_range
    from zeropoint.workflows.dynamic import BUDGET, GAIN

    model = _mlp()
    torch.manual_seed(2)
    batches = [torch.randn(32, 64) * 3 + torch.linspace(-5, 5, 64) for _ in range(4)]
    q = quantize_dynamic(model, calib_data=batches)  # an iterable of batches also works
    x = torch.cat(batches)
    inputs = {0: x, 2: model[1](model[0](x))}
    local = nn.Sequential(*[copy.deepcopy(m) for m in model])
    with torch.no_grad():
        for i, xi in inputs.items():
            layer = model[i]
            shift, smooth = smoothing_from_range(xi.amin(0), xi.amax(0), layer.weight)
            candidates = [
                DynamicQuantLinear(layer, per_token=False),
                DynamicQuantLinear(layer, per_token=False, shift=shift, smooth=smooth),
                DynamicQuantLinear(layer, per_token=True),
            ]
            errors = [float(((c(xi) - layer(xi)) ** 2).mean()) for c in candidates]
            best = 0
            for j in (1, 2):
                if errors[j] < GAIN * errors[best]:
                    best = j
            local[i] = candidates[best]
            assert _mode(q[i]) <= best  # the search only moves to cheaper modes
        # measured as the search measures it: batch by batch (per-tensor modes quantize each
        # call's input over its own range)
        ref = torch.cat([model(b) for b in batches])
        err = float(((torch.cat([q(b) for b in batches]) - ref) ** 2).mean())
        err_local = float(((torch.cat([local(b) for b in batches]) - ref) ** 2).mean())
    assert err <= (1 + BUDGET) * err_local * (1 + 1e-6)
    # the inputs' channel offsets (−5..5) dominate the first layer's range: plain per-tensor
    # quantization loses to smoothing or per-token there
    assert _mode(local[0]) > 0
    with pytest.raises(ValueError, match="empty"):
        quantize_dynamic(model, calib_data=[])


def test_bad_configs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="dynamic config"):
        quantize_dynamic(_mlp(), zp.int8_static())
    with pytest.raises(ValueError, match="no Linear or Embedding layer"):
        quantize_dynamic(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="no such module"):
        quantize_dynamic(_mlp(), zp.int8_dynamic().with_(skip=("encoder.*",)))


@pytest.mark.slow
def test_minilm_dynamic_int8_keeps_embeddings() -> None:
    from demo.zoo.minilm import load_minilm
    from demo.zoo.sentences import (
        CALIBRATION,
        SENTENCES,
        mean_cosine,
        nearest_neighbour_agreement,
    )

    model = load_minilm()
    sentences = list(SENTENCES)
    assert not set(CALIBRATION) & set(SENTENCES)  # calibrated on other sentences
    ref = model.encode(sentences, batch_size=32, convert_to_tensor=True)
    q = quantize_dynamic(model, calib_data=lambda m: m.encode(list(CALIBRATION)))
    assert type(q) is type(model)  # SentenceTransformer, with encode()
    emb = q.encode(sentences, batch_size=32, convert_to_tensor=True)
    mean, worst = mean_cosine(ref, emb)
    agreement = nearest_neighbour_agreement(ref, emb)
    print(
        f"MiniLM int8 dynamic: mean cosine {mean:.4f} (min {worst:.4f}), NN agreement {agreement:.3f}"
    )
    assert len(sentences) >= 200
    assert mean >= 0.995 and agreement >= 0.95
    # the peer, for reference: torch.ao's dynamic int8 is far less accurate on the same set
    from demo.peers import torch_ao_dynamic_int8

    peer = torch_ao_dynamic_int8(model).encode(sentences, batch_size=32, convert_to_tensor=True)
    assert mean_cosine(ref, peer)[0] < mean
