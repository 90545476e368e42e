"""The tensor tour: every number format, and every calibration method and quantizer on real tensors.

Real tensors: a weight matrix and the token embeddings of the pretrained all-MiniLM-L6-v2 (when
the `models` extra is installed), the pixels of scikit-learn's digits, and a Laplace sample with
outliers (a heavy-tailed activation). Prints an error table (SQNR in dB, higher is better) and
optionally writes a plot of SQNR against bits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from zeropoint.analysis import error_report, sweep
from zeropoint.formats.table import describe_formats
from zeropoint.nonuniform import BinaryCodeQuantizer, KMeansCodebook, LogQuantizer
from zeropoint.observers.registry import OBSERVERS, calibrate
from zeropoint.qparams import Scheme
from zeropoint.report.tables import format_table

METHODS = tuple(m for m in OBSERVERS if m != "moving_average")


def real_tensors() -> dict[str, Tensor]:
    """Named real tensors to quantize (MiniLM weights when available)."""
    tensors: dict[str, Tensor] = {}
    try:
        from demo.zoo.minilm import load_minilm

        model = load_minilm()
        bert = model[0].auto_model
        tensors["MiniLM ffn weight (1536x384)"] = bert.encoder.layer[0].intermediate.dense.weight
        tensors["MiniLM embeddings (30522x384)"] = bert.embeddings.word_embeddings.weight
    except Exception as exc:  # the models extra is optional for the tour
        print(f"(MiniLM unavailable: {exc}; using the other tensors)")
    try:
        from sklearn.datasets import load_digits

        tensors["digits pixels (1797x64)"] = torch.tensor(load_digits().data, dtype=torch.float32)
    except ImportError:
        pass
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1_000_000, generator=g, dtype=torch.float64) - 0.5
    laplace = (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()
    laplace[:3] = torch.tensor([60.0, -45.0, 52.0])
    tensors["Laplace + 3 outliers (1M)"] = laplace
    return {k: v.detach().float() for k, v in tensors.items()}


def method_table(tensors: dict[str, Tensor], bits: tuple[int, ...] = (8, 4)) -> list[dict]:
    """SQNR (dB) of each calibration method, per tensor and bit width (per-tensor, symmetric)."""
    rows = []
    for name, x in tensors.items():
        for b in bits:
            row: dict[str, object] = {"tensor": name, "bits": b}
            scheme = Scheme(bits=b, symmetric=True)
            for method in METHODS:
                row[method] = error_report(x, calibrate(x, scheme, method)).sqnr_db
            per_channel = Scheme(bits=b, symmetric=True, axis=0)
            if x.dim() == 2:
                row["minmax/ch"] = error_report(x, calibrate(x, per_channel)).sqnr_db
            rows.append(row)
    return rows


def quantizer_table(x: Tensor, bits: tuple[int, ...] = (2, 3, 4)) -> list[dict]:
    """SQNR (dB) of uniform and non-uniform quantizers of ``x`` at equal bits per value."""
    flat = x.reshape(-1)
    fits: dict[str, Callable[[int], object]] = {
        "uniform min-max": lambda b: calibrate(flat, Scheme(bits=b, symmetric=True)),
        "uniform MSE": lambda b: calibrate(flat, Scheme(bits=b, symmetric=True), "mse"),
        "log2 (power of two)": lambda b: LogQuantizer.fit(flat, b),
        "k-means codebook": lambda b: KMeansCodebook.fit(flat, b, generator=0),
        "binary code Σαb": lambda b: BinaryCodeQuantizer.fit(flat, b),
    }
    rows = []
    for name, fit in fits.items():
        row: dict[str, object] = {"quantizer": name}
        for b in bits:
            row[f"{b}-bit"] = error_report(flat, fit(b)).sqnr_db  # type: ignore[arg-type]
        rows.append(row)
    return rows


def plot_sweep(x: Tensor, path: Path) -> Path | None:
    """SQNR against bits (2..16) per method, saved as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = sweep(
        x,
        bits=range(2, 17),
        methods=("minmax", "percentile", "mse", "aciq"),
        granularities=("per_tensor",),
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("minmax", "percentile", "mse", "aciq"):
        pts = [(r.bits, r.sqnr_db) for r in rows if r.method == method]
        ax.plot(*zip(*pts, strict=True), marker="o", label=method)
    ax.set_xlabel("bits")
    ax.set_ylabel("SQNR (dB)")
    ax.set_title("Laplace + outliers: SQNR vs bits")
    ax.grid(True, alpha=0.3)
    ax.legend()
    import io

    from zeropoint.report.files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def run(out_dir: Path | None = None) -> None:
    """Print the format table and the error tables; write the sweep plot under ``out_dir``."""
    print("== Number formats ==")
    print(format_table(describe_formats()))
    tensors = real_tensors()
    print("\n== Calibration methods on real tensors: SQNR in dB (higher is better) ==")
    print(format_table(method_table(tensors), digits={m: 1 for m in (*METHODS, "minmax/ch")}))
    weight = next(iter(tensors.values()))
    name = next(iter(tensors))
    print(f"\n== Uniform vs non-uniform quantizers on {name}: SQNR in dB ==")
    print(format_table(quantizer_table(weight), digits={f"{b}-bit": 1 for b in (2, 3, 4)}))
    if out_dir is not None:
        laplace = tensors["Laplace + 3 outliers (1M)"]
        path = plot_sweep(laplace[:200_000], out_dir / "sqnr_vs_bits.png")
        if path is not None:
            print(f"\nplot: {path}")
