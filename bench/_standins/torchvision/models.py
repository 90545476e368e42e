"""Stand-in ``torchvision.models`` (no architectures: the bench builds MobileNetV2 itself)."""
