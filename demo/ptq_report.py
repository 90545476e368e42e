"""The post-training toolbox side by side: one row per configuration (method, weight/activation
bits, metrics, wall and CPU seconds), reusable for any float model, data and metric.

    from demo.ptq_report import ptq_table, default_recipes, markdown
    rows = ptq_table(model, calib, eval_inputs, metric)      # metric: outputs -> {name: value}
    print(markdown(rows))

``python -m demo.ptq_report mobilenet_v2`` runs the MobileNetV2 table of issue 9 (top-1 / top-5
agreement with fp32 on 256 views of the scikit-image photos, on the confident views, mean KL;
calibration on 64 views of other photos); ``python -m demo.ptq_report digits`` /
``resnet18`` the low-bit tables of the MNIST-trained networks (accuracy). ``--only`` selects
recipes by a substring of their name; ``--json`` writes the rows.

The MobileNetV2 protocol is importable for the peers' benchmark, so that it uses exactly the
same model, views and metrics:

    from demo.ptq_report import mobilenet_protocol, metrics, MOBILENET_KEYS
    model, calib, eval_views, reference = mobilenet_protocol()
    scores = metrics(outputs(quantized_model, eval_views), reference)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

import zeropoint as zp
from zeropoint.datafree.zeroq import distill_data, zeroq_finetune, zeroq_quantize
from zeropoint.ptq.adaround import adaround
from zeropoint.ptq.bias_correction import correct_bias
from zeropoint.ptq.equalize import equalize
from zeropoint.ptq.layer_io import float_simulation
from zeropoint.ptq.omse import omse
from zeropoint.ptq.simulation import simulate

Metric = Callable[[Tensor], dict[str, float]]
Build = Callable[[nn.Module, Tensor], nn.Module]


@dataclass(frozen=True)
class Recipe:
    """A named way to quantize a float model from calibration samples."""

    method: str
    weights: str
    activations: str
    build: Build
    note: str = ""


@dataclass
class Row:
    method: str
    weights: str
    activations: str
    metrics: dict[str, float]
    seconds: float
    cpu_seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- configs


def scheme_w(bits: int, per_channel: bool = True) -> zp.Scheme:
    """Symmetric weights: int8 restricted range [−127, 127]; below 8 bits the full signed range
    (as LSQ and the low-bit literature use)."""
    return zp.Scheme(bits=bits, symmetric=True, narrow=bits == 8, axis=0 if per_channel else None)


def config(
    w_bits: int,
    a_bits: int | None,
    per_channel: bool = True,
    observer: str = "minmax",
    first_last_bits: int | None = None,
) -> zp.QuantConfig:
    """Every layer quantized (weights and inputs); the model's output — the logits — stays
    float (``quantize_outputs=False``), as in the peers' simulations (NNCF, AIMET and Brevitas
    place no quantizer after the classifier)."""
    activation = zp.Scheme(bits=a_bits, signed=False) if a_bits is not None else None
    return zp.QuantConfig(
        weight=scheme_w(w_bits, per_channel),
        activation=activation,
        activation_observer=observer,
        first_last_bits=first_last_bits,
        quantize_outputs=False,
    )


def _batches(x: Tensor, size: int = 16) -> list[Tensor]:
    return [x[i : i + size] for i in range(0, x.shape[0], size)]


def static(cfg: zp.QuantConfig) -> Build:
    return lambda m, x: simulate(m, _batches(x), cfg, progress=False)


def with_bias_correction(build: Build, float_reference: bool = True) -> Build:
    """``build`` followed by empirical bias correction on the same samples."""

    def run(m: nn.Module, x: Tensor) -> nn.Module:
        q = build(m, x)
        return correct_bias(q, x, m if float_reference else None)

    return run


def equalized(build: Build, **options: Any) -> Build:
    """Cross-layer equalization + bias absorption, then ``build`` (with the equalized model as
    the float reference of any later bias correction)."""
    return lambda m, x: build(equalize(m, **options), x)


def adarounded(cfg: zp.QuantConfig, **options: Any) -> Build:
    return lambda m, x: adaround(m, x, cfg, num_samples=x.shape[0], progress=False, **options)


def default_recipes(
    adaround_options: dict[str, Any] | None = None,
    zeroq_options: dict[str, Any] | None = None,
) -> list[Recipe]:
    """Issue 9's MobileNetV2 table: W8A8 per-channel, per-tensor W8A8 with equalization, W4A8
    per-channel (all layers / first and last at 8 bits), W4 with float activations, W3A8,
    bias correction alone, ZeroQ levels 1 and 2."""
    ada = dict(adaround_options or {})
    zq = dict(zeroq_options or {})
    pc8 = config(8, 8)
    pt8 = config(8, 8, per_channel=False)
    w4 = config(4, 8)
    w4fl = config(4, 8, first_last_bits=8)
    w4f = config(4, None)
    w3 = config(3, 8)
    recipes = [
        Recipe("min-max", "W8 per-channel", "A8", static(pc8)),
        Recipe("percentile", "W8 per-channel", "A8", static(config(8, 8, observer="percentile"))),
        Recipe("OMSE", "W8 per-channel", "A8", lambda m, x: omse(m, _batches(x), pc8, progress=False)),
        Recipe("min-max + BC", "W8 per-channel", "A8", with_bias_correction(static(pc8))),
        Recipe("percentile + BC", "W8 per-channel", "A8",
               with_bias_correction(static(config(8, 8, observer="percentile")))),
        Recipe("OMSE + BC", "W8 per-channel", "A8",
               with_bias_correction(lambda m, x: omse(m, _batches(x), pc8, progress=False))),
        Recipe("MSE", "W8 per-channel", "A8", static(config(8, 8, observer="mse"))),
        Recipe("MSE + BC", "W8 per-channel", "A8",
               with_bias_correction(static(config(8, 8, observer="mse")))),
        Recipe("min-max", "W8 per-tensor", "A8", static(pt8)),
        Recipe("min-max + BC", "W8 per-tensor", "A8", with_bias_correction(static(pt8))),
        Recipe("MSE activations + BC", "W8 per-tensor", "A8",
               with_bias_correction(static(config(8, 8, False, observer="mse")))),
        Recipe("CLE + absorption", "W8 per-tensor", "A8", equalized(static(pt8))),
        Recipe("CLE + absorption + BC", "W8 per-tensor", "A8",
               _equalized_then_corrected(static(pt8))),
        Recipe("CLE + absorption + BC, MSE activations", "W8 per-tensor", "A8",
               _equalized_then_corrected(static(config(8, 8, False, observer="mse")))),
        Recipe("CLE (ReLU6→ReLU) + absorption + BC", "W8 per-tensor", "A8",
               _equalized_then_corrected(static(pt8), relu6="relu"),
               "changes the float model (ReLU6 replaced by ReLU)"),
        Recipe("round-to-nearest", "W4 per-channel", "A8", static(w4)),
        Recipe("round-to-nearest + BC", "W4 per-channel", "A8", with_bias_correction(static(w4))),
        Recipe("AdaRound", "W4 per-channel", "A8", adarounded(w4, **ada)),
        Recipe("AdaRound + BC", "W4 per-channel", "A8", with_bias_correction(adarounded(w4, **ada))),
        Recipe("round-to-nearest", "W4 per-channel, first/last W8A8", "A8", static(w4fl)),
        Recipe("AdaRound", "W4 per-channel, first/last W8A8", "A8", adarounded(w4fl, **ada)),
        Recipe("AdaRound + BC", "W4 per-channel, first/last W8A8", "A8",
               with_bias_correction(adarounded(w4fl, **ada))),
        Recipe("round-to-nearest", "W4 per-channel", "fp32", static(w4f)),
        Recipe("AdaRound", "W4 per-channel", "fp32", adarounded(w4f, **ada)),
        Recipe("round-to-nearest", "W3 per-channel", "A8", static(w3)),
        Recipe("OMSE", "W3 per-channel", "A8", lambda m, x: omse(m, _batches(x), w3, progress=False)),
        Recipe("AdaRound", "W3 per-channel", "A8", adarounded(w3, **ada)),
        Recipe("ZeroQ level 1 (percentile)", "W8 per-channel", "A8",
               _zeroq1(config(8, 8, observer="percentile"), zq), "no real data"),
        Recipe("ZeroQ level 1 (min-max)", "W8 per-channel", "A8", _zeroq1(pc8, zq), "no real data"),
        Recipe("ZeroQ level 1 (MSE)", "W8 per-channel", "A8",
               _zeroq1(config(8, 8, observer="mse"), zq), "no real data"),
        Recipe("ZeroQ level 1", "W4 per-channel", "A8", _zeroq1(w4, zq), "no real data"),
        Recipe("ZeroQ level 2", "W4 per-channel", "A8", _zeroq2(w4, zq), "no real data"),
        Recipe("ZeroQ + AdaRound", "W4 per-channel", "A8", _zeroq_adaround(w4, zq, ada),
               "no real data: AdaRound on the distilled data"),
    ]  # fmt: skip
    return recipes


def low_bit_recipes(
    bit_pairs: Sequence[tuple[int, int]] = ((4, 4), (2, 4)),
    adaround_options: dict[str, Any] | None = None,
) -> list[Recipe]:
    """Round-to-nearest, AdaRound and AdaRound + bias correction at each (weight, activation)
    width, every layer quantized (the MNIST-trained networks' table)."""
    ada = dict(adaround_options or {})
    out = []
    for wb, ab in bit_pairs:
        cfg = config(wb, ab)
        w, a = f"W{wb} per-channel", f"A{ab}"
        out += [
            Recipe("round-to-nearest", w, a, static(cfg)),
            Recipe("AdaRound", w, a, adarounded(cfg, **ada)),
            Recipe("AdaRound + BC", w, a, with_bias_correction(adarounded(cfg, **ada))),
        ]
    return out


def _equalized_then_corrected(build: Build, **options: Any) -> Build:
    def run(m: nn.Module, x: Tensor) -> nn.Module:
        eq = equalize(m, **options)
        return correct_bias(build(eq, x), x, eq)

    return run


_DISTILLED: dict[tuple[int, ...], Tensor] = {}
#: ``--distilled-cache``: a file keeping the distilled data between runs (with a JSON sidecar
#: of the settings that made it and the seconds it took), and what the run did with it.
DISTILLED_CACHE: dict[str, Any] = {"path": None, "loaded": None}


def _distilled(m: nn.Module, x: Tensor, options: dict[str, Any]) -> Tensor:
    """Distilled data for ``m`` (as many samples as the calibration set; the calibration
    samples themselves are used for nothing but their count and shape). Cached per run so
    level 1 and level 2 share it; its cost is charged to the first recipe that makes it. With
    ``DISTILLED_CACHE["path"]`` set, data distilled by an earlier run with the same settings
    are loaded instead (their distillation seconds are reported, not charged)."""
    key = (id(m), *x.shape)
    if key in _DISTILLED:
        return _DISTILLED[key]
    # as JSON reads it back (tuples become lists), so that a cached file's settings compare
    settings = json.loads(json.dumps({"shape": list(x.shape), **dict(sorted(options.items()))}))
    path = DISTILLED_CACHE["path"]
    meta_path = f"{path}.json"
    if path and os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("settings") == settings:
            _DISTILLED[key] = torch.load(path)
            DISTILLED_CACHE["loaded"] = meta
            return _DISTILLED[key]
    start = time.perf_counter()
    _DISTILLED[key] = distill_data(m, tuple(x.shape[1:]), x.shape[0], progress=False, **options)
    if path:
        torch.save(_DISTILLED[key], path)
        with open(meta_path, "w") as f:
            json.dump({"settings": settings, "seconds": time.perf_counter() - start}, f)
    return _DISTILLED[key]


def _distill_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "finetune_epochs"}


def _zeroq1(cfg: zp.QuantConfig, options: dict[str, Any]) -> Build:
    distill = _distill_options(options)
    return lambda m, x: zeroq_quantize(
        m, cfg, input_shape=tuple(x.shape[1:]), distilled=_distilled(m, x, distill), progress=False
    )


def _zeroq2(cfg: zp.QuantConfig, options: dict[str, Any], start: Build | None = None) -> Build:
    """ZeroQ level 2 (``finetune_epochs`` of knowledge distillation, default 50: 10 were too
    few for MobileNetV2 at W4A8 — 16.0 % top-1 agreement in the 2026-11-29 table, 29.3–34.0 % at 50
    in docs/ptq.md §7); ``start``:
    the build whose model the fine-tuning starts from (default: the float weights)."""
    epochs = int(options.get("finetune_epochs", 50))
    distill = _distill_options(options)
    return lambda m, x: zeroq_finetune(
        m, cfg, input_shape=tuple(x.shape[1:]), distilled=_distilled(m, x, distill),
        epochs=epochs, start=start(m, x) if start is not None else None, progress=False,
    )  # fmt: skip


def _zeroq_adaround(cfg: zp.QuantConfig, options: dict[str, Any], ada: dict[str, Any]) -> Build:
    """AdaRound reconstructing every layer from the distilled data (no real sample)."""
    distill, build = _distill_options(options), adarounded(cfg, **ada)
    return lambda m, x: build(m, _distilled(m, x, distill))


# --------------------------------------------------------------------------- the table


@torch.no_grad()
def outputs(model: nn.Module, x: Tensor, batch_size: int = 32, float_sim: bool = False) -> Tensor:
    """``model``'s outputs on ``x`` in batches; ``float_sim``: converted layers compute their float
    simulation instead of the integer kernel they run at inference (same function up to the
    rounding of the requantization; several times faster on CPUs without VNNI)."""
    with float_simulation(model) if float_sim else contextlib.nullcontext():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def ptq_table(
    model: nn.Module,
    calib: Tensor,
    eval_inputs: Tensor,
    metric: Metric,
    recipes: Sequence[Recipe] | None = None,
    *,
    batch_size: int = 32,
    progress: bool = True,
    float_sim: bool = False,
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Run every recipe on ``model`` (float, eval mode) with ``calib`` and score its outputs on
    ``eval_inputs`` with ``metric``; the first row is fp32 itself. Wall and CPU seconds cover
    quantization only (not the evaluation)."""
    recipes = list(recipes) if recipes is not None else default_recipes()
    rows = [Row("fp32", "fp32", "fp32", metric(outputs(model, eval_inputs, batch_size)), 0.0, 0.0)]
    if on_row is not None:
        on_row(rows[0])
    items: Any = recipes
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(recipes, desc="PTQ recipes", unit="recipe")
    for r in items:
        t0, c0 = time.perf_counter(), time.process_time()
        q = r.build(model, calib)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        scores = metric(outputs(q, eval_inputs, batch_size, float_sim))
        rows.append(Row(r.method, r.weights, r.activations, scores, seconds, cpu, r.note))
        if on_row is not None:
            on_row(rows[-1])
    _DISTILLED.clear()
    return rows


def markdown(rows: Sequence[Row], keys: Sequence[str] | None = None) -> str:
    """The rows as a markdown table (metric columns in ``keys`` order, default all)."""
    keys = list(keys) if keys is not None else list(rows[0].metrics)
    head = ["method", "weights", "acts", *keys, "wall s", "CPU s", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, r.weights, r.activations]
        cells += [f"{r.metrics.get(k, float('nan')):.4g}" for k in keys]
        cells += [f"{r.seconds:.1f}", f"{r.cpu_seconds:.1f}", r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the models


#: The MobileNetV2 table's metric columns (``metrics`` returns these and a few counts).
MOBILENET_KEYS = ("top1", "top5", "confident_top1", "confident_top5", "kl")


class MobileNetProtocol(NamedTuple):
    """Issue 9's MobileNetV2 protocol, the same for zeropoint and the peers (``bench/ptq.py``):
    the float model (torchvision's architecture, real ImageNet weights, eval mode), the
    calibration / reconstruction views (64 views of 8 photos), the evaluation views (256 views of
    16 *other* photos; all (N, 3, 224, 224), ImageNet-normalised) and fp32's logits on the
    evaluation views (the reference every metric compares against)."""

    model: nn.Module
    calib: Tensor
    eval_views: Tensor
    reference: Tensor


def mobilenet_protocol(n_eval: int = 256, n_calib: int = 64) -> MobileNetProtocol:
    """The model, calibration views, evaluation views and fp32 reference logits (deterministic:
    the views are seeded; see ``demo.zoo.views``). Unpacks as
    ``model, calib, eval_views, reference = mobilenet_protocol()``."""
    from demo.zoo.mobilenet_v2 import load_mobilenet_v2
    from demo.zoo.views import calibration_views, evaluation_views

    model = load_mobilenet_v2().eval()
    ev = evaluation_views(n_eval).images
    cal = calibration_views(n_calib).images
    return MobileNetProtocol(model, cal, ev, outputs(model, ev))


def metrics(logits_q: Tensor, logits_fp: Tensor) -> dict[str, float]:
    """Agreement of a quantized model's logits with fp32's on the same views: top-1 and top-5
    agreement (percent), the same on the confident views alone (fp32 top-1 probability ≥ 0.5),
    the number of confident views and of views, and the mean KL(softmax fp32 ‖ softmax q)."""
    from demo.zoo.metrics import agreement_report

    return agreement_report(logits_q, logits_fp)


def _pixel_range() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The range of MobileNetV2's normalised input channels for pixels in [0, 1]: lo_c =
    −mean_c/std_c, hi_c = (1 − mean_c)/std_c (the input format, not data)."""
    from demo.zoo.mobilenet_v2 import IMAGENET_MEAN, IMAGENET_STD

    pairs = list(zip(IMAGENET_MEAN, IMAGENET_STD, strict=True))
    return tuple(-m / s for m, s in pairs), tuple((1 - m) / s for m, s in pairs)


#: ZeroQ's distillation settings for MobileNetV2: inputs pulled towards N(0, 1) per channel,
#: projected onto the normalised pixel range at every step, and made spatially smooth (a
#: roughness penalty of weight 3000, see `distill_data`)
MOBILENET_DISTILL: dict[str, Any] = {
    "input_stats": (0.0, 1.0),
    "input_range": _pixel_range(),
    "smoothness": 3000.0,
}


def mobilenet_v2_table(
    recipes: Sequence[Recipe] | None = None,
    n_eval: int = 256,
    n_calib: int = 64,
    **table_options: Any,
) -> list[Row]:
    """Issue 9's table: MobileNetV2 (ImageNet weights) on scikit-image views."""
    model, cal, ev, reference = mobilenet_protocol(n_eval, n_calib)
    if recipes is None:
        recipes = default_recipes(zeroq_options=dict(MOBILENET_DISTILL))
    return ptq_table(model, cal, ev, lambda out: metrics(out, reference), recipes, **table_options)


def zoo_table(
    name: str,
    recipes: Sequence[Recipe] | None = None,
    n_calib: int = 256,
    cache_dir: str | None = None,
    **table_options: Any,
) -> list[Row]:
    """The low-bit table of a zoo network trained at run time (``demo.zoo.registry``; trained
    networks are cached in ``cache_dir`` when given)."""
    from demo.zoo.metrics import accuracy
    from demo.zoo.registry import load_trained

    trained = load_trained(name, cache_dir)
    data = trained.data
    calib = data.x_train[:n_calib]
    return ptq_table(
        trained.model.eval(), calib, data.x_test,
        lambda out: {"accuracy": accuracy(out, data.y_test)},
        recipes if recipes is not None else low_bit_recipes(), **table_options,
    )  # fmt: skip


def label(r: Recipe) -> str:
    """``method / weights / activations``: what ``--only`` matches."""
    return f"{r.method} / {r.weights} / {r.activations}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["mobilenet_v2", "digits", "resnet18"])
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated terms: recipes whose 'method / weights / acts' label contains one",
    )
    parser.add_argument("--adaround-iterations", type=int, default=1000)
    parser.add_argument("--adaround-batch-rows", type=int, default=512)
    parser.add_argument(
        "--float-sim",
        action="store_true",
        help="evaluate the converted layers' float simulation, not their integer kernels",
    )
    parser.add_argument("--zeroq-iterations", type=int, default=500)
    parser.add_argument("--zeroq-finetune-epochs", type=int, default=50)
    parser.add_argument(
        "--distilled-cache",
        default="",
        help="keep ZeroQ's distilled data in this file and reuse it when the settings match",
    )
    parser.add_argument("--json", default="", help="write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=None, help="directory caching trained zoo networks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    DISTILLED_CACHE["path"] = args.distilled_cache or None
    ada = {"iterations": args.adaround_iterations, "batch_rows": args.adaround_batch_rows}
    if args.model == "mobilenet_v2":
        zq = {**MOBILENET_DISTILL, "iterations": args.zeroq_iterations,
              "finetune_epochs": args.zeroq_finetune_epochs}  # fmt: skip
        recipes = default_recipes(adaround_options=ada, zeroq_options=zq)
    else:
        recipes = low_bit_recipes(adaround_options=ada)
    terms = [t.strip().lower() for t in args.only.split(",") if t.strip()]
    if terms:  # in the order of the terms
        recipes = [r for t in terms for r in recipes if t in label(r).lower()]
        recipes = list(dict.fromkeys(recipes))
    done: list[Row] = []

    def on_row(row: Row) -> None:  # each row as soon as it is measured
        done.append(row)
        name = f"{row.method} / {row.weights} / {row.activations}"
        print(name, row.metrics, f"{row.seconds:.1f} s", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump([asdict(r) for r in done], f, indent=1)

    options: dict[str, Any] = {"float_sim": args.float_sim, "on_row": on_row}
    if args.model == "mobilenet_v2":
        rows = mobilenet_v2_table(recipes, **options)
        keys = list(MOBILENET_KEYS)
    else:
        rows = zoo_table(args.model, recipes, cache_dir=args.cache, **options)
        keys = ["accuracy"]
    print(markdown(rows, keys))
    if DISTILLED_CACHE["loaded"] is not None:
        print(
            f"ZeroQ's distilled data were loaded from {DISTILLED_CACHE['path']} (distilled in "
            f"{DISTILLED_CACHE['loaded']['seconds']:.0f} s, not charged to the rows above)"
        )


if __name__ == "__main__":
    main()
