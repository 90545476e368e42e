"""The main job: for now the tensor tour; the model workflows extend it."""

from __future__ import annotations

from pathlib import Path

from zeropoint.demo import tour


def run(out_dir: Path, quick: bool = False) -> int:
    tour.run(out_dir)
    return 0
