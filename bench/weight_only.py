"""Weight-only Linear benchmark: zeropoint's packed kernels against torch fp32, torch's own packed
int4 / int8 CPU kernels and torchao's int4 weight-only path (where it imports).

What is measured: a stack of ``--layers`` Linear layers of ``--size`` × ``--size`` (default 4 of
2048 × 2048, the memory-bound case weight-only quantization exists for) applied to a batch of
B rows, B ∈ {1, 8, 32}; per contender the median time per layer over interleaved repetitions
(every repetition runs every contender once, rotating who goes first, so load from other
processes spreads over all alike). Contenders:

  fp32            torch F.linear on the float weights (MKL / oneDNN)
  zp int4 g32     zeropoint WeightOnlyLinear, symmetric int4 in groups of 32 (`zeropoint.kernels`)
  zp int4 g128a   asymmetric (zero point) int4 in groups of 128
  zp int8 ch      int8 per output channel
  zp fp8 e4m3 ch  fp8 e4m3fn per output channel (`zeropoint.nn.codebook_weights` kind)
  torch int4pack  torch.ops.aten._weight_int4pack_mm_for_cpu (groups of 32, fp32 activations)
  torch int8pack  torch.ops.aten._weight_int8pack_mm (per channel)
  torchao int4    torchao's Int4WeightOnlyConfig(group_size=32) where it runs on a CPU (0.18 does not)

Ratios are fp32 time / contender time (> 1: faster than fp32), from the medians, and from the
fastest repetition of each (less sensitive to other processes preempting a run). Targets (issue 13): zp int4 ≥ 1.5x
fp32 at batch 1 and ≥ 1.0x at batch 8; batch 32 reported. Nothing here fails. On a shared machine
the figures are noisy: rerun before trusting a single run. Writes bench/results/weight_only.json.

    python bench/weight_only.py                 # torch's default thread count
    python bench/weight_only.py --threads 1 --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import zeropoint as zp
from zeropoint.kernels import build
from zeropoint.nn.weight_only import WeightOnlyLinear
from zeropoint.report.files import atomic_write_text
from zeropoint.report.tables import format_table

RESULTS = Path(__file__).resolve().parent / "results" / "weight_only.json"
TARGETS = {1: 1.5, 8: 1.0}


def _stack(fns: list[Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[torch.Tensor], Any]:
    def run(x: torch.Tensor) -> torch.Tensor:
        for f in fns:
            x = f(x)
        return x

    return run


def contenders(layers: list[nn.Linear]) -> dict[str, Callable[[torch.Tensor], Any]]:
    out: dict[str, Callable[[torch.Tensor], Any]] = {}
    out["fp32"] = _stack([lambda x, m=m: F.linear(x, m.weight, m.bias) for m in layers])
    schemes = {
        "zp int4 g32": zp.Scheme(bits=4, symmetric=True, group_size=32),
        "zp int4 g128a": zp.Scheme(bits=4, symmetric=False, group_size=128),
        "zp int8 ch": zp.Scheme(bits=8, symmetric=True, axis=0),
    }
    for name, scheme in schemes.items():
        out[name] = _stack([WeightOnlyLinear(m, scheme) for m in layers])
    try:
        from zeropoint.nn.codebook_weights import WeightSpec, coded_linear

        spec = WeightSpec("fp8_e4m3fn", per_channel=True)
        out["zp fp8 e4m3 ch"] = _stack([coded_linear(m, spec) for m in layers])
    except ImportError:
        pass
    g = 32
    packed4 = []
    for m in layers:
        w = m.weight.detach()
        qp = zp.calibrate(w, zp.Scheme(bits=4, signed=False, group_size=g))
        codes = zp.quantize_int(w, qp).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
        # torch's convention: w = (q − 8)·S + zero, zero = S·(8 − Z) per group
        s = qp.scale.T.contiguous()
        zero = (s * (8 - qp.zero_point.T.float())).contiguous()
        packed4.append((packed, torch.stack([s, zero], -1).contiguous(), m.bias))
    out["torch int4pack"] = _stack(
        [
            lambda x, p=p, sz=sz, b=b: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, g, sz) + b
            for p, sz, b in packed4
        ]
    )
    packed8 = []
    for m in layers:
        w = m.weight.detach()
        qp = zp.calibrate(w, zp.Scheme(bits=8, symmetric=True, axis=0))
        packed8.append((zp.quantize_int(w, qp), qp.scale, m.bias))
    out["torch int8pack"] = _stack(
        [
            lambda x, w8=w8, s=s, b=b: torch.ops.aten._weight_int8pack_mm(x, w8, s) + b
            for w8, s, b in packed8
        ]
    )
    torchao = _torchao(layers)
    if torchao is not None:
        out["torchao int4"] = torchao
    return out


TORCHAO_NOTE: list[str] = []


def _torchao(layers: list[nn.Linear]) -> Callable[[torch.Tensor], Any] | None:
    """torchao's int4 weight-only path on CPU, or None (the reason in `TORCHAO_NOTE`).

    torchao 0.18 (the registry's) has no CPU int4 weight-only kernel: its packing formats need
    CUDA (tile_packed_to_4d), the mslk package (plain) or are GPU-only (plain_int32); the older
    Int4CPULayout (torch's _weight_int4pack_mm_for_cpu, the "torch int4pack" row) is gone.
    Install it apart from the shared venv (``pip install --no-deps --target .torchao torchao``,
    then PYTHONPATH=.torchao) to try a newer one."""
    try:
        from torchao.quantization import Int4WeightOnlyConfig, quantize_
    except Exception as exc:
        TORCHAO_NOTE.append(f"not importable: {exc!r}"[:200])
        return None
    try:
        model = nn.Sequential(*[copy.deepcopy(m) for m in layers]).bfloat16()
        quantize_(
            model, Int4WeightOnlyConfig(group_size=32, int4_packing_format="tile_packed_to_4d")
        )
        model(torch.randn(1, layers[0].in_features, dtype=torch.bfloat16))
        return lambda x: model(x.bfloat16())
    except Exception as exc:
        TORCHAO_NOTE.append(f"int4 weight-only does not run on this CPU: {exc!r}"[:200])
        return None


def measure(
    fns: dict[str, Callable[[torch.Tensor], Any]], x: torch.Tensor, reps: int
) -> dict[str, list[float]]:
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for n in names:
            fns[n](x)
        for r in range(reps):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                fns[n](x)
                times[n].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 repetitions")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = 5 if args.quick else args.reps
    kernels = build.load()
    gen = torch.Generator().manual_seed(0)
    layers = []
    for _ in range(args.layers):
        m = nn.Linear(args.size, args.size)
        with torch.no_grad():
            m.weight.copy_(torch.randn(args.size, args.size, generator=gen) * 0.02)
        layers.append(m.eval())
    fns = contenders(layers)
    results: dict[str, Any] = {"batches": {}}
    rows: list[dict[str, Any]] = []
    for batch in (1, 8, 32):
        x = torch.randn(batch, args.size, generator=gen)
        times = measure(fns, x, reps)
        med = {n: statistics.median(t) / args.layers for n, t in times.items()}
        best = {n: min(t) / args.layers for n, t in times.items()}
        results["batches"][str(batch)] = {
            n: {
                "ms_per_layer": 1e3 * med[n],
                "ratio_vs_fp32": med["fp32"] / med[n],
                "best_ms_per_layer": 1e3 * best[n],
                "best_ratio_vs_fp32": best["fp32"] / best[n],
            }
            for n in med
        }
        for n in med:
            target = TARGETS.get(batch) if n.startswith("zp int4") else None
            rows.append(
                {
                    "batch": batch,
                    "contender": n,
                    "ms/layer": 1e3 * med[n],
                    "vs fp32": med["fp32"] / med[n],
                    "best vs best fp32": best["fp32"] / best[n],
                    "target": target,
                }
            )
    print(format_table(rows, digits={"ms/layer": 3, "vs fp32": 2, "best vs best fp32": 2}))
    if TORCHAO_NOTE:
        print(f"torchao: {TORCHAO_NOTE[0]}")
    results["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernels": kernels,
        "load_average": list(os.getloadavg()),
        "size": args.size,
        "layers": args.layers,
        "reps": reps,
        "torchao": TORCHAO_NOTE[0] if TORCHAO_NOTE else "measured",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(results, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
