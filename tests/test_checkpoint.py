"""Checkpoints (safetensors + JSON): exact round trips for every kind of quantized model, the
recorded SHA-256 digests against an independent reading of the files, strict loading, and the
bad-input suite. Atomicity under kills and full disks: tests/test_checkpoint_kill.py."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData
from zeropoint.workflows.dynamic import quantize_dynamic
from zeropoint.workflows.graph import state_of


def _mlp(seed: int, hidden: int = 80, depth: int = 2) -> nn.Sequential:
    """8 → hidden (→ hidden) → 4 with weights drawn from a seeded generator. ``hidden`` > 64
    makes the first layer's 80 per-channel scales go to the tensor file, the last layer's 4
    stay in the JSON."""
    g = torch.Generator().manual_seed(seed)
    dims = [8] + [hidden] * (depth - 1) + [4]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
    model = nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


def _batches(seed: int, n: int = 3, shape: tuple[int, ...] = (16, 8)) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def static_mlp() -> nn.Module:
    return zp.quantize_static(_mlp(0), _batches(1), progress=False)


@pytest.fixture
def saved(static_mlp: nn.Module, tmp_path: Path) -> Path:
    return zp.save(static_mlp, tmp_path / "ckpt")


def _doc(directory: Path) -> dict:
    return json.loads((directory / "encodings.json").read_text())


def _tensor_file(directory: Path) -> Path:
    return directory / _doc(directory)["tensors"]["file"]


# --------------------------------------------------------------------------- independent digests


def _canonical_sha256(value: object) -> str:
    """The documented digest: SHA-256 of the JSON with sorted keys and no whitespace."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _signed(doc: dict) -> dict:
    """``doc`` with its digests recomputed: a consistent file, for the strictness checks."""
    sha = {}
    for section, value in doc.items():
        if section in ("weights", "activations"):
            sha.update({f"{section}/{k}": _canonical_sha256(v) for k, v in value.items()})
        elif section != "sha256":
            sha[section] = _canonical_sha256(value)
    return {**doc, "sha256": sha}


def _write_doc(directory: Path, doc: dict, sign: bool = False) -> None:
    (directory / "encodings.json").write_text(json.dumps(_signed(doc) if sign else doc))


def _bytes_sha256(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy()).hexdigest()


def _edit_tensors(directory: Path, change: object) -> None:
    """Rewrite the tensor file through ``change(tensors)`` and re-record a consistent table."""
    doc, path = _doc(directory), _tensor_file(directory)
    tensors = load_file(str(path))
    change(tensors)  # type: ignore[operator]
    save_file(tensors, str(path))
    doc["tensors"]["entries"] = {
        k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
            "sha256": _bytes_sha256(t)}
        for k, t in sorted(tensors.items())
    }  # fmt: skip
    _write_doc(directory, doc, sign=True)


def test_recorded_digests_match_an_independent_reading_of_the_files(saved: Path) -> None:
    doc = _doc(saved)
    raw = _tensor_file(saved).read_bytes()
    # safetensors: u64 little-endian header length, a JSON header, then the tensor bytes
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    entries = doc["tensors"]["entries"]
    assert set(entries) == set(header) - {"__metadata__"}
    for key, entry in entries.items():
        begin, end = header[key]["data_offsets"]
        assert entry["sha256"] == hashlib.sha256(raw[8 + n + begin : 8 + n + end]).hexdigest()
        assert entry["shape"] == header[key]["shape"]
    assert doc["sha256"] == _signed(doc)["sha256"]
    assert {"0.weight.codes", "0.weight.qscale", "0.weight.qzero", "0.bias", "2.bias"} <= set(
        entries
    )
    assert isinstance(doc["weights"]["2.weight"]["encoding"]["scale"], list)


# --------------------------------------------------------------------------- round trips


def test_static_round_trip_is_exact_and_small(
    digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    model, data = digits
    quantized = zp.quantize_static(model, data.calibration_batches(), progress=False)
    directory = zp.save(quantized, tmp_path / "ckpt")
    files = sorted(p.name for p in directory.iterdir())
    assert files[0] == "encodings.json" and files[1].startswith("model-") and len(files) == 2
    restored = zp.load(directory, DigitsCNN())
    x = data.x_test[:64]
    with torch.no_grad():
        assert torch.equal(restored(x), quantized(x))
    assert state_of(restored).workflow == "static" and not restored.training
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert _tensor_file(directory).stat().st_size < 0.45 * fp32_bytes
    head = _doc(directory)["weights"]["head.weight"]["encoding"]
    bits = quantized.head.weight_quant.scheme.bits  # 7 where this CPU's int8 kernels saturate
    assert head["scheme"]["bits"] == bits and len(head["scale"]) == 10
    with pytest.raises(ValueError, match=r"weight stem\.0\.weight .* shape \[16, 1, 3, 3\] is not"):
        zp.load(directory, DigitsCNN(width=8))


def test_int4_weights_are_stored_packed(
    digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    model, data = digits
    config = zp.QuantConfig(weight=zp.Scheme(bits=4, symmetric=True, axis=0))
    q = zp.quantize_static(model, data.calibration_batches(), config, progress=False)
    directory = zp.save(q, tmp_path / "int4")
    codes = load_file(str(_tensor_file(directory)))["head.weight.codes"]
    assert codes.dtype == torch.uint8 and codes.numel() == q.head.weight.numel() // 2
    restored = zp.load(directory, DigitsCNN())
    with torch.no_grad():
        assert torch.equal(restored(data.x_test[:8]), q(data.x_test[:8]))


@pytest.mark.slow
def test_qat_converted_model_round_trips(
    digits: tuple[DigitsCNN, DigitsData], tmp_path: Path
) -> None:
    model, data = digits
    qat = zp.prepare_qat(model, zp.w4a4_qat("lsq"), example_inputs=data.x_train[:64])
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3)
    for i in range(3):  # a few steps move the weights and scales off their initial values
        x, y = data.x_train[64 * i : 64 * (i + 1)], data.y_train[64 * i : 64 * (i + 1)]
        loss = nn.functional.cross_entropy(qat(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    zp.freeze_bn(qat)
    converted = zp.convert(qat)
    restored = zp.load(zp.save(converted, tmp_path / "qat"), DigitsCNN())
    with torch.no_grad():
        assert torch.equal(restored(data.x_test), converted(data.x_test))
    assert state_of(restored).workflow == "qat"


def test_dynamic_and_weight_only_models_round_trip(tmp_path: Path) -> None:
    model = _mlp(0, hidden=128)
    x = _batches(2, 1, (5, 8))[0]
    calib = [b * 3 + torch.linspace(-5, 5, 8) for b in _batches(3, 4, (32, 8))]
    for name, q in [
        ("per_token", quantize_dynamic(model)),
        ("calibrated", quantize_dynamic(model, calib_data=calib)),  # per-tensor/smoothed modes
        ("int4_weight_only", quantize_dynamic(model, zp.int4_weight_only(8))),
    ]:
        restored = zp.load(zp.save(q, tmp_path / name), _mlp(9, hidden=128))
        assert torch.equal(restored(x), q(x)), name
        modes = [(m.per_token, m._smoothed) for m in q.modules() if hasattr(m, "per_token")]
        assert modes == [
            (m.per_token, m._smoothed) for m in restored.modules() if hasattr(m, "per_token")
        ]


def test_quantized_embedding_tables_round_trip(tmp_path: Path) -> None:
    def embedder() -> nn.Module:
        return nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 4))

    model = embedder()
    idx = torch.tensor([[0, 7, 49], [7, 3, 1]])
    for name, config in [("int8", zp.int8_dynamic()), ("int4", zp.int4_weight_only(16))]:
        q = quantize_dynamic(model, config)
        restored = zp.load(zp.save(q, tmp_path / name), embedder())
        assert torch.equal(restored(idx), q(idx)), name
        assert type(restored[0]).__name__ == "WeightOnlyEmbedding"
        assert restored[0].packed == (name == "int4")


class _Gated(nn.Module):
    """Data-dependent control flow: torch.fx cannot capture it (module-boundary mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if h.sum() > 0:
            h = torch.relu(h)
        return self.b(h)


def test_module_boundary_model_round_trips(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="module-boundary"):
        q = zp.quantize_static(_Gated().eval(), _batches(4), progress=False)
    assert state_of(q).capture == "module-boundary"
    restored = zp.load(zp.save(q, tmp_path / "gated"), _Gated())
    x = _batches(5, 1)[0]
    assert torch.equal(restored(x), q(x))
    assert set(_doc(tmp_path / "gated")["activations"]) == {"a.input_quant", "b.input_quant"}


def test_group_wise_transposed_conv_weights_round_trip(tmp_path: Path) -> None:
    # the weight of a transposed conv is (in, out, k, k); its groups run along the flattened
    # (in·k·k) weights of each output channel — the layout must be undone on load
    def net() -> nn.Module:
        return nn.Sequential(nn.ConvTranspose2d(4, 6, 2, stride=2), nn.ReLU(), nn.Conv2d(6, 3, 3))

    config = zp.QuantConfig(weight=zp.Scheme(bits=4, symmetric=True, group_size=2))
    q = zp.quantize_static(net().eval(), _batches(6, 2, (2, 4, 5, 5)), config, progress=False)
    restored = zp.load(zp.save(q, tmp_path / "tconv"), net())
    x = _batches(7, 1, (2, 4, 5, 5))[0]
    assert torch.equal(restored(x), q(x))


def test_every_config_field_round_trips(tmp_path: Path) -> None:
    config = zp.QuantConfig(
        activation=zp.Scheme(bits=8, signed=False, rounding="half_away"),
        activation_observer="percentile",
        activation_observer_options=(("percentile", 99.9), ("bins", 512)),
        rules=(
            zp.LayerRule(name="2", weight=zp.Scheme(bits=4, symmetric=True, axis=0)),
            zp.LayerRule(types=(nn.Conv2d,), skip=True),
        ),
        first_last_bits=None,
        fold_bn=False,
    )
    q = zp.quantize_static(_mlp(0), _batches(1), config, progress=False)
    restored = zp.load(zp.save(q, tmp_path / "c"), _mlp(3))
    assert state_of(restored).config == config
    x = _batches(8, 1)[0]
    assert torch.equal(restored(x), q(x))


class _WithBuffer(nn.Module):
    """A model with a non-float buffer of its own (saved as a tensor, loaded strictly)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("mask", torch.ones(4, dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) * self.mask


def test_buffers_of_any_dtype_are_saved_and_restored(tmp_path: Path) -> None:
    model = _WithBuffer().eval()
    model.steps.fill_(41)
    model.mask[1] = False
    q = zp.quantize_static(model, _batches(1), progress=False)
    restored = zp.load(zp.save(q, tmp_path / "b"), _WithBuffer())
    assert int(restored.steps) == 41 and restored.mask.tolist() == [True, False, True, True]
    x = _batches(8, 1)[0]
    assert torch.equal(restored(x), q(x))


def test_load_leaves_the_template_untouched(static_mlp: nn.Module, tmp_path: Path) -> None:
    for name, q in [("static", static_mlp), ("dynamic", quantize_dynamic(_mlp(0)))]:
        directory = zp.save(q, tmp_path / name)
        template = _mlp(5).train()
        before = copy.deepcopy(template.state_dict())
        zp.load(directory, template)
        after = template.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name
        assert all(m.training for m in template.modules()), name
        assert "_zeropoint" not in template.__dict__ and type(template[0]) is nn.Linear


def test_saving_again_replaces_the_checkpoint_and_leaves_other_files(
    static_mlp: nn.Module, tmp_path: Path
) -> None:
    directory = zp.save(static_mlp, tmp_path / "ckpt")
    (directory / "README.txt").write_text("mine")
    first = sorted(p.name for p in directory.iterdir())
    zp.save(static_mlp, directory)  # identical tensors: the same file name, nothing else
    assert sorted(p.name for p in directory.iterdir()) == first
    other = zp.quantize_static(_mlp(1), _batches(1), progress=False)
    zp.save(other, directory)
    names = sorted(p.name for p in directory.iterdir())
    assert len(names) == 3 and "README.txt" in names and names != first
    x = _batches(8, 1)[0]
    assert torch.equal(zp.load(directory, _mlp(3))(x), other(x))


def test_a_version_1_checkpoint_is_refused_and_replaced_by_a_save(
    static_mlp: nn.Module, tmp_path: Path
) -> None:
    directory = tmp_path / "old"
    directory.mkdir()
    save_file({"0.bias": torch.zeros(80)}, str(directory / "model.safetensors"))
    (directory / "encodings.json").write_text(
        json.dumps({"format": "zeropoint-checkpoint", "version": 1, "weights": {}})
    )
    (directory / ".model.safetensors.k2j_x9.tmp").write_bytes(b"half a file")
    with pytest.raises(ValueError, match=r"version 1 checkpoint .* save the model again"):
        zp.load(directory, _mlp(0))
    zp.save(static_mlp, directory)
    names = sorted(p.name for p in directory.iterdir())
    assert names[0] == "encodings.json" and names[1].startswith("model-") and len(names) == 2
    x = _batches(8, 1)[0]
    assert torch.equal(zp.load(directory, _mlp(3))(x), static_mlp(x))


# --------------------------------------------------------------------------- bad checkpoints

ACT = "<first activation quantizer>"
Mutation = object  # a function of the checkpoint directory


def _resolve(doc: dict, path: tuple[object, ...]) -> list[object]:
    return [next(iter(doc["activations"])) if p == ACT else p for p in path]


def _set(*path: object, value: object, sign: bool = False) -> Mutation:
    def mutate(directory: Path) -> None:
        doc = _doc(directory)
        *parents, last = _resolve(doc, path)
        node = doc
        for p in parents:
            node = node[p]  # type: ignore[index]
        node[last] = value  # type: ignore[index]
        _write_doc(directory, doc, sign)

    return mutate


def _del(*path: object, sign: bool = False) -> Mutation:
    def mutate(directory: Path) -> None:
        doc = _doc(directory)
        *parents, last = _resolve(doc, path)
        node = doc
        for p in parents:
            node = node[p]  # type: ignore[index]
        del node[last]  # type: ignore[attr-defined]
        _write_doc(directory, doc, sign)

    return mutate


def _copy_entry(section: str, key: str, new: str) -> Mutation:
    def mutate(directory: Path) -> None:
        doc = _doc(directory)
        source = next(iter(doc[section])) if key == ACT else key
        doc[section][new] = doc[section][source]
        _write_doc(directory, doc, sign=True)

    return mutate


def _text(text: str) -> Mutation:
    return lambda directory: (directory / "encodings.json").write_text(text)


def _tensors(change: object) -> Mutation:
    return lambda directory: _edit_tensors(directory, change)


def _truncate_tensors(directory: Path) -> None:
    path = _tensor_file(directory)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _remove_tensor_file(directory: Path) -> None:
    _tensor_file(directory).unlink()


def _pop_scale(key: str) -> Mutation:
    def mutate(directory: Path) -> None:
        doc = _doc(directory)
        doc["weights"][key]["encoding"]["scale"].pop()
        _write_doc(directory, doc)

    return mutate


def _double_inline_scale(directory: Path) -> None:
    doc = _doc(directory)
    scale = doc["weights"]["2.weight"]["encoding"]["scale"]
    scale[1] *= 2
    _write_doc(directory, doc)


def _scale_activation(directory: Path) -> None:
    doc = _doc(directory)
    encoding = next(iter(doc["activations"].values()))["encoding"]
    encoding["scale"][0] *= 2
    _write_doc(directory, doc)


def _patch_tensor_file(directory: Path, key: str, change: object) -> None:
    """Change one tensor's bytes in place, leaving the file's header and the JSON alone."""
    path = _tensor_file(directory)
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    begin, _ = json.loads(raw[8 : 8 + n])[key]["data_offsets"]
    change(raw, 8 + n + begin)  # type: ignore[operator]
    path.write_bytes(bytes(raw))


def _double_tensor_scale(directory: Path) -> None:
    def double(raw: bytearray, at: int) -> None:
        (v,) = struct.unpack_from("<f", raw, at)
        struct.pack_into("<f", raw, at, 2 * v)

    _patch_tensor_file(directory, "0.weight.qscale", double)


def _flip_code_byte(directory: Path) -> None:
    def flip(raw: bytearray, at: int) -> None:
        raw[at + 3] ^= 0x01

    _patch_tensor_file(directory, "0.weight.codes", flip)


def _retype_listed(key: str, dtype: str) -> Mutation:
    def mutate(directory: Path) -> None:
        doc = _doc(directory)
        doc["tensors"]["entries"][key]["dtype"] = dtype
        _write_doc(directory, doc, sign=True)

    return mutate


def _code_out_of_range(tensors: dict[str, Tensor]) -> None:
    tensors["0.weight.codes"][0, 0] = -128  # the weights are int8 narrow: [-127, 127]


SECTIONS = (
    "model", "workflow", "capture", "reduce_range", "config", "weights", "activations",
    "tensors", "sha256",
)  # fmt: skip

BAD_CHECKPOINTS = [
    # the files themselves
    pytest.param(_truncate_tensors, ValueError,
                 r"model-[0-9a-f]{16}\.safetensors is not a readable safetensors file",
                 id="truncated-safetensors"),
    pytest.param(_text("{not json"), ValueError, r"encodings\.json is not valid JSON",
                 id="not-json"),
    pytest.param(_text("[1, 2]"), ValueError, r"not a zeropoint checkpoint \(a JSON list",
                 id="json-list"),
    pytest.param(_text('{"format": "zeropoint-checkpoint", "version": 2, "version": 2}'),
                 ValueError, r"the key 'version' appears twice", id="duplicate-key"),
    pytest.param(_set("format", value="onnx"), ValueError, r"format 'onnx'", id="wrong-format"),
    pytest.param(_del("format"), ValueError, r"format None", id="missing-format"),
    pytest.param(_set("version", value=3), ValueError, r"version 3; this zeropoint reads 2",
                 id="future-version"),
    pytest.param(_set("version", value="2"), ValueError, r"version '2'", id="version-string"),
    pytest.param(_set("version", value=1), ValueError, r"version 1 checkpoint", id="version-1"),
    # the document's structure and field types
    *[pytest.param(_del(s), ValueError, rf"lacks the field '{s}'", id=f"missing-{s}")
      for s in SECTIONS],
    pytest.param(_set("extra", value=1), ValueError, r"unknown field 'extra'",
                 id="unknown-section"),
    pytest.param(_set("config", "spare", value=1), ValueError, r"unknown field 'config\.spare'",
                 id="unknown-config-field"),
    pytest.param(_del("config", "fold_bn"), ValueError, r"lacks the field 'config\.fold_bn'",
                 id="missing-config-field"),
    pytest.param(_set("weights", "2.weight", "encoding", "scale", value="abc"), TypeError,
                 r'weights\["2\.weight"\]\.encoding\.scale: expected a list or an object, '
                 r'got "abc"', id="scale-string"),
    pytest.param(_set("weights", "2.weight", "encoding", "scale", 0, value="abc"), TypeError,
                 r'weights\["2\.weight"\]\.encoding\.scale\[0\]: expected a number, got "abc"',
                 id="scale-item-string"),
    pytest.param(_set("weights", "0.weight", "encoding", "scheme", "bits", value="8"), TypeError,
                 r'weights\["0\.weight"\]\.encoding\.scheme\.bits: expected an integer, got "8"',
                 id="bits-string"),
    pytest.param(_set("weights", "0.weight", "encoding", "scheme", "symmetric", value="yes"),
                 TypeError, r'scheme\.symmetric: expected true or false, got "yes"',
                 id="symmetric-string"),
    pytest.param(_set("config", "module_types", value=[42]), TypeError,
                 r"config\.module_types\[0\]: expected the name of a module type \(a string\), "
                 r"got 42", id="module-type-int"),
    pytest.param(_set("config", "module_types", value=["os.system"]), ValueError,
                 r"config\.module_types\[0\]: names layer type 'os\.system'",
                 id="module-type-not-torch"),
    pytest.param(_set("config", "module_types", value=["torch.nn.Linearr"]), ValueError,
                 r"config\.module_types\[0\]: names layer type 'torch\.nn\.Linearr', which does "
                 r"not exist", id="module-type-missing"),
    pytest.param(_set("config", "weight", "bits", value=99), ValueError,
                 r"config\.weight: Scheme\.bits=99 is out of range", id="bits-out-of-range"),
    pytest.param(_set("config", "learnable", value="adam"), ValueError,
                 r"config: learnable='adam' is unknown", id="learnable-unknown"),
    pytest.param(_set("workflow", value="magic"), ValueError, r"workflow 'magic' is not one of",
                 id="workflow-unknown"),
    pytest.param(_set("reduce_range", value=0), TypeError,
                 r"reduce_range: expected true or false, got 0", id="reduce-range-int"),
    pytest.param(_set("weights", "0.weight", "per_token", value="yes"), TypeError,
                 r'weights\["0\.weight"\]\.per_token: expected true or false or null, got "yes"',
                 id="per-token-string"),
    pytest.param(_set("weights", "0.weight", value=5), TypeError,
                 r'weights\["0\.weight"\]: expected an object, got 5', id="weight-entry-int"),
    pytest.param(_set("weights", "0.weight", "encoding", "shape", value=[-80]), ValueError,
                 r'weights\["0\.weight"\]\.encoding: shape \[-80\] has a negative dimension',
                 id="negative-shape"),
    pytest.param(_pop_scale("2.weight"), ValueError,
                 r'weights\["2\.weight"\]\.encoding: scale lists 3 values; shape \[4\] needs 4',
                 id="scale-count"),
    pytest.param(_set("activations", ACT, "mode", value="observe"), ValueError,
                 r"mode 'observe' is not one of", id="quantizer-mode"),
    pytest.param(_set("tensors", "file", value="../model-0000000000000000.safetensors"),
                 ValueError, r"file '\.\./model-0+\.safetensors' is not a tensor file name",
                 id="file-outside-directory"),
    pytest.param(_set("tensors", "entries", "2.bias", "sha256", value="xyz"), ValueError,
                 r"sha256 'xyz' is not 64 lowercase hex digits", id="sha-not-hex"),
    # integrity: changed after saving
    pytest.param(_double_inline_scale, ValueError,
                 r"weight entry '2\.weight' .*does not match its recorded SHA-256",
                 id="doubled-json-scale"),
    pytest.param(_double_tensor_scale, ValueError,
                 r"tensor '0\.weight\.qscale' .*does not match its recorded SHA-256",
                 id="doubled-tensor-scale"),
    pytest.param(_flip_code_byte, ValueError,
                 r"tensor '0\.weight\.codes' .*does not match its recorded SHA-256",
                 id="flipped-code-byte"),
    pytest.param(_set("config", "weight", "bits", value=4), ValueError,
                 r"the 'config' section does not match its recorded SHA-256", id="edited-config"),
    pytest.param(_scale_activation, ValueError,
                 r"encoding of quantizer 'act_quant\.\w+' does not match its recorded SHA-256",
                 id="edited-activation-scale"),
    pytest.param(_del("sha256", "weights/2.weight"), ValueError,
                 r"weight entry '2\.weight' .*has no recorded SHA-256", id="digest-removed"),
    pytest.param(_remove_tensor_file, FileNotFoundError,
                 r"names the tensor file model-[0-9a-f]{16}\.safetensors, which is missing",
                 id="tensor-file-missing"),
    pytest.param(_del("tensors", "entries", "2.bias", sign=True), ValueError,
                 r"holds a tensor '2\.bias' that encodings\.json does not list",
                 id="unlisted-tensor"),
    pytest.param(_retype_listed("2.bias", "float64"), ValueError,
                 r"tensor '2\.bias' in .* is float32 \[4\], but encodings\.json records "
                 r"float64 \[4\]", id="listed-dtype"),
    # strictness: consistent (re-signed) files that do not fit the model
    pytest.param(_del("weights", "2.weight", sign=True), ValueError,
                 r"lacks the weight entry '2\.weight' that the template Sequential has",
                 id="missing-weight-entry"),
    pytest.param(_copy_entry("weights", "2.weight", "fc9.weight"), ValueError,
                 r"has a weight entry 'fc9\.weight' that the template Sequential does not have",
                 id="extra-weight-entry"),
    pytest.param(_del("activations", ACT, sign=True), ValueError,
                 r"lacks the quantizer encoding 'act_quant\.\w+'", id="missing-encoding"),
    pytest.param(_copy_entry("activations", ACT, "act_quant.extra"), ValueError,
                 r"has a quantizer encoding 'act_quant\.extra'", id="extra-encoding"),
    pytest.param(_tensors(lambda t: t.pop("2.bias")), ValueError,
                 r"lacks the tensor '2\.bias' that the template Sequential has", id="missing-bias"),
    pytest.param(_tensors(lambda t: t.update({"extra.buffer": torch.zeros(2)})), ValueError,
                 r"has a tensor 'extra\.buffer' that the template Sequential does not have",
                 id="extra-tensor"),
    pytest.param(_tensors(lambda t: t.pop("0.weight.codes")), ValueError,
                 r"lacks the tensor '0\.weight\.codes' that its encodings name",
                 id="missing-codes"),
    pytest.param(_tensors(lambda t: t.update({"2.bias": torch.zeros(5)})), ValueError,
                 r"size mismatch for 2\.bias", id="bias-shape"),
    pytest.param(_tensors(lambda t: t.update({"2.bias": t["2.bias"].double()})), ValueError,
                 r"tensor '2\.bias' is torch\.float64 in .* but torch\.float32 in the template",
                 id="bias-dtype"),
    pytest.param(_tensors(_code_out_of_range), ValueError,
                 # int8 weights, or 7-bit ones where this CPU's int8 kernels saturate
                 r"codes of 0\.weight span \[-128, \d+\], outside the range \[-(127|63), (127|63)\]",
                 id="code-out-of-range"),
    pytest.param(_tensors(lambda t: t.update({"0.weight.codes": t["0.weight.codes"].float()})),
                 ValueError, r"codes of 0\.weight do not fit their encoding: they are "
                 r"torch\.float32", id="float-codes"),
    pytest.param(_set("weights", "0.weight", "view_shape", value=[8, 80], sign=True), ValueError,
                 r"codes of 0\.weight do not fit their encoding: shape \[80, 8\] is not the view "
                 r"shape \[8, 80\]", id="view-shape"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "error", "message"), BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_refused_naming_the_problem(
    saved: Path, mutate: Mutation, error: type[Exception], message: str
) -> None:
    mutate(saved)  # type: ignore[operator]
    with pytest.raises(error, match=message):
        zp.load(saved, _mlp(3))


def test_the_unchanged_checkpoint_loads(saved: Path, static_mlp: nn.Module) -> None:
    # the control for the table above: each case fails only by its own change
    x = _batches(8, 1)[0]
    assert torch.equal(zp.load(saved, _mlp(3))(x), static_mlp(x))


@pytest.mark.parametrize(
    ("template", "error", "message"),
    [
        pytest.param(_mlp(3, hidden=96), ValueError,
                     r"weight 0\.weight of the checkpoint does not fit the template: shape "
                     r"\[80, 8\] is not the template's \[96, 8\]", id="wider"),
        pytest.param(_mlp(3, depth=3), ValueError,
                     r"lacks the weight entry '4\.weight' that the template Sequential has",
                     id="deeper"),
        pytest.param(DigitsCNN(), ValueError, r"\(saved from a Sequential\) lacks the weight entry "
                     r"'\w+(\.\w+)*\.weight' that the template DigitsCNN has", id="other-model"),
        pytest.param(quantize_dynamic(_mlp(3)), ValueError,
                     r"the template Sequential was already quantized by zeropoint",
                     id="quantized-template"),
        pytest.param("Sequential", TypeError, r"must be an nn\.Module, got str", id="not-a-module"),
    ],
)  # fmt: skip
def test_a_template_of_another_architecture_is_refused(
    saved: Path, template: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        zp.load(saved, template)  # type: ignore[arg-type]


def test_paths_without_a_checkpoint_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing: the directory"):
        zp.load(tmp_path / "missing", _mlp(0))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file is a file, not a checkpoint directory"):
        zp.load(tmp_path / "file", _mlp(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*empty: it has no encodings"):
        zp.load(tmp_path / "empty", _mlp(0))


def test_models_that_cannot_be_saved_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Sequential was not prepared by zeropoint"):
        zp.save(_mlp(0), tmp_path / "a")
    prepared = zp.prepare(_mlp(0))
    with pytest.raises(
        ValueError, match=r"weight quantizer of '0' is not frozen .*'track'.*convert"
    ):
        zp.save(prepared, tmp_path / "b")
    qat = zp.prepare_qat(_mlp(0).train(), zp.w4a4_qat("lsq"), example_inputs=_batches(1, 1)[0])
    with pytest.raises(ValueError, match=r"'[\w.]+' is a learnable quantizer \(LSQ"):
        zp.save(qat, tmp_path / "c")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_unwritable_destinations_are_refused(static_mlp: nn.Module, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file exists and is a file"):
        zp.save(static_mlp, tmp_path / "file")
    with pytest.raises(PermissionError, match="cannot create output directory"):
        zp.save(static_mlp, tmp_path / "file" / "sub")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        if not os.access(locked, os.W_OK):  # a privileged user may write anyway
            with pytest.raises(PermissionError, match="locked is not writable"):
                zp.save(static_mlp, locked)
    finally:
        locked.chmod(0o700)
    if Path("/proc/self").is_dir():  # not even root may create directories here
        with pytest.raises(PermissionError, match="cannot create output directory /proc/self/"):
            zp.save(static_mlp, "/proc/self/ckpt")
