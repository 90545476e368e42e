"""Keep other libraries' warnings out of a command's output: capture, count, list once.

    with captured_warnings() as caught:
        ...                                  # numpy, onnxruntime, torch may warn in here
    print(caught.summary())                  # "3 third-party warnings (2 kinds)"
    caught.lines()                           # one line per kind, with its count

Within the block, Python warnings (`warnings`) raised from code outside ``own`` (the packages
whose warnings are shown as usual, once per place: zeropoint's by default) and log records of
level WARNING and above from loggers outside ``own`` (onnxruntime's quantization tools log
through the root logger) are recorded instead of printed. The warning filters, `showwarning` and
the root logger's handlers are restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import zeropoint

_OWN = (str(Path(zeropoint.__file__).resolve().parent),)


@dataclass
class Caught:
    """The warnings a `captured_warnings` block recorded, by kind (source, category, text)."""

    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def count(self) -> int:
        return sum(self.kinds.values())

    def lines(self) -> list[str]:
        return [f"{k} (×{n})" if n > 1 else k for k, n in self.kinds.items()]

    def summary(self) -> str:
        return f"{self.count} third-party warnings ({len(self.kinds)} kinds)"


class _Handler(logging.Handler):
    def __init__(self, caught: Caught, own: tuple[str, ...]) -> None:
        super().__init__(logging.WARNING)
        self.caught, self.own = caught, own
        self.passthrough = logging.StreamHandler()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("zeropoint", "demo"):
            self.passthrough.emit(record)
            return
        text = record.getMessage().strip().splitlines()[0][:300] if record.getMessage() else ""
        self.caught.kinds[f"{record.name} log {record.levelname}: {text}"] += 1


def _is_own(filename: str, own: tuple[str, ...]) -> bool:
    try:
        path = str(Path(filename).resolve())
    except (OSError, ValueError):
        return False
    return any(path.startswith(p) for p in own)


@contextlib.contextmanager
def captured_warnings(own: tuple[str, ...] | None = None) -> Iterator[Caught]:
    """See the module docstring. ``own``: directories whose warnings are shown (default: the
    zeropoint package)."""
    own = tuple(str(Path(p).resolve()) for p in own) if own is not None else _OWN
    caught = Caught()
    shown: set[tuple[Any, ...]] = set()
    root = logging.getLogger()
    saved_level = root.level
    handler = _Handler(caught, own)
    # loggers that print themselves (root, and e.g. transformers' with its own handler)
    loggers = [root] + [
        lg for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger) and lg.handlers
        and name.split(".")[0] not in ("zeropoint", "demo")
    ]  # fmt: skip
    saved = [(lg, lg.handlers[:]) for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        original = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
            if _is_own(filename, own):
                key = (str(message), category, filename, lineno)
                if key not in shown:
                    shown.add(key)
                    original(message, category, filename, lineno, file, line)
                return
            text = str(message).strip().splitlines()[0][:300] if str(message).strip() else ""
            where = Path(filename).parent.name + "/" + Path(filename).name
            caught.kinds[f"{category.__name__} ({where}): {text}"] += 1

        warnings.showwarning = show
        for lg in loggers:
            lg.handlers = [handler]
        root.setLevel(min(saved_level or logging.WARNING, logging.WARNING))
        try:
            yield caught
        finally:
            for lg, handlers in saved:
                lg.handlers = handlers
            root.setLevel(saved_level)


__all__ = ["Caught", "captured_warnings"]
