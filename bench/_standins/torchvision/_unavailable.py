"""The error every stand-in callable raises."""


def unavailable(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(
            f"torchvision.{name} is a stand-in in bench/ (torchvision does not load)"
        )

    return fail


class Unavailable:
    """A class aimet-torch may name (e.g. in a type table) but that cannot be built."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} is a torchvision stand-in in bench/")
