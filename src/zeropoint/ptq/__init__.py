"""Post-training algorithms that change a model's weights or ranges before or after calibration:
cross-layer equalization, bias correction, AdaRound, OMSE (uniform W8A8-style models), and the
weight-only error-correcting quantizers GPTQ, AWQ and HQQ. Each is a plain function that takes
and returns models; import them from their modules (``zeropoint.ptq.<name>``)."""
