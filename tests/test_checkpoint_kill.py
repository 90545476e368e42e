"""A checkpoint save is all-or-nothing. Saves killed with SIGKILL at random moments, saves that
crash before each of their file-system calls, saves on a full disk and concurrent saves leave
the complete old checkpoint or the complete new one — the loaded model computes exactly what
one of the two models computes, never a mix — or, where there was none, a clear "no checkpoint"
error; and the next successful save leaves no temporaries.

The saving processes are forked from the test process (no interpreter start-up per kill), so
these tests run on Linux only."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import resource
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import zeropoint as zp
from zeropoint.export import checkpoint_store
from zeropoint.report import files

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="fork, SIGKILL and RLIMIT_FSIZE as on Linux"
)

CRASHED = 250  # exit status of a child that crashed on purpose
KILLS = 36


def _wide_mlp(seed: int, width: int, depth: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layer = nn.Linear(width, width)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(width, width, generator=g) / width**0.5)
            layer.bias.copy_(torch.randn(width, generator=g) * 0.1)
        layers += [layer, nn.ReLU()]
    return nn.Sequential(*layers).eval()


class Pair:
    """Two quantized models of one architecture (the old and the new checkpoint), an input and
    both models' outputs on it."""

    def __init__(self, width: int, depth: int) -> None:
        self.template = lambda: _wide_mlp(99, width, depth)
        g = torch.Generator().manual_seed(7)
        calib = [torch.randn(32, width, generator=g)]
        self.old, self.new = (
            zp.quantize_static(_wide_mlp(s, width, depth), calib, progress=False) for s in (1, 2)
        )
        self.x = torch.randn(4, width, generator=g)
        with torch.no_grad():
            self.outputs = {"old": self.old(self.x), "new": self.new(self.x)}
        assert not torch.equal(self.outputs["old"], self.outputs["new"])

    def outcome(self, directory: Path, fresh: bool) -> str:
        """ "old", "new" or "none" (no checkpoint); fails the test on anything else."""
        try:
            model = zp.load(directory, self.template())
        except FileNotFoundError as exc:
            assert fresh and "no checkpoint" in str(exc), exc
            return "none"
        with torch.no_grad():
            y = model(self.x)
        for name, ref in self.outputs.items():
            if torch.equal(y, ref):
                assert not (fresh and name == "old")
                return name
        pytest.fail("the loaded checkpoint computes neither the old nor the new model")


@pytest.fixture(scope="module")
def big() -> Pair:
    return Pair(width=1024, depth=6)  # 6 MiB of int8 codes: a save takes a noticeable time


@pytest.fixture(scope="module")
def small() -> Pair:
    return Pair(width=32, depth=2)


def _committed(directory: Path) -> set[str]:
    import json

    doc = json.loads((directory / "encodings.json").read_text())
    return {"encodings.json", doc["tensors"]["file"]}


def _leftovers(directory: Path) -> set[str]:
    if not directory.is_dir():
        return set()
    names = {p.name for p in directory.iterdir()}
    return names - _committed(directory) if "encodings.json" in names else names


def _assert_clean(directory: Path) -> None:
    assert {p.name for p in directory.iterdir()} == _committed(directory)


def _fork(target: Callable[..., Any], *args: Any) -> Any:
    process = multiprocessing.get_context("fork").Process(target=target, args=args, daemon=True)
    process.start()
    return process


def _join(process: Any) -> int:
    process.join(120)
    assert not process.is_alive(), "a saving child process hung"
    return int(process.exitcode)


def _save(model: nn.Module, directory: Path) -> None:
    zp.save(model, directory)


def _prepare(pair: Pair, directory: Path, fresh: bool) -> None:
    """An empty start (no directory) or the old checkpoint, saved cleanly."""
    shutil.rmtree(directory, ignore_errors=True)
    if not fresh:
        zp.save(pair.old, directory)
        _assert_clean(directory)


def _timed_save(model: nn.Module, directory: Path, timing: Path) -> None:
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    zp.save(model, directory)
    timing.write_text(f"{start} {time.perf_counter()}")


def _time_a_save(pair: Pair, directory: Path, timing: Path) -> tuple[float, float]:
    """(seconds from the fork to the start of the save in the child, the save's duration)."""
    _prepare(pair, directory, fresh=False)
    forked = time.perf_counter()
    assert _join(_fork(_timed_save, pair.new, directory, timing)) == 0
    start, end = map(float, timing.read_text().split())
    return start - forked, end - start


@pytest.mark.slow
def test_a_save_killed_at_random_moments_leaves_the_old_or_the_new_checkpoint(
    big: Pair, tmp_path: Path
) -> None:
    directory, timing = tmp_path / "ckpt", tmp_path / "timing"
    timings = [_time_a_save(big, directory, timing) for _ in range(3)]
    rng = random.Random(10)
    outcomes: Counter[str] = Counter()
    killed = with_leftovers = 0
    for i in range(KILLS):
        if i % 6 == 5:  # the machine's load changes: keep measuring
            timings.append(_time_a_save(big, directory, timing))
        start = statistics.median(t[0] for t in timings[-3:])
        duration = statistics.median(t[1] for t in timings[-3:])
        fresh = i % 3 == 0
        _prepare(big, directory, fresh)
        process = _fork(_save, big.new, directory)
        # anywhere in the save, and a little before and after it
        time.sleep(max(0.0, start + rng.uniform(-0.1, 1.4) * duration))
        process.kill()
        killed += _join(process) == -signal.SIGKILL
        with_leftovers += bool(_leftovers(directory))
        outcomes[big.outcome(directory, fresh)] += 1
    zp.save(big.old, directory)
    _assert_clean(directory)
    report = (
        f"{KILLS} kills over a save of {statistics.median(t[1] for t in timings) * 1e3:.0f} ms "
        f"(median): {killed} killed the process, {with_leftovers} left temporaries or an "
        f"uncommitted file; outcomes {dict(outcomes)}"
    )
    print("\n" + report)
    assert sum(outcomes.values()) == KILLS
    assert outcomes["old"] and outcomes["new"] and outcomes["none"], report
    assert with_leftovers > 0, report  # some kills did land inside the writing


FS_CALLS = ("open", "fsync", "replace", "rename", "unlink", "mkdir")


def _save_crashing_at(model: nn.Module, directory: Path, crash_at: int) -> None:
    """Save, but die (like kill -9: no cleanup) just before the ``crash_at``-th file-system
    call; exit with the number of calls made when the save completes."""
    count = 0

    def guard(f: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            if count == crash_at:
                os._exit(CRASHED)
            count += 1
            return f(*args, **kwargs)

        return call

    for name in FS_CALLS:
        setattr(os, name, guard(getattr(os, name)))
    zp.save(model, directory)
    os._exit(count)


@pytest.mark.parametrize("fresh", [False, True], ids=["over-old", "first-save"])
def test_a_save_crashing_before_any_file_system_call_leaves_one_complete_checkpoint(
    small: Pair, tmp_path: Path, fresh: bool
) -> None:
    directory = tmp_path / "ckpt"
    _prepare(small, directory, fresh)
    calls = _join(_fork(_save_crashing_at, small.new, directory, 10**6))
    assert 6 <= calls < CRASHED
    outcomes = []
    for crash_at in range(calls):
        _prepare(small, directory, fresh)
        assert _join(_fork(_save_crashing_at, small.new, directory, crash_at)) == CRASHED
        outcomes.append(small.outcome(directory, fresh))
        zp.save(small.old, directory)  # the next save cleans up
        _assert_clean(directory)
    print(f"\n{calls} crash points ({'first save' if fresh else 'over an old one'}): {outcomes}")
    # the outcome switches once, at the commit (the rename of encodings.json), and stays
    first_new = outcomes.index("new")
    assert set(outcomes[:first_new]) == {"none" if fresh else "old"}
    assert set(outcomes[first_new:]) == {"new"}


def _disk_full_in_save_file(tensors: Any, filename: str, metadata: Any = None) -> None:
    Path(filename).write_bytes(b"\0" * 1000)  # part of the file, then the disk is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _disk_full_in_atomic_write_text(path: Path, text: str) -> None:
    with files.atomic_path(path) as tmp:
        tmp.write_text(text[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.parametrize(
    ("writer", "fake"),
    [
        ("save_file", _disk_full_in_save_file),
        ("atomic_write_text", _disk_full_in_atomic_write_text),
    ],
    ids=["tensor-file", "document"],
)
def test_a_full_disk_leaves_the_old_checkpoint_intact(
    small: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str, fake: Any
) -> None:
    directory = tmp_path / "ckpt"
    _prepare(small, directory, fresh=False)
    before = _snapshot(directory)
    # the disk fills while writing the tensor file, or the document after it
    monkeypatch.setattr(checkpoint_store, writer, fake)
    with pytest.raises(OSError, match=r"could not write the checkpoint .* is unchanged") as info:
        zp.save(small.new, directory)
    assert info.value.errno == errno.ENOSPC
    assert _snapshot(directory) == before  # no temporaries, no new tensor file
    assert small.outcome(directory, fresh=False) == "old"


def _save_with_file_size_limit(model: nn.Module, directory: Path, limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        zp.save(model, directory)
    except OSError as exc:
        os._exit(exc.errno or 1)
    os._exit(0)


def test_a_write_failing_in_the_kernel_leaves_the_old_checkpoint_intact(
    small: Pair, big: Pair, tmp_path: Path
) -> None:
    # a real failed write: the kernel refuses to grow the tensor file past 64 KiB, mid-write
    directory = tmp_path / "ckpt"
    _prepare(small, directory, fresh=False)
    before = _snapshot(directory)
    assert _join(_fork(_save_with_file_size_limit, big.new, directory, 1 << 16)) == errno.EFBIG
    assert _snapshot(directory) == before
    assert small.outcome(directory, fresh=False) == "old"


def test_concurrent_saves_leave_one_complete_checkpoint(small: Pair, tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    for _ in range(3):
        shutil.rmtree(directory, ignore_errors=True)
        writers = [_fork(_save, m, directory) for m in (small.old, small.new, small.old)]
        assert [_join(w) for w in writers] == [0, 0, 0]
        _assert_clean(directory)
        assert small.outcome(directory, fresh=False) in ("old", "new")


def test_leftovers_of_killed_saves_are_not_read_and_are_removed(
    small: Pair, tmp_path: Path
) -> None:
    directory = tmp_path / "ckpt"
    _prepare(small, directory, fresh=False)
    junk = {
        ".encodings.json.a1b2c3d4e5f6.tmp": b'{"format": "zeropoint-checkpoint"',
        ".model-0123456789abcdef.safetensors.a1b2c3d4e5f6.tmp": b"\0" * 10,
        "model-0123456789abcdef.safetensors": b"\0" * 10,
    }
    for name, data in junk.items():
        (directory / name).write_bytes(data)
    assert small.outcome(directory, fresh=False) == "old"
    zp.save(small.new, directory)
    _assert_clean(directory)
    assert small.outcome(directory, fresh=False) == "new"
