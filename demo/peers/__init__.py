"""The peers' own quantizers, run on a float ``torch.nn.Module`` behind one small interface.

zeropoint is compared side by side with the toolkits it aims to beat. Each function here calls a
peer's public API with its usual settings, stated in the docstring, so that the demo, the
benchmarks and the tests measure the peer as its users would run it, not a re-implementation:

* torch.ao.quantization — ``quantize_dynamic`` (eager) and FX graph mode static int8
  (``get_default_qconfig_mapping`` → ``prepare_fx`` → calibrate → ``convert_fx``);
* ONNX Runtime — ``onnxruntime.quantization.quantize_static`` (QDQ) and ``quantize_dynamic`` on
  an fp32 ONNX file written by the TorchScript exporter, plus sessions and runners;
* all-MiniLM-L6-v2 through ONNX Runtime: export of its BERT encoder and an encoder that
  reproduces the sentence-transformers pipeline (mean pooling over the attention mask, L2 norm);
* measurement helpers: file and checkpoint sizes, median latency.

torch 2.13 marks torch.ao.quantization deprecated (it still runs); its deprecation warnings are
silenced only around the calls made here. Known peer defects are reported, not hidden: on this
CPU build the quantized ``ConvTranspose2d`` of the ``x86`` and ``onednn`` engines is wrong when
in_channels ≠ out_channels, and ``fbgemm``'s is wrong and non-deterministic for 2x2 kernels
(see ``torch_ao_static_int8``); ``qnnpack``'s is correct.
"""

from demo.peers.measure import file_size, latency, state_dict_size
from demo.peers.minilm import (
    export_minilm_onnx,
    minilm_calibration_batches,
    ort_minilm_encoder,
)
from demo.peers.onnxruntime import (
    export_fp32_onnx,
    ort_dynamic_int8,
    ort_runner,
    ort_session,
    ort_static_int8,
)
from demo.peers.torch_ao import torch_ao_dynamic_int8, torch_ao_static_int8

__all__ = [
    "export_fp32_onnx",
    "export_minilm_onnx",
    "file_size",
    "latency",
    "minilm_calibration_batches",
    "ort_dynamic_int8",
    "ort_minilm_encoder",
    "ort_runner",
    "ort_session",
    "ort_static_int8",
    "state_dict_size",
    "torch_ao_dynamic_int8",
    "torch_ao_static_int8",
]
