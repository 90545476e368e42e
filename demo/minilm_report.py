"""all-MiniLM-L6-v2 in the main job: zeropoint's dynamic int8 and int4 weight-only against fp32,
torch.ao's dynamic int8 and ONNX Runtime's dynamic and static quantizers — size on disk, latency
of `encode` at batch 32, and embedding quality (cosine to fp32, nearest-neighbour agreement)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

import zeropoint as zp
from demo import peers
from demo.digits_report import Row
from demo.zoo.minilm import load_minilm
from demo.zoo.sentences import CALIBRATION, SENTENCES, mean_cosine, nearest_neighbour_agreement
from zeropoint.report.timing import interleaved_latency


def _fp32_size(model: torch.nn.Module, directory: Path) -> int:
    from safetensors.torch import save_file

    path = directory / "minilm_fp32.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))
    return peers.file_size(path)


def _encode_calibration(model: Any) -> Any:
    """The encoder's embeddings of the calibration sentences (the Linear layers' inputs are
    recorded on the way; the embeddings guide the search for cheaper layer modes)."""
    return model.encode(list(CALIBRATION), convert_to_tensor=True)


def run(work: Path, quick: bool = False, latency_sentences: int | None = None) -> list[Row]:
    """The MiniLM rows: quality on every sentence; latency on the first ``latency_sentences``
    (default: all) — the main job times 128 (four batches of 32) to keep its run short."""
    sentences = list(SENTENCES[:96] if quick else SENTENCES)
    timed = sentences[:latency_sentences] if latency_sentences else sentences
    model = load_minilm()

    def encoder(m: torch.nn.Module, s: list[str] = sentences) -> object:
        return lambda: m.encode(s, batch_size=32, convert_to_tensor=True)  # type: ignore[operator]

    ref = model.encode(sentences, batch_size=32, convert_to_tensor=True)
    int8 = zp.quantize_dynamic(model, calib_data=_encode_calibration)
    int4 = zp.quantize_dynamic(model, zp.int4_weight_only(32))
    ao = peers.torch_ao_dynamic_int8(model)
    int8_dir = zp.save(int8, work / "minilm_int8")
    int4_dir = zp.save(int4, work / "minilm_int4")

    fp32_onnx = peers.export_minilm_onnx(model, work / "minilm_fp32.onnx")
    ort_dyn = peers.ort_dynamic_int8(fp32_onnx, work / "minilm_ort_dynamic.onnx")
    calib = peers.minilm_calibration_batches(model, list(SENTENCES[-64:]), batch_size=16)
    ort_static = peers.ort_static_int8(fp32_onnx, calib, work / "minilm_ort_static.onnx")
    threads = torch.get_num_threads()
    enc_fp32_ort = peers.ort_minilm_encoder(fp32_onnx, model, threads=threads)
    enc_dyn = peers.ort_minilm_encoder(ort_dyn, model, threads=threads)
    enc_static = peers.ort_minilm_encoder(ort_static, model, threads=threads)

    models = {"fp32": model, "zp_int8": int8, "zp_int4": int4, "torch_ao": ao}
    runners = {"ort_fp32": enc_fp32_ort, "ort_dynamic": enc_dyn, "ort_static": enc_static}

    def contenders(s: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {k: encoder(m, s) for k, m in models.items()}
        out.update({k: (lambda r=r: r(s)) for k, r in runners.items()})
        return out

    embeddings = {name: fn() for name, fn in contenders(sentences).items()}
    lat = interleaved_latency(contenders(timed), repeats=2 if quick else 5, warmup=1)

    def quality(name: str) -> tuple[float, str]:
        mean, worst = mean_cosine(ref, embeddings[name])
        nn_agree = nearest_neighbour_agreement(ref, embeddings[name])
        return mean, f"min cos {worst:.3f}, NN agree {100 * nn_agree:.1f}%"

    with tempfile.TemporaryDirectory() as d:
        fp32_size = _fp32_size(model, Path(d))
    rows = []
    table = [
        ("fp32 (PyTorch)", "fp32", "32/32", fp32_size),
        (
            "zeropoint dynamic int8 (smoothed/per-token)",
            "zp_int8",
            "8/8",
            peers.file_size(int8_dir),
        ),
        ("zeropoint int4 weight-only (g32)", "zp_int4", "4/32", peers.file_size(int4_dir)),
        ("torch.ao quantize_dynamic int8", "torch_ao", "8/8", peers.state_dict_size(ao)),
        ("ONNX Runtime fp32", "ort_fp32", "32/32", peers.file_size(fp32_onnx)),
        ("ORT quantize_dynamic int8", "ort_dynamic", "8/8", peers.file_size(ort_dyn)),
        ("ORT quantize_static (defaults)", "ort_static", "8/8", peers.file_size(ort_static)),
    ]
    for label, key, bits, size in table:
        q, detail = quality(key)
        rows.append(Row("all-MiniLM-L6-v2", label, bits, size, lat[key], q, detail))
    return rows


__all__ = ["run"]
