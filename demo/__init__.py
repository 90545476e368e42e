"""The main job, the model zoo, and the peers' wrappers: everything that is *not* the library.

`python -m demo` (what `make demo` runs) quantizes real models and writes the report;
`python -m demo tour` is the tensor-level tour. This package is not in the wheel: it imports
scikit-learn, sentence-transformers, ONNX Runtime, torch.ao and matplotlib, which the library
itself never needs at import time.
"""
