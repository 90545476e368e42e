"""Export: ONNX (QDQ) for ONNX Runtime, and checkpoints (safetensors + JSON encodings)."""
