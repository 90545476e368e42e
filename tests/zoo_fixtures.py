"""Fixtures for the model zoo (a pytest plugin, loaded by ``tests/conftest.py``).

- ``zoo_cache_dir``: where trained zoo networks and MobileNetV2's fp32 logits are cached —
  pytest's cache (``.pytest_cache/d/zeropoint-zoo``), else ``$ZEROPOINT_ZOO_CACHE`` when set
  (useful under ``-p no:cacheprovider``), else None (nothing cached across runs).
- ``zoo``: ``zoo(name) -> Trained`` (``demo.zoo.registry``), trained once per session/cache.
- ``mobilenet_v2``: MobileNetV2 with its ImageNet weights (eval mode; do not modify it).
- ``imagenet_eval_views`` / ``imagenet_calibration_views``: 256 views of the 16 evaluation
  photos and 64 views of the 8 other calibration photos (``demo.zoo.views``).
- ``mobilenet_v2_fp32_logits``: MobileNetV2's fp32 logits on the evaluation views, (256, 1000).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

from demo.zoo.mobilenet_v2 import MobileNetV2, load_mobilenet_v2, weights_path
from demo.zoo.registry import Trained, load_trained
from demo.zoo.views import ImageViews, calibration_views, evaluation_views


@pytest.fixture(scope="session")
def zoo_cache_dir(request: pytest.FixtureRequest) -> Path | None:
    store = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if store is not None:
        return Path(store.mkdir("zeropoint-zoo"))
    env = os.environ.get("ZEROPOINT_ZOO_CACHE")
    if env:
        Path(env).mkdir(parents=True, exist_ok=True)
        return Path(env)
    return None


@pytest.fixture(scope="session")
def zoo(zoo_cache_dir: Path | None) -> Callable[[str], Trained]:
    loaded: dict[str, Trained] = {}

    def get(name: str) -> Trained:
        if name not in loaded:
            loaded[name] = load_trained(name, zoo_cache_dir)
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def mobilenet_v2() -> MobileNetV2:
    return load_mobilenet_v2()


@pytest.fixture(scope="session")
def imagenet_eval_views() -> ImageViews:
    return evaluation_views(256, seed=0)


@pytest.fixture(scope="session")
def imagenet_calibration_views() -> ImageViews:
    return calibration_views(64, seed=1)


def _fingerprint(views: ImageViews) -> str:
    """A short hash of the weights file and of the views (a sub-sampled copy of their pixels)."""
    h = hashlib.sha256(weights_path().name.encode())
    h.update(views.images[:, :, ::8, ::8].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def mobilenet_v2_fp32_logits(
    mobilenet_v2: MobileNetV2, imagenet_eval_views: ImageViews, zoo_cache_dir: Path | None
) -> Tensor:
    """fp32 logits on the evaluation views (about 20 s on one thread; cached)."""
    path = None
    if zoo_cache_dir is not None:
        path = zoo_cache_dir / f"mobilenet_v2_fp32_{_fingerprint(imagenet_eval_views)}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
    with torch.no_grad():
        logits = torch.cat([mobilenet_v2(b) for b in imagenet_eval_views.batches(32)])
    if path is not None:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(logits, tmp)
        os.replace(tmp, path)
    return logits
