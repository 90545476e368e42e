"""ZeroQ: distilled data matches the batch-norm statistics; level 1 calibrates on it and level 2
fine-tunes on it, with no real sample anywhere in the pipeline; a model without batch norms is
refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

import zeropoint as zp
from demo.zoo.digits import DigitsCNN, DigitsData, accuracy
from zeropoint.datafree.zeroq import (
    distill_data,
    roughness,
    statistics_loss,
    zeroq_finetune,
    zeroq_quantize,
    zeroq_report,
)


def test_a_model_without_batch_norms_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    with pytest.raises(ValueError, match="ZeroQ needs batch-norm layers with running statistics"):
        distill_data(model, (1, 8, 8), 4, iterations=1)
    with pytest.raises(ValueError, match="ZeroQ needs batch-norm"):
        zeroq_quantize(model, input_shape=(1, 8, 8), distilled=torch.randn(4, 1, 8, 8))
    with pytest.raises(ValueError, match="eval mode"):
        distill_data(nn.Sequential(nn.BatchNorm1d(3)).train(), (3,), 4)


def test_distilled_data_matches_the_running_statistics() -> None:
    """A batch norm that saw inputs N(2, 0.5²) per channel: distilled inputs reproduce that mean
    and spread (the paper's loss driven from ~4 per channel to nearly 0)."""
    model = nn.Sequential(nn.BatchNorm1d(6)).eval()
    model[0].running_mean.fill_(2.0)
    model[0].running_var.fill_(0.25)
    x = distill_data(model, (6,), 128, batch_size=128, iterations=300, lr=0.1, progress=False,
                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert x.shape == (128, 6)
    assert torch.allclose(x.mean(0), torch.full((6,), 2.0), atol=0.02)
    assert torch.allclose(x.std(0, unbiased=False), torch.full((6,), 0.5), atol=0.02)
    noise = torch.randn(128, 6)
    assert statistics_loss(model, x, batch_size=128) < 1e-3 < 1.0 < statistics_loss(model, noise)
    again = distill_data(model, (6,), 128, batch_size=128, iterations=300, lr=0.1,
                         progress=False, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(x, again)  # deterministic for a given generator


def test_distilled_data_stays_in_the_input_range() -> None:
    """Projected distillation: a batch norm that saw N(2, 0.5²) per channel, but real inputs of
    channel c lie in [lo_c, hi_c] = [0, 2] for c < 3 and [1, 4] for c ≥ 3. Every distilled value
    lies in its channel's range, and the statistics are matched as far as the box allows: the
    channels whose box contains N(2, 0.5²)'s bulk ([1, 4]) still reach mean 2 and spread 0.5;
    the others are pushed against their upper bound (an unprojected run overshoots it)."""
    model = nn.Sequential(nn.BatchNorm1d(6)).eval()
    model[0].running_mean.fill_(2.0)
    model[0].running_var.fill_(0.25)
    lo, hi = [0.0] * 3 + [1.0] * 3, [2.0] * 3 + [4.0] * 3
    x = distill_data(model, (6,), 128, batch_size=128, iterations=300, lr=0.1, progress=False,
                     input_range=(lo, hi))  # fmt: skip
    assert bool((x >= torch.tensor(lo)).all() and (x <= torch.tensor(hi)).all())
    assert float(x[:, :3].max()) == 2.0  # pressed against the bound, not beyond it
    assert torch.allclose(x[:, 3:].mean(0), torch.full((3,), 2.0), atol=0.05)
    assert torch.allclose(x[:, 3:].std(0, unbiased=False), torch.full((3,), 0.5), atol=0.05)
    free = distill_data(model, (6,), 128, batch_size=128, iterations=300, lr=0.1, progress=False)
    assert float(free[:, :3].max()) > 2.5
    scalar = distill_data(model, (6,), 8, iterations=5, progress=False, input_range=(0.0, 1.5))
    assert float(scalar.min()) >= 0.0 and float(scalar.max()) <= 1.5


@pytest.mark.parametrize(
    ("bad", "match"),
    [((0.0,), "must be \\(lo, hi\\)"), (([0.0, 1.0], 1.0), "2 values: expected 1 or one per"),
     ((1.0, 1.0), "finite lo < hi"), ((0.0, float("inf")), "finite lo < hi")],
    ids=["one bound", "wrong channel count", "empty", "infinite"],
)  # fmt: skip
def test_a_bad_input_range_is_named(bad: tuple, match: str) -> None:
    model = nn.Sequential(nn.BatchNorm1d(6)).eval()
    with pytest.raises(ValueError, match=match):
        distill_data(model, (6,), 4, iterations=1, progress=False, input_range=bad)


def testroughness_is_the_mean_squared_neighbour_difference() -> None:
    """A ramp x[i, j] = a·i + b·j has roughness a² + b²; constant images and vectors have none."""
    i, j = torch.meshgrid(torch.arange(7.0), torch.arange(5.0), indexing="ij")
    ramp = (0.3 * i - 1.5 * j).expand(2, 3, 7, 5)
    assert float(roughness(ramp)) == pytest.approx(0.3**2 + 1.5**2, rel=1e-6)
    assert float(roughness(torch.full((2, 3, 4, 4), 7.0))) == 0.0
    assert float(roughness(torch.randn(4, 6))) == 0.0


def test_smoothness_makes_distilled_images_smooth_and_keeps_the_statistics() -> None:
    """A batch norm that saw N(1, 2²) per pixel of 1×8×8 images: distilled without the prior the
    images are as rough as noise (neighbour differences of variance 2·σ² = 8 per axis); with it
    they are nearly flat — every image close to a constant — and the batch still has mean 1 and
    spread 2 (the statistics the batch norm sees allow both)."""
    model = nn.Sequential(nn.BatchNorm2d(1)).eval()
    model[0].running_mean.fill_(1.0)
    model[0].running_var.fill_(4.0)
    options = dict(batch_size=64, iterations=400, lr=0.1, progress=False)
    rough = distill_data(model, (1, 8, 8), 64, **options)
    smooth = distill_data(model, (1, 8, 8), 64, smoothness=10.0, **options)
    assert float(roughness(rough)) > 10.0
    assert float(roughness(smooth)) < 1e-4
    for x in (rough, smooth):
        assert float(x.mean()) == pytest.approx(1.0, abs=0.01)
        assert float(x.std(unbiased=False)) == pytest.approx(2.0, abs=0.01)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="smoothness"):
            distill_data(model, (1, 8, 8), 4, iterations=1, progress=False, smoothness=bad)


class _Recorder:
    """Every input the model's first layer ever sees (the hook travels with deep copies)."""

    def __init__(self, model: DigitsCNN) -> None:
        self.seen: list[torch.Tensor] = []
        self.handle = model.stem[0].register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.seen.append(args[0].detach().clone())

    def rows(self) -> Iterator[torch.Tensor]:
        for batch in self.seen:
            yield from batch.reshape(batch.shape[0], -1)


def _assert_no_real_sample(recorder: _Recorder, data: DigitsData) -> None:
    real = torch.cat([data.x_train, data.x_test]).reshape(-1, 64)
    closest = min(float(torch.cdist(row[None], real).min()) for row in recorder.rows())
    # real digits are ≥ 0 with 17 grey levels; the distilled inputs are none of them
    assert closest > 0.5


@pytest.mark.slow
def test_level_1_calibrates_on_distilled_data_alone(
    digits: tuple[DigitsCNN, DigitsData], monkeypatch: pytest.MonkeyPatch
) -> None:
    """W8A8 calibrated on distilled data is within 3 points of the same observer on real data
    (measured: both 99.7 % for min-max and percentile; W4A4 95.5 % vs 96.4 %)."""
    import sklearn.datasets

    model, data = digits

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("ZeroQ loaded a data set")

    monkeypatch.setattr(sklearn.datasets, "load_digits", no_data)
    recorder = _Recorder(model)
    try:
        q = zeroq_quantize(
            model, zp.int8_static("percentile"), input_shape=(1, 8, 8), num_samples=64,
            batch_size=64, iterations=200, progress=False,
        )  # fmt: skip
    finally:
        recorder.handle.remove()
    assert recorder.seen and sum(b.shape[0] for b in recorder.seen) >= 64 * 200
    _assert_no_real_sample(recorder, data)
    real = zp.quantize_static(
        model, data.calibration_batches(), zp.int8_static("percentile"), progress=False
    )
    zero_acc = accuracy(q, data.x_test, data.y_test)
    assert zero_acc >= accuracy(real, data.x_test, data.y_test) - 3.0
    report = zeroq_report(q)
    assert report.level == 1 and report.num_samples == 64
    assert report.distill_loss < 0.01 * statistics_loss(model, torch.randn(64, 1, 8, 8))


@pytest.mark.slow
def test_level_2_fine_tunes_on_distilled_data_and_beats_level_1(
    digits: tuple[DigitsCNN, DigitsData],
) -> None:
    """W2A4 (every layer): fine-tuning against the float teacher on distilled data recovers far
    more than calibration alone (measured: level 1 56.3 %, level 2 93.9 % at 10 epochs)."""
    model, data = digits
    distilled = distill_data(model, (1, 8, 8), 128, batch_size=64, iterations=150, progress=False)
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=2, symmetric=True, axis=0),
        activation=zp.Scheme(bits=4, signed=False),
    )
    recorder = _Recorder(model)
    try:
        level1 = zeroq_quantize(
            model, config, input_shape=(1, 8, 8), distilled=distilled, progress=False
        )
        level2 = zeroq_finetune(
            model, config, input_shape=(1, 8, 8), distilled=distilled, epochs=20, progress=False
        )
    finally:
        recorder.handle.remove()
    _assert_no_real_sample(recorder, data)
    acc1 = accuracy(level1, data.x_test, data.y_test)
    acc2 = accuracy(level2, data.x_test, data.y_test)
    assert acc2 > acc1 + 20.0
    assert zeroq_report(level2).level == 2


@pytest.mark.slow
def test_level_2_can_start_from_adarounds_weights(digits: tuple[DigitsCNN, DigitsData]) -> None:
    """``start=``: the student begins at the given converted model's weights (AdaRound's learned
    rounding on the distilled data): with a vanishing learning rate every layer comes out with
    exactly AdaRound's integer weights; a model of other layers is refused by name."""
    from zeropoint.functional import quantize_int
    from zeropoint.nn.modules import QuantMixin
    from zeropoint.ptq.adaround import adaround

    model, data = digits
    distilled = distill_data(model, (1, 8, 8), 64, batch_size=64, iterations=100, progress=False)
    config = zp.QuantConfig(
        weight=zp.Scheme(bits=4, symmetric=True, axis=0), activation=zp.Scheme(bits=8, signed=False)
    )
    ada = adaround(
        model, distilled, config, iterations=50, rows=512, batch_rows=128, progress=False
    )
    still = zeroq_finetune(model, config, input_shape=(1, 8, 8), distilled=distilled, epochs=1,
                           lr=1e-12, start=ada, progress=False)  # fmt: skip

    def codes(m: nn.Module) -> dict[str, torch.Tensor]:
        return {
            n: quantize_int(layer.float_weight, layer.weight_qparams())
            for n, layer in m.named_modules()
            if isinstance(layer, QuantMixin) and layer.weight_quant is not None
        }

    mine, theirs = codes(still), codes(ada)
    assert set(mine) == set(theirs) and len(mine) >= 3
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    tuned = zeroq_finetune(model, config, input_shape=(1, 8, 8), distilled=distilled, epochs=5,
                           start=ada, progress=False)  # fmt: skip
    assert accuracy(tuned, data.x_test, data.y_test) >= accuracy(ada, data.x_test, data.y_test) - 2
    other = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(144, 10)).eval()  # fmt: skip
    other_q = zp.quantize_static(other, [distilled], config, progress=False)
    with pytest.raises(ValueError, match="start has no quantized layer"):
        zeroq_finetune(model, config, input_shape=(1, 8, 8), distilled=distilled, epochs=1,
                       start=other_q, progress=False)  # fmt: skip
