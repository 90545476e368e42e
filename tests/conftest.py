"""Test configuration: one intra-op thread per test process.

`make test` runs two workers on a 2-core machine; letting each also start two OpenMP threads
oversubscribes the cores, and spinning OpenMP threads then make medium-sized tensor ops ~20x slower.
"""

from __future__ import annotations

import pytest
import torch

from demo.zoo.digits import DigitsCNN, DigitsData, load_digits_data, train

# One thread everywhere: it also makes training in the tests reproducible (the float summation
# order, hence the trajectory of QAT at 2 bits, depends on the thread count).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits(request: pytest.FixtureRequest) -> tuple[DigitsCNN, DigitsData]:
    """The digits CNN trained on the digits split (seed 0, 20 epochs), cached across workers
    and runs in pytest's cache directory (training takes ~20 s on one thread)."""
    data = load_digits_data(seed=0)
    store = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = store.mkdir("zeropoint-digits") if store is not None else None
    path = cache / "digits_cnn_seed0_e20_v2.pt" if cache else None
    torch.manual_seed(0)  # the initial weights must not depend on the tests run before
    model = DigitsCNN()
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        return model, data
    train(model, data, epochs=20, seed=0)
    if path is not None:
        from zeropoint.report.files import atomic_path

        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
    return model, data


# The model zoo's fixtures (zoo, mobilenet_v2, imagenet_eval_views, ...): tests/zoo_fixtures.py.
pytest_plugins = ("tests.zoo_fixtures",)
