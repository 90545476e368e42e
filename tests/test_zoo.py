"""The model zoo: MobileNetV2 with real ImageNet weights, the photo views, the metrics, and the
small networks trained on real data (demo/zoo)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import rel_entr

from demo.zoo import metrics
from demo.zoo.data import load_mnist
from demo.zoo.deadchannels import BLOCK_DEAD, STEM_DEAD
from demo.zoo.inventory import op_inventory
from demo.zoo.mobilenet_v2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MobileNetV2,
    imagenet_class_names,
    normalize,
    preprocess,
    resize_short_side,
)
from demo.zoo.registry import ZOO, load_trained
from demo.zoo.views import (
    ALL_PHOTOS,
    CALIBRATION_PHOTOS,
    EVAL_PHOTOS,
    calibration_views,
    canonical_view,
    load_photo,
    make_views,
    random_resized_crop_box,
)

# torchvision's ImageNet-1k indices of the classes the photos show.
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP, TRIPOD, MOPED, MOTOR_SCOOTER, SPACE_SHUTTLE = 967, 968, 872, 665, 670, 812


# --- MobileNetV2 -----------------------------------------------------------------------------


def test_mobilenet_v2_has_torchvisions_names_and_parameter_count(mobilenet_v2):
    from demo.zoo.mobilenet_v2 import weights_path

    state = torch.load(weights_path(), weights_only=True)
    assert set(mobilenet_v2.state_dict()) == set(state)
    # torchvision documents 3,504,872 parameters for mobilenet_v2 (IMAGENET1K_V1)
    assert sum(p.numel() for p in mobilenet_v2.parameters()) == 3_504_872
    for key, value in state.items():
        assert torch.equal(mobilenet_v2.state_dict()[key], value), key
    with pytest.raises(RuntimeError, match="Missing key"):
        MobileNetV2(width_mult=1.0).load_state_dict(
            {k: v for k, v in state.items() if k != "classifier.1.bias"}
        )


def test_imagenet_class_names_are_torchvisions_order():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert (names[0], names[285], names[967], names[872], names[999]) == (
        "tench",
        "Egyptian cat",
        "espresso",
        "tripod",
        "toilet tissue",
    )


def test_preprocess_is_torchvisions_evaluation_transform():
    image = load_photo("chelsea")  # 300 x 451
    assert resize_short_side(image, 256).shape == (3, 256, 384)  # int(256 * 451 / 300)
    x = preprocess(image)
    assert x.shape == (1, 3, 224, 224)
    raw = canonical_view(image)
    for c in range(3):
        expected = (raw[c].double() - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(x[0, c].double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("photo", "expected", "top_k"),
    [
        ("chelsea", CAT_CLASSES, 1),
        ("coffee", {ESPRESSO, CUP}, 1),
        ("camera", {TRIPOD}, 1),
        ("motorcycle", {MOPED, MOTOR_SCOOTER}, 1),
        ("rocket", {SPACE_SHUTTLE}, 3),  # top-1 is "drilling platform": the gantry
    ],
)
def test_mobilenet_v2_recognises_the_imagenet_objects_among_the_photos(
    mobilenet_v2, photo, expected, top_k
):
    with torch.no_grad():
        probs = mobilenet_v2(preprocess(load_photo(photo))).softmax(1)[0]
    assert set(probs.topk(top_k).indices.tolist()) & expected, photo
    if photo in ("coffee", "camera"):
        assert float(probs.max()) > 0.9  # unambiguous photos: a confident, right answer


@pytest.mark.slow
def test_mobilenet_v2_fp32_on_the_evaluation_views(mobilenet_v2_fp32_logits, imagenet_eval_views):
    logits, views = mobilenet_v2_fp32_logits, imagenet_eval_views
    assert logits.shape == (256, 1000) and torch.isfinite(logits).all()
    top1 = logits.argmax(1)
    expected = {
        "chelsea": CAT_CLASSES,
        "coffee": {ESPRESSO, CUP},
        "camera": {TRIPOD},
        "motorcycle": {MOPED, MOTOR_SCOOTER},
    }
    for photo, classes in expected.items():
        sel = views.photo == views.photos.index(photo)
        hits = sum(int(c) in classes for c in top1[sel])
        assert hits >= 14, (photo, hits)  # of 16 views
    # the confident share is a property of these photos, not of the code: a sanity floor
    assert int(metrics.confident_mask(logits).sum()) >= 64


# --- views of the photos -----------------------------------------------------------------------


def test_all_photos_load_as_distinct_rgb_images_in_unit_range():
    assert len(ALL_PHOTOS) == len(set(ALL_PHOTOS)) == 26
    seen = set()
    for name in ALL_PHOTOS:
        image = load_photo(name)
        assert image.ndim == 3 and image.shape[0] == 3 and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        key = (tuple(image.shape), round(float(image.double().sum()), 3))
        assert key not in seen, name
        seen.add(key)
    with pytest.raises(ValueError, match="unknown photo 'cat'"):
        load_photo("cat")


def test_evaluation_and_calibration_photos_are_disjoint(
    imagenet_eval_views, imagenet_calibration_views
):
    assert len(EVAL_PHOTOS) == 16 and len(CALIBRATION_PHOTOS) == 8
    assert not set(imagenet_eval_views.photos) & set(imagenet_calibration_views.photos)
    assert len(imagenet_eval_views) == 256 and len(imagenet_calibration_views) == 64
    assert torch.bincount(imagenet_eval_views.photo).tolist() == [16] * 16
    assert torch.bincount(imagenet_calibration_views.photo).tolist() == [8] * 8
    with pytest.raises(ValueError, match=r"\['coffee'\] are evaluation photos"):
        calibration_views(8, photos=("grass", "coffee"))


def test_views_are_deterministic_in_their_seed():
    build = make_views.__wrapped__  # bypass the in-memory cache
    a = build(("coffee", "grass"), 6, 3)
    b = build(("coffee", "grass"), 6, 3)
    c = build(("coffee", "grass"), 6, 4)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.images[:2], c.images[:2])  # the canonical views
    assert not torch.equal(a.images[2:], c.images[2:])
    assert a.photo.tolist() == [0, 1, 0, 1, 0, 1]
    raw = a.images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = raw + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    torch.testing.assert_close(
        a.images[0], normalize(canonical_view(load_photo("coffee"))[None])[0]
    )


def test_random_resized_crop_box_respects_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(300, 451, g, scale=(0.25, 1.0))
        assert top >= 0 and top + h <= 300 and left >= 0 and left + w <= 451
        # rounding h and w moves the area and ratio by at most one pixel's worth
        assert 0.25 * 300 * 451 * 0.97 <= h * w <= 300 * 451
        assert 3 / 4 * 0.98 <= w / h <= 4 / 3 * 1.02


# --- metrics -----------------------------------------------------------------------------------


def test_top_k_and_confident_agreement_by_hand():
    reference = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 0.9], [0.0, 0.0, 4.0], [1.0, 1.1, 0.0]])
    logits = torch.tensor([[4.0, 1.0, 0.0], [0.0, 0.5, 0.9], [0.0, 3.0, 1.0], [2.0, 1.0, 0.0]])
    # reference top-1: 0, 1, 2, 1; logits top-1: 0, 2, 1, 0 → 1 of 4 agree
    assert metrics.top_k_agreement(logits, reference, 1) == 25.0
    # top-2 of logits: {0,1}, {2,1}, {1,2}, {0,1} → all contain the reference class
    assert metrics.top_k_agreement(logits, reference, 2) == 100.0
    # confident reference rows (max softmax ≥ 0.5): rows 0 and 2
    p = np.exp(reference.numpy()) / np.exp(reference.numpy()).sum(1, keepdims=True)
    assert metrics.confident_mask(reference).tolist() == (p.max(1) >= 0.5).tolist()
    assert metrics.confident_mask(reference).tolist() == [True, False, True, False]
    assert metrics.confident_agreement(logits, reference) == 50.0
    with pytest.raises(ValueError, match="one shape"):
        metrics.top_k_agreement(logits[:3], reference)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3\]"):
        metrics.top_k_agreement(logits, reference, 4)


def test_mean_kl_matches_scipy_in_float64():
    g = torch.Generator().manual_seed(0)
    reference = 3 * torch.randn(64, 1000, generator=g)
    logits = reference + 0.5 * torch.randn(64, 1000, generator=g)
    p = F.softmax(reference.double(), 1).numpy()
    q = F.softmax(logits.double(), 1).numpy()
    expected = rel_entr(p, q).sum(1).mean()
    assert math.isclose(metrics.mean_kl(logits, reference), expected, rel_tol=1e-9)
    assert metrics.mean_kl(reference, reference) == pytest.approx(0.0, abs=1e-12)
    report = metrics.agreement_report(logits, reference)
    assert report["n"] == 64 and report["kl"] == metrics.mean_kl(logits, reference)


def test_accuracy_psnr_and_histogram_by_hand():
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert metrics.accuracy(logits, torch.tensor([1, 1, 1])) == pytest.approx(200 / 3)
    assert metrics.class_histogram(logits) == {1: 2, 0: 1}
    target = torch.zeros(2, 1, 2, 2)
    pred = torch.tensor([[[[0.25, 0.25], [0.25, 0.25]]], [[[0.0, 0.0], [0.0, 0.5]]]])
    # per-image MSE 1/16 and 1/16 → 10·log10(16) dB each
    assert metrics.psnr(pred, target) == pytest.approx(10 * math.log10(16), rel=1e-12)
    with pytest.raises(ValueError, match="labels"):
        metrics.accuracy(logits, torch.tensor([1, 1]))


# --- the trained zoo ---------------------------------------------------------------------------


def test_mnist_split_is_a_seeded_partition_of_the_5000_images():
    d = load_mnist(seed=0)
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert float(d.x_train.min()) >= 0.0 and float(d.x_train.max()) <= 1.0
    both = torch.cat([d.y_train, d.y_test])
    assert torch.bincount(both).tolist() == [500] * 10
    assert torch.equal(d.calibration(256), d.x_train[:256])
    assert torch.equal(load_mnist.__wrapped__(seed=0).x_test, d.x_test)
    assert not torch.equal(load_mnist.__wrapped__(seed=1).x_test, d.x_test)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_network_contains_the_operations_it_covers(name):
    entry = ZOO[name]
    data = entry.load_data()
    model = entry.fresh()
    inventory = op_inventory(model, concrete_args=data.kwargs or None)
    missing = [op for op in entry.ops if op not in inventory]
    assert not missing, (name, missing)
    with torch.no_grad():
        out = model.eval()(data.example_input(3), **data.kwargs)
    assert out.shape[0] == 3 and torch.isfinite(out).all()


def test_zoo_initial_weights_are_seeded_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = ZOO["resnet18"].fresh(), ZOO["resnet18"].fresh()
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    with pytest.raises(ValueError, match="unknown zoo network 'resnet50'"):
        load_trained("resnet50")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_network_reaches_its_fp32_metric(zoo, name):
    trained = zoo(name)
    assert trained.metric() >= trained.entry.threshold


@pytest.mark.slow
def test_unet_denoises(zoo):
    t = zoo("unet")
    noisy = metrics.psnr(t.data.x_test, t.data.y_test)
    assert t.metric() >= noisy + 8.0  # dB


@pytest.mark.slow
def test_audio1d_returns_its_embedding_on_the_flag(zoo):
    t = zoo("audio1d")
    x = t.data.example_input(5)
    with torch.no_grad():
        e = t.model(x, embed=True)
        logits = t.model(x, embed=False)
        assert e.shape == (5, 32) and float(e.abs().max()) < 1.0
        torch.testing.assert_close(t.model.classifier(e), logits, rtol=0, atol=0)


@pytest.mark.slow
def test_dead_channels_fold_to_tiny_weights_and_bias_minus_one(zoo):
    t = zoo("deadchannels")
    model = t.model
    for conv, bn, dead in model.dead_layers():  # BatchNorm folding in float64, by hand
        s = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = (conv.weight.detach().double() * s.view(-1, 1, 1, 1)).flatten(1).abs().amax(1)
        b = bn.bias.detach().double() - bn.running_mean.double() * s
        alive = [c for c in range(conv.out_channels) if c not in dead]
        for c in dead:
            assert 0.99e-9 <= float(w[c]) <= 1.01e-9
            assert float(b[c]) == pytest.approx(-1.0, abs=1e-12)
        assert float(w[alive].min()) > 1e-3
    x = t.data.example_input(16)
    with torch.no_grad():
        stem = model.stem(x)
        assert float(stem[:, list(STEM_DEAD)].abs().max()) == 0.0
        pre_add = model.bn2(model.conv2(F.relu(model.bn1(model.conv1(stem)))))
        torch.testing.assert_close(
            pre_add[:, list(BLOCK_DEAD)], torch.full_like(pre_add[:, list(BLOCK_DEAD)], -1.0)
        )
