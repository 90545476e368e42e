"""Views of the scikit-image photos: the ImageNet evaluation and calibration sets, offline.

There is no ImageNet here. What there is: 26 real images in ``skimage.data`` (a cat, an
espresso, a rocket, a motorbike, a clock, coins, the cameraman, textures, microscopy, the moon,
a phantom, a checkerboard, ...). A *view* is a random-resized crop of one of them (the crop's area
a uniform share of ``scale`` of the photo, its aspect ratio log-uniform in ``ratio``, as
torchvision's ``RandomResizedCrop``), flipped left-right with probability ½, resized to 224x224
(bilinear, antialiased) and normalised with the ImageNet mean and std. The first view of each photo
is torchvision's evaluation transform instead (short side 256, centre crop 224), so every set
contains the canonical view of each of its photos.

The evaluation set (default 256 views of the 16 ``EVAL_PHOTOS``) and the calibration set
(default 64 views of the 8 ``CALIBRATION_PHOTOS``) share no photo: a quantizer calibrated on one is
measured on images it never saw. ``SPARE_PHOTOS`` (2 synthetic images) may be added to either with
``photos=``. Views are drawn with a seeded ``torch.Generator`` only, so the same arguments always
give the same tensors; sets are cached in memory (about 150 MB for 256 views).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from demo.zoo.mobilenet_v2 import center_crop, normalize, resize_short_side

# The ImageNet-like objects (cat, espresso, rocket, motorbike, clock, tripod, ...) are all in the
# evaluation set; the calibration set is textures, microscopy, a face and graphics.
EVAL_PHOTOS = (
    "chelsea",
    "coffee",
    "rocket",
    "astronaut",
    "motorcycle",
    "camera",
    "clock",
    "coins",
    "moon",
    "page",
    "text",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "colorwheel",
    "horse",
)
CALIBRATION_PHOTOS = (
    "grass",
    "gravel",
    "brick",
    "cell",
    "microaneurysms",
    "face",
    "logo",
    "checkerboard",
)
SPARE_PHOTOS = ("binary_blobs", "shepp_logan_phantom")
ALL_PHOTOS = EVAL_PHOTOS + CALIBRATION_PHOTOS + SPARE_PHOTOS  # 26 distinct images
VIEW_SIZE = 224


@cache
def load_photo(name: str) -> Tensor:
    """The photo ``name`` as a (3, H, W) float32 RGB image in [0, 1].

    Grayscale and binary images are repeated over the 3 channels; ``logo``'s alpha channel is
    composited onto white; ``motorcycle`` is the left image of ``stereo_motorcycle`` and ``face``
    the first face of ``lfw_subset`` (25x25). ``cat`` is not offered: it is ``chelsea``.
    """
    if name not in ALL_PHOTOS:
        raise ValueError(f"unknown photo {name!r}; expected one of {ALL_PHOTOS}")
    try:
        import skimage.data as data
    except ImportError as exc:
        raise ImportError("the photos need scikit-image: pip install scikit-image") from exc
    import numpy as np

    if name == "motorcycle":
        array = data.stereo_motorcycle()[0]
    elif name == "face":
        array = data.lfw_subset()[0]
    else:
        array = getattr(data, name)()
    if array.dtype == np.bool_:
        image = torch.from_numpy(array.astype(np.float32))
    elif array.dtype == np.uint8:
        image = torch.from_numpy(array.astype(np.float32)) / 255.0
    else:
        image = torch.from_numpy(np.clip(array, 0.0, 1.0).astype(np.float32))
    if image.ndim == 2:
        return image.expand(3, -1, -1).contiguous()
    image = image.permute(2, 0, 1)
    if image.shape[0] == 4:  # RGBA over white
        rgb, alpha = image[:3], image[3:]
        image = rgb * alpha + (1.0 - alpha)
    return image.contiguous()


def random_resized_crop_box(
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop: torchvision's ``RandomResizedCrop.get_params`` with
    the random numbers drawn from ``generator`` (10 tries, then the centre crop at the nearest
    allowed ratio)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        target_area = area * (scale[0] + (scale[1] - scale[0]) * float(u[0]))
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * float(u[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_view(
    image: Tensor,
    generator: torch.Generator,
    size: int = VIEW_SIZE,
    scale: tuple[float, float] = (0.25, 1.0),
    flip_probability: float = 0.5,
) -> Tensor:
    """One random-resized crop of a (3, H, W) image in [0, 1], maybe flipped left-right,
    resized to (3, size, size); not normalised."""
    top, left, h, w = random_resized_crop_box(image.shape[1], image.shape[2], generator, scale)
    crop = image[:, top : top + h, left : left + w]
    if float(torch.rand(1, generator=generator)) < flip_probability:
        crop = crop.flip(-1)
    out = F.interpolate(
        crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].clamp_(0.0, 1.0)


def canonical_view(image: Tensor, size: int = VIEW_SIZE) -> Tensor:
    """torchvision's evaluation crop: short side to size·256/224, centre crop ``size``."""
    return center_crop(resize_short_side(image, round(size * 256 / 224)), size)


@dataclass(frozen=True)
class ImageViews:
    """A set of views: ``images`` (N, 3, 224, 224) normalised like ImageNet; ``photo`` (N,) the
    index into ``photos`` of each view's source photo."""

    images: Tensor
    photo: Tensor
    photos: tuple[str, ...]
    seed: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int = 32) -> list[Tensor]:
        """The views in order, in batches of ``batch_size`` (the last may be smaller)."""
        return [self.images[i : i + batch_size] for i in range(0, len(self), batch_size)]


@lru_cache(maxsize=8)
def make_views(
    photos: tuple[str, ...],
    n_views: int,
    seed: int,
    size: int = VIEW_SIZE,
    scale: tuple[float, float] = (0.25, 1.0),
) -> ImageViews:
    """``n_views`` views of ``photos``, view i from photo i mod len(photos); the first view of
    each photo is its canonical (centre-crop) view, the others random (see the module doc).
    Deterministic in (photos, n_views, seed, size, scale); cached in memory."""
    if not photos:
        raise ValueError("photos must name at least one photo")
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n_views, 3, size, size)
    source = torch.arange(n_views) % len(photos)
    for i in range(n_views):
        image = load_photo(photos[int(source[i])])
        if i < len(photos):
            out[i] = canonical_view(image, size)
        else:
            out[i] = random_view(image, g, size, scale)
    return ImageViews(normalize(out), source, tuple(photos), seed)


def evaluation_views(n_views: int = 256, seed: int = 0) -> ImageViews:
    """The evaluation set: ``n_views`` views (default 256) of the 16 ``EVAL_PHOTOS``."""
    return make_views(EVAL_PHOTOS, n_views, seed)


def calibration_views(
    n_views: int = 64, seed: int = 1, photos: tuple[str, ...] = CALIBRATION_PHOTOS
) -> ImageViews:
    """The calibration set: ``n_views`` views (default 64) of the 8 ``CALIBRATION_PHOTOS``
    (``photos=CALIBRATION_PHOTOS + SPARE_PHOTOS`` for 10). Refuses any evaluation photo."""
    shared = sorted(set(photos) & set(EVAL_PHOTOS))
    if shared:
        raise ValueError(f"calibration photos {shared} are evaluation photos")
    return make_views(tuple(photos), n_views, seed)
