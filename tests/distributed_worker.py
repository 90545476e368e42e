"""One rank of the multi-process tests in test_distributed.py (and their shared data).

    python -m tests.distributed_worker SCENARIO[,SCENARIO...] RANK WORLD DIR

Each rank joins a gloo process group through a file in DIR (loopback only), runs the scenario
on its shard of the data and saves what it computed to DIR/SCENARIO-rankR.pt; the test process
compares the ranks with each other and with one process that saw all the data.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import zeropoint as zp
import zeropoint.nn.quantizers
from demo.zoo.digits import DigitsCNN
from zeropoint.distributed.sync import state_tensors
from zeropoint.distributed.training import RankGroup, global_batch
from zeropoint.observers import OBSERVERS, make_observer
from zeropoint.observers.base import Observer

#: The process group's timeout in the scenarios that must succeed (ranks start seconds apart).
TIMEOUT = 60.0
#: The timeout of the failure scenarios' group: a missing rank is reported within it.
SHORT_TIMEOUT = 4.0

# ----------------------------------------------------------------------------------- data
N_BATCHES = 7  # not a multiple of 2 or 3: ranks hold different numbers of batches


def observer_batch(b: int) -> Tensor:
    """Batch b of the observer scenario: (3 + b % 3, 4, 5, 5), channels of different shapes
    (Gaussian, Laplace with outliers, post-ReLU with exact zeros, all negative) and a scale
    growing with b, so that the ranks' histogram ranges differ and must be re-binned."""
    g = torch.Generator().manual_seed(1000 + b)
    n = 3 + b % 3
    x = torch.empty(n, 4, 5, 5)
    scale = 2.0 ** (b - 3)
    x[:, 0] = torch.randn(n, 5, 5, generator=g) * scale
    lap = torch.distributions.Laplace(0.0, 1.0).icdf(
        torch.rand(n, 5, 5, generator=g) * 0.998 + 0.001
    )
    x[:, 1] = lap * scale
    x[:, 1, 0, 0] = 40.0 * scale  # an outlier
    x[:, 2] = torch.relu(torch.randn(n, 5, 5, generator=g)) * 3.0
    x[:, 3] = -torch.rand(n, 5, 5, generator=g) * 0.25 - 0.01
    return x


def step_batch(t: int) -> Tensor:
    """Global batch t of the per-step ("learn" mode) observers: 6 samples, split over ranks."""
    return observer_batch(t)[:3].repeat(2, 1, 1, 1) * torch.linspace(0.5, 2.0, 6).reshape(
        6, 1, 1, 1
    )


SCHEMES = {
    "tensor-u8": zp.Scheme(bits=8, signed=False),
    "tensor-s8-sym": zp.Scheme(bits=8, symmetric=True),
    "channel-s8-sym": zp.Scheme(bits=8, symmetric=True, axis=1),
    "channel-u4": zp.Scheme(bits=4, signed=False, axis=1),
}


def make_observers() -> dict[str, Observer]:
    """Every registered observer under every scheme (histograms with 512 bins, one with 4096)."""
    out: dict[str, Observer] = {}
    for method in OBSERVERS:
        for label, scheme in SCHEMES.items():
            options = {"bins": 512} if method in ("percentile", "entropy", "mse", "aciq") else {}
            out[f"{method}/{label}"] = make_observer(method, scheme, **options)
    out["entropy/tensor-s8-sym/4096"] = make_observer("entropy", SCHEMES["tensor-s8-sym"])
    out["aciq-laplace/channel-s8-sym"] = make_observer(
        "aciq", SCHEMES["channel-s8-sym"], distribution="laplace", bins=1024
    )
    out["rare/minmax"] = make_observer("minmax", SCHEMES["channel-u4"])  # batch 0 only
    out["rare/percentile"] = make_observer("percentile", SCHEMES["tensor-u8"], bins=256)
    return out


def feed(observers: dict[str, Observer], batches: list[int]) -> None:
    for b in batches:
        x = observer_batch(b)
        for name, o in observers.items():
            if not name.startswith("rare/") or b == 0:
                o.update(x)


def shard(items: int, rank: int, world: int) -> list[int]:
    """The indices a DistributedSampler-like split gives ``rank``: rank, rank + world, ..."""
    return list(range(rank, items, world))


def calibration_batches() -> list[Tensor]:
    return [
        torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(b)) * 2 for b in range(6)
    ]


def digits_model(width: int = 6) -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(width).eval()


STATIC_CONFIGS = ("entropy", "percentile", "mse", "aciq", "minmax")


def static_config(observer: str) -> zp.QuantConfig:
    return zp.int8_static(observer, reduce_range=True)


QAT_CONFIGS: tuple[str | None, ...] = (None, "lsq", "lsq+", "pact")
QAT_STEPS, QAT_BATCH = 2, 8  # per-rank batch; the single process trains on 2 · QAT_BATCH


def qat_data(step: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    x = torch.randn(2 * QAT_BATCH, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (2 * QAT_BATCH,), generator=g)
    return x, y


class QATNet(nn.Module):
    """conv+bn+relu → strided conv+bn+relu → linear: both batch norms fold in the QAT form."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def qat_model(learnable: str | None) -> tuple[zp.QuantConfig, nn.Module]:
    """The QAT config (4 bits everywhere) and the float model (seeded) for ``learnable``."""
    config = zp.w4a4_qat(learnable).with_(first_last_bits=None)
    torch.manual_seed(0)
    return config, QATNet()


def train_qat(
    model: nn.Module, steps: int, batch: Callable[[int], tuple[Tensor, Tensor]]
) -> nn.Module:
    """SGD with momentum on the cross-entropy of ``batch(t)`` for ``steps`` steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for t in range(steps):
        x, y = batch(t)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# ------------------------------------------------------------------------------ scenarios
def scenario_observers(rank: int, world: int) -> dict[str, Any]:
    observers = make_observers()
    feed(observers, shard(N_BATCHES, rank, world))
    stats = zp.distributed.sync_observers(observers)
    again = zp.distributed.sync_observers(observers)  # unchanged: a no-op
    out: dict[str, Any] = {"bytes": stats.bytes_sent, "synced": stats.observers,
                           "skipped_again": again.skipped}  # fmt: skip
    for name, o in observers.items():
        qp = o.qparams()
        out[name] = {"scale": qp.scale, "zero_point": qp.zero_point, "state": state_tensors(o)}
    # "learn"-mode observers: every update sees the global batch (rank r holds its share)
    ranks = RankGroup()
    for method in ("moving_average", "entropy", "minmax"):
        o = global_batch(make_observer(method, SCHEMES["channel-s8-sym"]), ranks)
        for t in range(3):
            x = step_batch(t)
            o.update(x.chunk(world)[rank])
        qp = o.qparams()
        out[f"step/{method}"] = {"scale": qp.scale, "zero_point": qp.zero_point}
    return out


def scenario_static(rank: int, world: int) -> dict[str, Any]:
    batches = calibration_batches()
    mine = [batches[i] for i in shard(len(batches), rank, world)]
    probe = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(99))
    out: dict[str, Any] = {}
    for observer in STATIC_CONFIGS:
        q = zp.quantize_static(digits_model(), mine, static_config(observer), progress=False)
        with torch.no_grad():
            out[observer] = {"state": dict(q.state_dict()), "output": q(probe)}
    out["mismatch"] = _mismatches(rank, mine)
    return out


def _mismatches(rank: int, mine: list[Tensor]) -> dict[str, str]:
    """Ranks that disagree: every rank must raise RankMismatchError naming the difference (and
    the process group stays usable for the next case)."""
    cases: dict[str, Callable[[], Any]] = {
        "observer": lambda: zp.quantize_static(
            digits_model(),
            mine,
            static_config("entropy" if rank == 0 else "percentile"),
            progress=False,
        ),
        "weights": lambda: zp.quantize_static(
            _perturbed(digits_model(), rank), mine, static_config("minmax"), progress=False
        ),
        "layers": lambda: zp.quantize_static(
            digits_model(),
            mine,
            static_config("minmax").with_(skip=("head",) * rank),
            progress=False,
        ),
        "bins": lambda: zp.distributed.sync_observers(
            {"edge": make_observer("entropy", bins=512 if rank == 0 else 1024)}
        ),
    }
    found = {}
    for case, run in cases.items():
        try:
            run()
            found[case] = "no error"
        except zp.distributed.RankMismatchError as err:
            found[case] = str(err)
    return found


def _perturbed(model: nn.Module, rank: int) -> nn.Module:
    with torch.no_grad():
        model.mix[0].weight[0, 0, 0, 0] += 0.01 * rank
    return model


def scenario_qat(rank: int, world: int) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    out: dict[str, Any] = {}
    for learnable in QAT_CONFIGS:
        config, model = qat_model(learnable)
        x0, _ = qat_data(-1)
        q = zp.prepare_qat(model, config, example_inputs=x0.chunk(world)[rank])
        ddp = DistributedDataParallel(q)
        train_qat(ddp, QAT_STEPS, lambda t: tuple(v.chunk(world)[rank] for v in qat_data(t)))
        out[str(learnable)] = _qat_result(q)
    # FSDP2 (fully_shard): LSQ's steps are 1-D parameters it shards like the weights
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    config, model = qat_model("lsq")
    x0, _ = qat_data(-1)
    q = zp.prepare_qat(model, config, example_inputs=x0.chunk(world)[rank])
    fully_shard(q)
    train_qat(q, QAT_STEPS, lambda t: tuple(v.chunk(world)[rank] for v in qat_data(t)))
    full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in q.state_dict().items()}
    out["fsdp2-lsq"] = {"state": full}
    return out


def _qat_result(q: nn.Module) -> dict[str, Any]:
    state = {k: v.detach().clone() for k, v in q.state_dict().items()}
    ranges = {}
    for name, m in q.named_modules():
        observer = getattr(m, "observer", None)
        if observer is not None and observer.num_batches:
            lo, hi = observer.range()
            ranges[name] = torch.stack([lo.reshape(-1), hi.reshape(-1)])
    return {"state": state, "ranges": ranges}


def scenario_raise(rank: int, world: int) -> dict[str, Any]:
    """The last rank's loader raises midway through calibration; the others must fail clearly
    within the group's timeout instead of waiting for it."""
    return _fail_midway(rank, world, "raise")


def scenario_hang(rank: int, world: int) -> dict[str, Any]:
    """The last rank never reaches the synchronisation (it sleeps far beyond the timeout)."""
    return _fail_midway(rank, world, "hang")


def _fail_midway(rank: int, world: int, how: str) -> dict[str, Any]:
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=SHORT_TIMEOUT))
    batches = calibration_batches()

    def loader() -> Any:
        for i, b in enumerate(batches):
            if rank == world - 1 and i == 2:
                if how == "raise":
                    raise RuntimeError("the data loader of the last rank broke")
                time.sleep(10 * SHORT_TIMEOUT)
            yield b

    prepared = zp.distributed.attach(zp.prepare(digits_model(), static_config("entropy")), group)
    start = time.perf_counter()
    try:
        zp.calibrate_model(prepared, loader(), progress=False)
        zp.convert(prepared)
        return {"error": None}
    except zp.distributed.RankFailureError as err:
        return {"error": str(err), "seconds": time.perf_counter() - start}


def mlp() -> nn.Module:
    """The weight-only scenario's float model (seeded): 32 → 64 → ReLU → 16."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16))


def ptq_batches() -> list[Tensor]:
    """7 calibration batches of 5 rows with outlier channels (GPTQ / AWQ statistics)."""
    g = torch.Generator().manual_seed(77)
    spread = torch.ones(32)
    spread[::7] = 8.0
    return [torch.randn(5, 32, generator=g) * spread for _ in range(N_BATCHES)]


def scenario_weight_only(rank: int, world: int) -> dict[str, Any]:
    """GPTQ and AWQ int4 on this rank's shard of the calibration batches."""
    batches = ptq_batches()
    mine = [batches[i] for i in shard(len(batches), rank, world)]
    config = zp.int4_weight_only(group_size=16)
    out: dict[str, Any] = {}
    for name, method in (("gptq", zp.gptq_quantize), ("awq", zp.awq_quantize)):
        q = method(mlp(), mine, config)
        out[name] = {k: v.clone() for k, v in q.state_dict().items()}
    return out


def scenario_bias_correction(rank: int, world: int) -> dict[str, Any]:
    """Static int8 on this rank's shard (synchronised at convert), then empirical bias
    correction on the same shard (its output means reduced over the ranks)."""
    from zeropoint.ptq.bias_correction import correct_bias

    batches = calibration_batches()
    mine = [batches[i] for i in shard(len(batches), rank, world)]
    model = digits_model()
    q = zp.quantize_static(model, mine, static_config("minmax"), progress=False)
    corrected = correct_bias(q, mine, model)
    return {"state": {k: v.clone() for k, v in corrected.state_dict().items()}}


ADAROUND_CONFIG = zp.QuantConfig(weight=zp.Scheme(bits=3, symmetric=True, narrow=True, axis=0))


def run_adaround(batches: list[Tensor]) -> nn.Module:
    """AdaRound W3A8 of the MLP on every row of ``batches`` (full-batch steps, every row kept)."""
    from zeropoint.ptq.adaround import adaround

    x = torch.cat(batches)
    return adaround(mlp().eval(), x, ADAROUND_CONFIG, num_samples=x.shape[0], iterations=200,
                    batch_rows=4096, progress=False)  # fmt: skip


def scenario_adaround(rank: int, world: int) -> dict[str, Any]:
    batches = ptq_batches()
    q = run_adaround([batches[i] for i in shard(len(batches), rank, world)])
    return {"state": {k: v.clone() for k, v in q.state_dict().items()}}


SCENARIOS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "adaround": scenario_adaround,
    "bias_correction": scenario_bias_correction,
    "weight_only": scenario_weight_only,
    "observers": scenario_observers,
    "static": scenario_static,
    "qat": scenario_qat,
    "raise": scenario_raise,
    "hang": scenario_hang,
}


def main() -> None:
    scenarios, rank, world = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
    folder = Path(sys.argv[4])
    torch.set_num_threads(1)  # as the test process: the same float32 sums
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder / 'rendezvous'}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT),
    )
    for scenario in scenarios:
        result = SCENARIOS[scenario](rank, world)
        torch.save(result, folder / f"{scenario}-rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
