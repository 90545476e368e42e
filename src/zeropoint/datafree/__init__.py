"""Data-free quantization: ZeroQ's distilled data (level 1: calibration with no real data; level 2:
fine-tuning with no real data). Import from ``zeropoint.datafree.<module>``."""
