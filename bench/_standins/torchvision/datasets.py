"""Stand-in ``torchvision.datasets``."""

from ._unavailable import Unavailable


class FakeData(Unavailable):
    pass


class MNIST(Unavailable):
    pass


class ImageFolder(Unavailable):
    pass
