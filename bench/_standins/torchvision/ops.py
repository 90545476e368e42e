"""Stand-in ``torchvision.ops``."""

from ._unavailable import Unavailable, unavailable

nms = unavailable("ops.nms")
roi_align = unavailable("ops.roi_align")


class RoIPool(Unavailable):
    pass


class RoIAlign(Unavailable):
    pass
