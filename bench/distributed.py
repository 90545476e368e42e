"""Distributed calibration: MobileNetV2 (ImageNet weights) on 1 process vs 2 processes.

What is measured, in one run, the configurations interleaved repetition by repetition:

* ``1 proc x 1 thread`` and ``1 proc x 2 threads``: one process calibrates every batch (entropy
  histograms, 4096 bins, on each of MobileNetV2's activation quantizers);
* ``2 procs x 1 thread``: two gloo ranks on loopback each calibrate half of the batches, then
  `zp.distributed.sync_model` reduces the histograms (the synchronisation `zp.convert` runs).

The time is the calibration (plus the synchronisation on 2 ranks), from a barrier after the model
is loaded and prepared until every rank holds the reduced statistics; process start and model
loading are not included, nor ``convert`` (its estimators run on every rank alike; timed apart).
``ratio = time(1 process) / time(2 processes)``: above 1, two processes are faster. Also recorded
per synchronisation: the bytes each rank puts into the collectives, the collectives, the sync's
own time, and the activation bytes the rank's observers saw (what a naive gather would ship).

The machine is shared and has 2 cores: the ratios are noisy; rerun before concluding.

    python bench/distributed.py            # 32 views of 224x224, batches of 4, 3 repetitions
    python bench/distributed.py --quick    # 8 views, 1 repetition
Writes bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "distributed.json"
BATCH = 4


def worker(rank: int, world: int, folder: Path, threads: int, views: int) -> None:
    """One process of a configuration: calibrate this rank's batches (and synchronise)."""
    import torch
    import torch.distributed as dist

    import zeropoint as zp
    from demo.zoo.mobilenet_v2 import load_mobilenet_v2
    from demo.zoo.views import calibration_views

    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{folder / 'rendezvous'}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=600),
        )
    images = calibration_views(views).images
    batches = [images[i : i + BATCH] for i in range(rank * BATCH, len(images), world * BATCH)]
    prepared = zp.prepare(load_mobilenet_v2().eval(), zp.int8_static("entropy", reduce_range=True))
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    zp.calibrate_model(prepared, batches, progress=False)
    calibrated = time.perf_counter()
    stats = zp.distributed.sync_model(prepared) if world > 1 else None
    synced = time.perf_counter()
    zp.convert(prepared)
    converted = time.perf_counter()
    seen = sum(
        q.observer.num_values for q in zp.workflows.static.activation_quantizers(prepared)
    )  # values this rank's observers saw (after the sync: every rank's)
    out = {
        "seconds": synced - start,
        "calibrate_s": calibrated - start,
        "sync_s": synced - calibrated,
        "convert_s": converted - synced,
        "bytes_sent": stats.bytes_sent if stats else 0,
        "collectives": stats.collectives if stats else 0,
        "observers": stats.observers if stats else 0,
        "activation_bytes_total": 4 * seen,
    }
    (folder / f"rank{rank}.json").write_text(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, threads: int, views: int) -> dict[str, Any]:
    """Start a configuration's processes; returns rank 0's figures and the slowest rank's time."""
    with tempfile.TemporaryDirectory(prefix="zp-bench-dist") as d:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo",
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}  # fmt: skip
        cmd = [sys.executable, __file__, "--worker"]
        procs = [
            subprocess.Popen([*cmd, str(r), str(world), d, str(threads), str(views)], env=env)
            for r in range(world)
        ]
        for p in procs:
            if p.wait(timeout=1800) != 0:
                raise RuntimeError(f"a {world}-process run failed (exit {p.returncode})")
        ranks = [json.loads((Path(d) / f"rank{r}.json").read_text()) for r in range(world)]
    result = dict(ranks[0])
    result["seconds"] = max(r["seconds"] for r in ranks)
    return result


CONFIGS = (("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2), ("2 procs x 1 thread", 2, 1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        rank, world, folder, threads, views = sys.argv[2:7]
        worker(int(rank), int(world), Path(folder), int(threads), int(views))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 views, 1 repetition")
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    views, reps = (8, 1) if args.quick else (args.views, args.reps)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in CONFIGS}
    for rep in range(reps):
        order = CONFIGS if rep % 2 == 0 else tuple(reversed(CONFIGS))
        for name, world, threads in order:
            runs[name].append(run(world, threads, views))
            print(f"rep {rep + 1}/{reps} {name}: {runs[name][-1]['seconds']:.2f} s", flush=True)

    medians = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    two = medians["2 procs x 1 thread"]
    sync = runs["2 procs x 1 thread"][0]
    print(f"\nMobileNetV2, {views} views of 224x224 in batches of {BATCH}, entropy histograms")
    print(f"{'configuration':24s} {'median s':>9s} {'ratio vs 2 procs':>17s}")
    for name, m in medians.items():
        print(f"{name:24s} {m:9.2f} {m / two:17.2f}")
    mb = sync["bytes_sent"] / 1e6
    acts = sync["activation_bytes_total"] / 1e6
    print(
        f"\nper synchronisation, per rank: {mb:.2f} MB in {sync['collectives']} collectives for "
        f"{sync['observers']} observers ({statistics.median(r['sync_s'] for r in runs['2 procs x 1 thread']):.3f} s); "
        f"the activations observed: {acts:.0f} MB"
    )
    from zeropoint.report.files import atomic_write_text

    result = {
        "views": views,
        "batch": BATCH,
        "reps": reps,
        "runs": runs,
        "median_s": medians,
        "ratio_1proc_1thread_over_2procs": medians["1 proc x 1 thread"] / two,
        "ratio_1proc_2threads_over_2procs": medians["1 proc x 2 threads"] / two,
        "sync_bytes_per_rank": sync["bytes_sent"],
        "sync_collectives": sync["collectives"],
        "activation_bytes_observed": sync["activation_bytes_total"],
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": list(os.getloadavg()),
        },
    }
    atomic_write_text(args.output, json.dumps(result, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
