"""zeropoint.distributed: gloo process groups of 2 and 3 ranks on loopback against one process.

The multi-process tests start their ranks as subprocesses (`tests/distributed_worker.py`, a file
rendezvous, gloo bound to ``lo``) with a hard timeout, and compare what each rank saved with the
same computation done here, in one process that sees all the data:

* every observer, per tensor and per channel: qparams and statistics bit for bit (the moving
  average: bit for bit with merging one observer per shard in rank order, its defined meaning);
* static PTQ: the converted model (every parameter and buffer, and its output) bit for bit;
* QAT under DDP and FSDP2: parameters and buffers after 2 steps on per-rank batches of 8 equal
  those of one process trained on the batches of 16, to float rounding;
* a rank that raises, or never arrives, makes the others raise RankFailureError within the
  group's timeout; ranks that prepared different models raise RankMismatchError naming the
  difference, on every rank.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import torch

import zeropoint as zp
from tests import distributed_worker as w
from zeropoint.distributed.sync import MAX_DIMS, kind_of, state_tensors
from zeropoint.observers.exact import LIMBS, ExactSum

ROOT = Path(__file__).resolve().parents[1]
SPAWN_TIMEOUT = 300.0  # seconds for a whole multi-process scenario (loaded 2-core machine)


def spawn(
    scenarios: str, world: int, folder: Path, stop_after: set[int] | None = None
) -> list[dict[str, Any]]:
    """Run ``scenarios`` on ``world`` ranks; returns each rank's process outcome. With
    ``stop_after``, the other ranks are killed once those have finished (a rank left hanging)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.distributed_worker",
                scenarios,
                str(rank),
                str(world),
                str(folder),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for rank in range(world)
    ]
    deadline = time.monotonic() + SPAWN_TIMEOUT
    outcomes: list[dict[str, Any]] = [{} for _ in procs]
    try:
        waiting = set(range(world)) if stop_after is None else set(stop_after)
        while waiting and time.monotonic() < deadline:
            for rank in list(waiting):
                if procs[rank].poll() is not None:
                    waiting.discard(rank)
            time.sleep(0.1)
        if waiting:
            pytest.fail(f"ranks {sorted(waiting)} of {scenarios!r} still running after the timeout")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # a process group this test started
    for rank, proc in enumerate(procs):
        _, err = proc.communicate()
        outcomes[rank] = {"returncode": proc.returncode, "stderr": err}
    return outcomes


def results(folder: Path, scenario: str, world: int) -> list[dict[str, Any]]:
    return [torch.load(folder / f"{scenario}-rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 ranks: every observer, static PTQ (and mismatches), QAT under DDP and FSDP2."""
    return _ran(tmp_path_factory.mktemp("two_ranks"),
                "observers,static,qat,weight_only,bias_correction,adaround", 2)  # fmt: skip


@pytest.fixture(scope="module")
def three_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _ran(tmp_path_factory.mktemp("three_ranks"), "observers", 3)


def _ran(folder: Path, scenarios: str, world: int) -> Path:
    """``folder`` after every rank of ``world`` ran ``scenarios`` successfully."""
    for rank, o in enumerate(spawn(scenarios, world, folder)):
        assert o["returncode"] == 0, f"rank {rank} failed:\n{o['stderr'][-4000:]}"
    return folder


@pytest.fixture(params=[2, 3], ids=["2-ranks", "3-ranks"])
def observer_run(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    world = request.param
    folder = request.getfixturevalue("two_ranks" if world == 2 else "three_ranks")
    yield world, results(folder, "observers", world)


# ------------------------------------------------------------------------------ observers
@functools.cache
def _references(world: int) -> dict[str, zp.observers.Observer]:
    """One process: every observer fed every batch in order; the moving averages: one observer
    per rank's shard, merged in rank order (their cross-rank meaning)."""
    one = w.make_observers()
    w.feed(one, list(range(w.N_BATCHES)))
    shards = []
    for rank in range(world):
        part = w.make_observers()
        w.feed(part, w.shard(w.N_BATCHES, rank, world))
        shards.append(part)
    for name in one:
        if name.startswith("moving_average/"):
            merged = w.make_observers()[name]
            for part in shards:
                merged.merge(part[name])
            one[name] = merged
    return one


def test_every_observer_is_bit_identical_to_one_process(
    observer_run: tuple[int, list[dict[str, Any]]],
) -> None:
    world, ranks = observer_run
    names = list(w.make_observers())
    assert {kind_of(o) for o in w.make_observers().values()} == {
        "minmax", "moving_average", "samples", "histogram"}  # fmt: skip
    for name in names:
        ref = _references(world)[name]
        qp, stats = ref.qparams(), state_tensors(ref)
        for rank, got in enumerate(ranks):
            mine = got[name]
            assert torch.equal(mine["scale"], qp.scale), (name, rank, mine["scale"], qp.scale)
            assert torch.equal(mine["zero_point"], qp.zero_point), (name, rank)
            assert len(mine["state"]) == len(stats)
            assert all(torch.equal(a, b) for a, b in zip(mine["state"], stats, strict=True)), name
    assert ranks[0]["synced"] == len(names)


def test_learn_mode_observers_see_the_global_batch(
    observer_run: tuple[int, list[dict[str, Any]]],
) -> None:
    """Per-step reduction (QAT's "learn" mode): rank r updates with its share of each global
    batch; every rank ends where one observer fed the whole global batches ends."""
    _, ranks = observer_run
    for method in ("moving_average", "entropy", "minmax"):
        one = zp.observers.make_observer(method, w.SCHEMES["channel-s8-sym"])
        for t in range(3):
            one.update(w.step_batch(t))
        qp = one.qparams()
        for got in ranks:
            assert torch.equal(got[f"step/{method}"]["scale"], qp.scale), method
            assert torch.equal(got[f"step/{method}"]["zero_point"], qp.zero_point), method


def test_a_synchronisation_ships_fixed_size_statistics_and_is_not_repeated(
    observer_run: tuple[int, list[dict[str, Any]]],
) -> None:
    """Bytes this rank puts into the collectives: digests, layouts, (−α, β) pairs, histogram
    counts and exact moments — a size set by the observers, never by the data seen."""
    world, ranks = observer_run
    observers = w.make_observers()
    w.feed(observers, [0])
    expected = 32 + len(observers) * (5 + MAX_DIMS) * 8  # fingerprint digest, layouts
    for o in observers.values():
        rows = o._rows
        if kind_of(o) == "histogram":
            bins = o.bins  # type: ignore[attr-defined]
            expected += 9 * rows * 8  # MAX: −α, β, exponent, 3 × 2 flags of non-finite moments
            expected += (rows * bins + 2 * rows + 2 * rows * LIMBS) * 8  # SUM: int64
        elif kind_of(o) != "samples":
            expected += 2 * rows * 8  # (−α, β): MAX, or the moving average's all-gather
    # OMSE also keeps its values exactly while they are few (≤ 2^18 per row for activations):
    # those travel too, padded to the largest rank's share (float32), after a float32 flag
    shares = [w.make_observers() for _ in range(world)]
    for rank, part in enumerate(shares):
        w.feed(part, w.shard(w.N_BATCHES, rank, world))
    for name, o in observers.items():
        if kind_of(o) == "samples":  # every sample's (α, β), padded to the largest rank's count
            counts = [part[name].lo.shape[1] for part in shares]  # type: ignore[attr-defined]
            expected += 8 + 2 * o._rows * max(counts) * 8
        if hasattr(o, "adopt_values"):
            expected += 4
            kept = [getattr(part[name], "values", None) for part in shares]
            if all(v is not None for v in kept):
                cols = [sum(t.shape[1] for t in v) for v in kept if v is not None]
                expected += 8 + o._rows * max(cols) * 4
    assert [r["bytes"] for r in ranks] == [expected] * world
    assert all(r["skipped_again"] == len(observers) for r in ranks)  # unchanged: skipped


# ------------------------------------------------------------------------------ static PTQ
@pytest.mark.slow
def test_static_ptq_gives_one_model_on_every_rank_the_one_process_model(two_ranks: Path) -> None:
    ranks = results(two_ranks, "static", 2)
    probe = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(99))
    for observer in w.STATIC_CONFIGS:
        ref = zp.quantize_static(
            w.digits_model(), w.calibration_batches(), w.static_config(observer), progress=False
        )
        state = ref.state_dict()
        with torch.no_grad():
            out = ref(probe)
        for rank, got in enumerate(ranks):
            mine = got[observer]["state"]
            assert set(mine) == set(state)
            different = [k for k in state if not torch.equal(mine[k], state[k])]
            assert not different, (observer, rank, different)
            assert torch.equal(got[observer]["output"], out)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_weight_only_algorithms_on_sharded_data_equal_one_process(
    two_ranks: Path, method: str
) -> None:
    """GPTQ's Hessian and AWQ's channel magnitudes and row sample, reduced over the ranks: each
    rank's int4 codes and scales are those of one process calibrated on all the batches."""
    ranks = results(two_ranks, "weight_only", 2)
    quantize = {"gptq": zp.gptq_quantize, "awq": zp.awq_quantize}[method]
    ref = quantize(w.mlp(), w.ptq_batches(), zp.int4_weight_only(group_size=16)).state_dict()
    for rank, got in enumerate(ranks):
        mine = got[method]
        assert set(mine) == set(ref)
        for key, value in ref.items():
            if value.is_floating_point():
                torch.testing.assert_close(mine[key], value, rtol=1e-5, atol=1e-6)
            else:  # codes: the float64 sums differ only in the order of their additions
                assert float((mine[key] != value).float().mean()) <= 0.002, (rank, key)
        # without the reduction a rank's shard gives a different layer
    one = quantize(w.mlp(), w.ptq_batches()[::2], zp.int4_weight_only(group_size=16))
    assert any(not torch.equal(v, one.state_dict()[k]) for k, v in ranks[0][method].items())


@pytest.mark.slow
def test_bias_correction_on_sharded_data_equals_one_process(two_ranks: Path) -> None:
    from zeropoint.ptq.bias_correction import correct_bias

    ranks = results(two_ranks, "bias_correction", 2)
    model = w.digits_model()
    batches = w.calibration_batches()
    q = zp.quantize_static(model, batches, w.static_config("minmax"), progress=False)
    ref = correct_bias(q, batches, model).state_dict()
    moved = [k for k in ref if k.endswith("bias") and not torch.equal(ref[k], q.state_dict()[k])]
    assert moved  # the correction changed biases
    for got in ranks:
        assert set(got["state"]) == set(ref)
        for key, value in ref.items():
            torch.testing.assert_close(got["state"][key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_adaround_on_sharded_data_learns_the_one_process_rounding(two_ranks: Path) -> None:
    """Each rank reconstructs from its rows; the gradients are reduced (row-weighted), so the
    learned weights are those of one process on all the rows, up to float rounding of the sums
    (a borderline rounding variable may flip)."""
    ranks = results(two_ranks, "adaround", 2)
    ref = w.run_adaround(w.ptq_batches()).state_dict()
    alone = w.run_adaround(w.ptq_batches()[::2]).state_dict()  # rank 0's shard, not reduced
    weights = [k for k in ref if k.endswith("weight")]
    assert weights

    def share_different(state: dict[str, torch.Tensor]) -> float:
        return sum(float((state[k] != ref[k]).sum()) for k in weights) / sum(
            ref[k].numel() for k in weights
        )

    assert share_different(alone) > 0.01
    for got in ranks:
        assert share_different(got["state"]) <= 0.002


@pytest.mark.slow
def test_ranks_that_prepared_different_models_name_the_difference(two_ranks: Path) -> None:
    ranks = results(two_ranks, "static", 2)
    for rank, got in enumerate(ranks):
        found = got["mismatch"]
        assert "act_quant.head: observer differs" in found["observer"], found["observer"]
        assert "Entropy" in found["observer"] and "Percentile" in found["observer"]
        assert "parameter 'mix.0.weight': differs (ranks [0] vs ranks [1])" in found["weights"]
        assert "act_quant.head: on ranks [0], missing on ranks [1]" in found["layers"]
        assert (
            "observer edge: options differs (rank 0: bins=512; rank 1: bins=1024)"
            in (found["bins"])
        ), rank


# ------------------------------------------------------------------------------ QAT
def _single_process_qat(learnable: str | None) -> dict[str, torch.Tensor]:
    config, model = w.qat_model(learnable)
    x0, _ = w.qat_data(-1)
    q = zp.prepare_qat(model, config, example_inputs=x0)
    w.train_qat(q, w.QAT_STEPS, w.qat_data)
    return {k: v.detach() for k, v in q.state_dict().items()}


def _assert_trained_alike(mine: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Float rounding: the gradients are averaged over ranks (DDP) instead of summed in one
    batch, so values differ in their last bits (relative 1e-6 measured); 1e-4 of each tensor's
    largest magnitude. (A longer run would eventually flip a rounding decision of the 4-bit
    quantizers somewhere, a discontinuity no float tolerance covers.)"""
    assert set(mine) == set(ref)
    for k, v in ref.items():
        if v.dtype.is_floating_point:
            tol = 1e-4 * float(v.abs().max()) if v.numel() else 0.0
            torch.testing.assert_close(mine[k], v, rtol=0, atol=tol, msg=k)
        else:
            assert torch.equal(mine[k], v), k


@pytest.mark.slow
@pytest.mark.parametrize("learnable", w.QAT_CONFIGS, ids=str)
def test_ddp_qat_on_two_ranks_equals_one_process_on_the_global_batch(
    two_ranks: Path, learnable: str | None
) -> None:
    ranks = results(two_ranks, "qat", 2)
    ref = _single_process_qat(learnable)
    for got in ranks:
        _assert_trained_alike(got[str(learnable)]["state"], ref)


@pytest.mark.slow
def test_fsdp2_qat_with_lsq_equals_one_process(two_ranks: Path) -> None:
    ranks = results(two_ranks, "qat", 2)
    ref = _single_process_qat("lsq")
    for got in ranks:
        _assert_trained_alike(got["fsdp2-lsq"]["state"], ref)


# ------------------------------------------------------------------------------ failures
@pytest.mark.slow
def test_a_rank_that_raises_midway_makes_the_others_fail_within_the_timeout(
    tmp_path: Path,
) -> None:
    outcomes = spawn("raise", 2, tmp_path)
    assert outcomes[1]["returncode"] != 0
    assert "the data loader of the last rank broke" in outcomes[1]["stderr"]
    assert outcomes[0]["returncode"] == 0, outcomes[0]["stderr"][-3000:]
    got = torch.load(tmp_path / "raise-rank0.pt", weights_only=False)
    assert "sync_model failed on rank 0 of 2" in got["error"]
    assert got["seconds"] < w.SHORT_TIMEOUT + 2.0


@pytest.mark.slow
def test_a_rank_that_never_arrives_makes_the_others_fail_within_the_timeout(
    tmp_path: Path,
) -> None:
    outcomes = spawn("hang", 3, tmp_path, stop_after={0, 1})
    for rank in (0, 1):
        assert outcomes[rank]["returncode"] == 0, outcomes[rank]["stderr"][-3000:]
        got = torch.load(tmp_path / f"hang-rank{rank}.pt", weights_only=False)
        assert f"sync_model failed on rank {rank} of 3" in got["error"]
        # the timeout (4 s) plus the time to notice it
        assert w.SHORT_TIMEOUT - 0.5 < got["seconds"] < w.SHORT_TIMEOUT + 3.0, got["seconds"]
    assert (
        "Ranks 2 failed to pass monitoredBarrier"
        in torch.load(tmp_path / "hang-rank0.pt", weights_only=False)["error"]
    )  # rank 0 names the missing rank


# ------------------------------------------------------------------------------ one process
def test_without_a_process_group_nothing_is_exchanged() -> None:
    assert not zp.distributed.is_distributed()
    prepared = zp.prepare(w.digits_model(), w.static_config("entropy"))
    zp.calibrate_model(prepared, w.calibration_batches()[:2], progress=False)
    assert zp.distributed.sync_calibration(prepared) is None
    t = torch.arange(3.0)
    assert zp.distributed.all_reduce_sum(t) is t
    config, model = w.qat_model("lsq")
    q = zp.prepare_qat(model, config)  # no process group: nothing attached
    assert all(getattr(m, "rank_group", None) is None for m in q.modules())


def test_exact_sums_do_not_depend_on_order_or_grouping() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(40, generator=g, dtype=torch.float64) * 10.0**e
                        for e in (-300, -20, 0, 15, 300)])  # fmt: skip
    values = torch.cat(
        [values, torch.tensor([5e-324, -5e-324, 1.7e308, -1.7e308], dtype=torch.float64)]
    )
    exact = sum((Fraction(float(v)) for v in values), Fraction(0))
    sums = []
    for seed in range(3):
        order = values[
            torch.randperm(values.numel(), generator=torch.Generator().manual_seed(seed))
        ]
        a, b = ExactSum(1), ExactSum(1)
        for i, v in enumerate(order):
            (a if i % 2 else b).add(v.reshape(1))
        a.merge(b)  # two "ranks"
        a.normalize()
        sums.append(a)
    assert all(torch.equal(s.limbs, sums[0].limbs) for s in sums)
    assert float(sums[0].value()[0]) == float(exact)
    squares = ExactSum(1)
    for v in (0.1, 0.2, 0.3):
        squares.add(torch.tensor([v], dtype=torch.float64))
    assert float(squares.value()[0]) == math.fsum([0.1, 0.2, 0.3])  # float: 0.6000000000000001


def test_histogram_moments_merge_exactly_so_aciq_does_not_depend_on_the_split() -> None:
    """ACIQ uses Σx and Σx²: summed exactly, any split of the batches gives the same bits."""
    batches = [w.observer_batch(b) for b in range(w.N_BATCHES)]
    scheme = w.SCHEMES["channel-s8-sym"]
    whole = zp.observers.ACIQ(scheme)
    for x in batches:
        whole.update(x)
    halves = [zp.observers.ACIQ(scheme), zp.observers.ACIQ(scheme)]
    for b, x in enumerate(reversed(batches)):
        halves[b % 2].update(x)
    merged = halves[1].merge(halves[0])
    assert torch.equal(merged.qparams().scale, whole.qparams().scale)
    assert torch.equal(merged.hist.sum, whole.hist.sum)  # type: ignore[union-attr]
    # the sum of the per-batch float32 sums, exactly (Fraction), rounded once
    rows = [x.movedim(1, 0).reshape(4, -1).sum(1) for x in batches]
    exact = [float(sum(Fraction(float(r[c])) for r in rows)) for c in range(4)]
    torch.testing.assert_close(whole.hist.sum, torch.tensor(exact, dtype=torch.float64),
                               rtol=2**-52, atol=0)  # fmt: skip


def test_batch_moments_are_the_batch_norm_statistics() -> None:
    """Against float64 torch: μ within float32 rounding; σ² within two roundings (y − μ is
    rounded to float32 before it is squared)."""
    from zeropoint.nn.convbn import batch_moments

    y = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    mean, var, n = batch_moments(y)
    y64 = y.double()
    torch.testing.assert_close(mean.double(), y64.mean(dim=(0, 2, 3)), rtol=2**-24, atol=0)
    var64 = y64.var(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(var.double(), var64, rtol=2**-22, atol=0)
    assert n == 150.0


def test_a_model_attached_to_ranks_copies_with_them() -> None:
    import copy

    from zeropoint.distributed.training import RankGroup

    ranks = RankGroup()
    assert copy.deepcopy(ranks) is ranks
    assert isinstance(copy.deepcopy([ranks])[0], RankGroup)
