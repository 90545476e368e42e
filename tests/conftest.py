"""Test configuration: one intra-op thread per pytest-xdist worker.

`make test` runs two workers on a 2-core machine; letting each also start two OpenMP threads
oversubscribes the cores, and spinning OpenMP threads then make medium-sized tensor ops ~20x slower.
"""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
