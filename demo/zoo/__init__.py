"""Real models and data used by the demo, the examples, the benchmarks and the tests (offline).

- ``digits``, ``minilm``, ``sentences``: wave 1's digits CNN and all-MiniLM-L6-v2 with its data;
- ``mobilenet_v2`` + ``views`` + ``metrics``: MobileNetV2 with torchvision's ImageNet weights,
  the evaluation / calibration views of the scikit-image photos, and the agreement metrics;
- ``registry``: the zoo of real architectures trained at run time on real MNIST (ResNet-18,
  U-Net, EfficientNet-style, 1-D audio CNN, dead channels, op coverage, digits) —
  ``ZOO[name]`` and ``load_trained(name, cache_dir)``; ``inventory`` lists their operations;
  ``python -m demo.zoo.summary`` prints the fp32 baselines.
"""
