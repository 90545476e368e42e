"""Dynamic int8 and int4 weight-only quantization: layer arithmetic against an exact reference,
the real all-MiniLM-L6-v2 against fp32, persistence and bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zeropoint as zp
from zeropoint.nn.dynamic import DynamicQuantLinear
from zeropoint.nn.weight_only import WeightOnlyEmbedding, WeightOnlyLinear
from zeropoint.workflows.dynamic import quantize_dynamic


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 16))


def test_per_token_dynamic_linear_matches_its_exact_simulation() -> None:
    layer = _mlp()[0]
    fast = DynamicQuantLinear(layer)
    exact = DynamicQuantLinear(layer, use_fbgemm=False)
    # rows with very different magnitudes: per-token scales follow each row
    x = torch.randn(6, 64) * torch.logspace(-2, 2, 6).unsqueeze(1)
    y_fast, y_exact = fast(x), exact(x)
    ref = F.linear(x, layer.weight, layer.bias)
    # fbgemm quantizes the normalised rows itself (its rounding differs from ours in rare ties):
    # both are int8 per-token results, within a fraction of one activation step of each other
    for y in (y_fast, y_exact):
        assert F.cosine_similarity(y, ref, dim=1).min() > 0.999
    assert F.cosine_similarity(y_fast, y_exact, dim=1).min() > 0.99999
    # per token: a row scaled by 100 gives the output scaled by 100 (up to the bias)
    x2 = x.clone()
    x2[0] *= 100
    torch.testing.assert_close(
        exact(x2)[0] - layer.bias, 100 * (exact(x)[0] - layer.bias), rtol=1e-4, atol=1e-4
    )


def test_weights_are_int8_per_channel_symmetric() -> None:
    layer = _mlp()[0]
    q = DynamicQuantLinear(layer)
    assert q.weight_codes.dtype == torch.int8 and int(q.weight_codes.abs().max()) == 127
    assert q.weight_qparams.scale.shape == (128,)
    expected = zp.dequantize(q.weight_codes, q.weight_qparams)
    assert torch.equal(q.weight, expected)


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


def test_calibrated_modes_stay_close_to_float() -> None:
    model = _mlp()
    torch.manual_seed(2)
    batches = [torch.randn(32, 64) * 3 + torch.linspace(-5, 5, 64) for _ in range(4)]
    q = quantize_dynamic(model, calib_data=batches)  # an iterable of batches also works
    modes = {(m.per_token, m._smoothed) for m in q.modules() if isinstance(m, DynamicQuantLinear)}
    assert modes  # every Linear got one of the three modes
    x = batches[0]
    ref = model(x)
    # the chosen modes are at least as accurate as plain per-token quantization (no data)
    err = ((q(x) - ref) ** 2).mean()
    err_token = ((quantize_dynamic(model)(x) - ref) ** 2).mean()
    assert err <= err_token * 1.2
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
