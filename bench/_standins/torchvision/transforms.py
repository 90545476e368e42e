"""Stand-in ``torchvision.transforms``."""

from ._unavailable import Unavailable


class Compose(Unavailable):
    pass


class ToTensor(Unavailable):
    pass


class Normalize(Unavailable):
    pass


class Resize(Unavailable):
    pass
