"""all-MiniLM-L6-v2 through ONNX Runtime: export of its BERT encoder, and an encoder that
reproduces the sentence-transformers pipeline (mean pooling over the attention mask, L2 norm)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from demo.peers.common import _MINILM_INPUTS, ONNX_OPSET
from demo.peers.onnxruntime import ort_session
from zeropoint.report.files import atomic_path


class _BertLastHidden(nn.Module):
    """The sentence-transformer's BERT as a function of its three token inputs."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state


def _tokenize(model: Any, texts: Sequence[str]) -> dict[str, Tensor]:
    """Tokenize as sentence-transformers does: ``model.tokenizer`` with ``padding=True``,
    ``truncation="longest_first"``, ``max_length=model.max_seq_length``."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings")
    if len(texts) == 0:
        raise ValueError("texts is empty")
    enc = model.tokenizer(
        list(texts),
        padding=True,
        truncation="longest_first",
        max_length=model.max_seq_length,
        return_tensors="pt",
    )
    return {k: enc[k] for k in _MINILM_INPUTS}


def export_minilm_onnx(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write the sentence-transformer's BERT (``model[0].auto_model``) as fp32 ONNX.

    TorchScript exporter (``dynamo=False``, opset 17), inputs ``input_ids``, ``attention_mask``,
    ``token_type_ids`` (int64, dynamic batch and sequence axes), output ``last_hidden_state``
    (dynamic batch and sequence). Pooling and normalisation stay outside (see
    ``ort_minilm_encoder``), as in the sentence-transformers pipeline.
    """
    bert = model[0].auto_model
    wrapper = _BertLastHidden(bert).eval()
    example = _tokenize(
        model, ["An example sentence to trace, padded against the next one.", "A short one."]
    )
    axes = {0: "batch", 1: "sequence"}
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # transformers' mask builder indexes with non-negative aranges only, so the exporter's
        # caution about negative indices does not apply (the tests check fp32 parity)
        warnings.filterwarnings("ignore", message=".*advanced indexing in opset.*")
        torch.onnx.export(
            wrapper,
            tuple(example[k] for k in _MINILM_INPUTS),
            str(tmp),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=list(_MINILM_INPUTS),
            output_names=["last_hidden_state"],
            dynamic_axes={**{k: axes for k in _MINILM_INPUTS}, "last_hidden_state": axes},
        )
    return Path(path)


def minilm_calibration_batches(
    model: Any, sentences: Sequence[str], batch_size: int = 16
) -> list[dict[str, Tensor]]:
    """``sentences`` tokenized as sentence-transformers does, in batches of ``batch_size``: the
    feeds for ``ort_static_int8`` on an ``export_minilm_onnx`` file."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return [
        _tokenize(model, sentences[i : i + batch_size])
        for i in range(0, len(sentences), batch_size)
    ]


def ort_minilm_encoder(
    path: str | os.PathLike[str],
    model: Any | None = None,
    threads: int = 1,
    batch_size: int = 32,
) -> Callable[[list[str]], Tensor]:
    """Sentence embeddings from an ``export_minilm_onnx`` file (fp32 or quantized) run by ONNX
    Runtime, computed as the sentence-transformers pipeline computes them:

        e = Σ_t m_t·h_t / max(Σ_t m_t, 1e-9),   embedding = e / max(‖e‖₂, 1e-12)

    (mean pooling of ``last_hidden_state`` h over the attention mask m, then L2 normalisation),
    after tokenizing with ``model.tokenizer`` exactly as ``model.encode`` does. ``model`` is the
    sentence-transformer (``demo.zoo.minilm.load_minilm()`` when None), used only for its
    tokenizer. Returns a function from a list of strings to an ``(n, 384)`` float32 tensor.
    """
    if model is None:
        from demo.zoo.minilm import load_minilm

        model = load_minilm()
    session = ort_session(path, threads)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def encode(texts: list[str]) -> Tensor:
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("encode needs a non-empty list of strings")
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = _tokenize(model, texts[i : i + batch_size])
            feed = {k: v.numpy() for k, v in tokens.items()}
            hidden = torch.from_numpy(session.run(["last_hidden_state"], feed)[0])
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
        return torch.cat(out)

    return encode
