"""The `zeropoint` command: quantize a model from your own code, re-render its report, list the
number formats.

    zeropoint quantize mypkg.models:build_model --calib mypkg.data:calib_batches --out out/
    zeropoint report out/
    zeropoint formats

``MODULE:ATTRIBUTE`` names a Python object as uvicorn does: the module is imported (the current
directory first on the path) and the attribute read. The model attribute is an ``nn.Module`` or a
function returning one; the calibration attribute is an iterable of batches (tensors, or
(inputs, labels) pairs) or a function returning one — a single tensor is one batch. Bad input
ends the command with a one-line error and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

MANIFEST = "zeropoint.json"
STATIC = ("int8_static",)
DYNAMIC = ("int8_dynamic", "int4_weight_only")
QAT = ("w4a4_qat", "w3a3_qat", "w2a2_qat")


class CliError(Exception):
    """Bad input: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors (a missing option, an invalid choice) on one line:
    ``zeropoint: error: <what> (see `zeropoint quantize --help`)``, exit status 2."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        command = self.prog.removeprefix("zeropoint").strip()
        hint = f"zeropoint {command} --help" if command else "zeropoint --help"
        self.exit(2, f"zeropoint: error: {message} (see `{hint}`)\n")


# ---------------------------------------------------------------------------- user objects


def load_object(spec: str, what: str) -> Any:
    """The object ``MODULE:ATTRIBUTE`` names (dots in the attribute walk into it)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise CliError(f"{what} must be given as MODULE:ATTRIBUTE (e.g. mypkg.models:build), "
                       f"got {spec!r}")  # fmt: skip
    module_name, attr = spec.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise CliError(f"cannot import module {module_name!r} for {what}: "
                       f"{type(exc).__name__}: {_first_line(exc)}") from None  # fmt: skip
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"module {module_name!r} has no attribute {attr!r} ({what})")
        obj = getattr(obj, part)
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def build_model(spec: str) -> Any:
    from torch import nn

    obj = load_object(spec, "the model")
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise CliError(f"{spec} is a {type(obj).__name__}: expected an nn.Module or a "
                           "function returning one")  # fmt: skip
        try:
            obj = obj()
        except Exception as exc:
            raise CliError(f"{spec}() raised {type(exc).__name__}: {_first_line(exc)}") from None
        if not isinstance(obj, nn.Module):
            raise CliError(f"{spec}() returned a {type(obj).__name__}, expected an nn.Module")
    return obj.eval()


def load_batches(spec: str, what: str) -> list[Any]:
    import torch

    obj = load_object(spec, what)
    if callable(obj) and not isinstance(obj, torch.Tensor | list | tuple):
        try:
            obj = obj()
        except Exception as exc:
            raise CliError(f"{spec}() raised {type(exc).__name__}: {_first_line(exc)}") from None
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict) or not isinstance(obj, Iterable):
        raise CliError(f"{what} {spec} is a {type(obj).__name__}: expected an iterable of "
                       "batches (tensors or (inputs, labels) pairs) or a tensor")  # fmt: skip
    batches = list(obj)
    if not batches:
        raise CliError(f"{what} {spec} is empty")
    for i, b in enumerate(batches):
        x = b[0] if isinstance(b, tuple | list) and b else b
        if not isinstance(x, torch.Tensor):
            raise CliError(f"{what} {spec}: batch {i} is a {type(x).__name__}, expected a tensor "
                           "or an (inputs, labels) pair")  # fmt: skip
    return batches


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, tuple | list) else batch


def check_batches(model: Any, batches: list[Any], what: str) -> None:
    """Run the float model on the first batch: data of the wrong shape fails here, in one line."""
    import torch

    x = _inputs(batches[0])
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:
        raise CliError(f"{what} does not fit the model: on a batch of shape {tuple(x.shape)} it "
                       f"raised {type(exc).__name__}: {_first_line(exc)}") from None  # fmt: skip
    shapes = {tuple(_inputs(b).shape[1:]) for b in batches}
    if len(shapes) > 1:
        raise CliError(f"{what}: batches have different shapes after the batch dimension: "
                       f"{sorted(shapes)}")  # fmt: skip


def resolve_config(spec: str, observer: str | None) -> tuple[Any, str]:
    """(QuantConfig, workflow) for a preset name or MODULE:ATTRIBUTE."""
    import zeropoint as zp

    if ":" in spec:
        obj = load_object(spec, "the config")
        cfg = obj() if callable(obj) and not isinstance(obj, zp.QuantConfig) else obj
        if not isinstance(cfg, zp.QuantConfig):
            raise CliError(f"{spec} gave a {type(cfg).__name__}, expected a zp.QuantConfig")
    elif spec in STATIC:
        cfg = zp.int8_static(observer or "minmax")
        observer = None
    elif spec in DYNAMIC:
        cfg = zp.PRESETS[spec]()
    elif spec in QAT:
        raise CliError(f"config {spec!r} is for quantization-aware training, which needs your "
                       "training loop: use zp.prepare_qat in Python")  # fmt: skip
    else:
        raise CliError(f"unknown config {spec!r}: expected one of "
                       f"{list(STATIC + DYNAMIC)} or MODULE:ATTRIBUTE")  # fmt: skip
    if observer is not None:
        cfg = cfg.with_(activation_observer=observer)
    workflow = "dynamic" if cfg.dynamic or cfg.activation is None else "static"
    return cfg, workflow


# ---------------------------------------------------------------------------- commands


def _quantize(args: argparse.Namespace) -> int:
    import zeropoint as zp
    from zeropoint.report.capture import captured_warnings
    from zeropoint.report.files import atomic_write_text, check_writable_dir

    out = check_writable_dir(Path(args.out))
    cfg, workflow = resolve_config(args.config, args.observer)
    model = build_model(args.model)
    calib = load_batches(args.calib, "calibration data")
    check_batches(model, calib, "calibration data")
    data = load_batches(args.data, "evaluation data") if args.data else calib
    if args.data:
        check_batches(model, data, "evaluation data")
    start = time.perf_counter()
    with captured_warnings() as caught:
        if workflow == "static":
            model_q = zp.quantize_static(model, calib, cfg, progress=not args.quiet)
        else:
            model_q = zp.quantize_dynamic(model, cfg)
        ckpt = zp.save(model_q, out / "checkpoint")
        _say(args, f"checkpoint: {ckpt}")
        manifest = {"model": args.model, "calib": args.calib, "data": args.data,
                    "config": args.config, "observer": args.observer, "workflow": workflow,
                    "cwd": os.getcwd(), "max_batches": args.max_batches}  # fmt: skip
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
        onnx_path = None
        weight_only = workflow == "dynamic" and not cfg.dynamic
        if workflow == "static" or weight_only:
            if not args.no_onnx:
                onnx_path = _export(model_q, _inputs(data[0]), out / "model.onnx", args,
                                    weight_only)  # fmt: skip
        else:
            _say(args, "ONNX export: none for dynamic activation quantization (it runs in "
                       "PyTorch; ONNX Runtime's own quantize_dynamic covers that export)")  # fmt: skip
        report = _report(model, model_q, workflow, data, args, ckpt, onnx_path)
    _finish(report, out, caught, args, time.perf_counter() - start)
    return 0


def _export(model_q: Any, example: Any, path: Path, args: argparse.Namespace,
            weight_only: bool = False) -> Path | None:  # fmt: skip
    try:
        import onnx  # noqa: F401
    except ImportError:
        _say(args, "ONNX export skipped: it needs the 'onnx' extra (pip install 'zeropoint[onnx]')")
        return None
    import zeropoint as zp

    if weight_only:  # MatMulNBits for the weight-only layers, the rest as exported
        axes = {"input": {0: "batch"}, "output": {0: "batch"}}
        written = zp.export_weight_only_onnx(model_q, path, (example[:2],), input_names=["input"],
                                             output_names=["output"], dynamic_axes=axes)  # fmt: skip
    else:
        written = zp.export_onnx(model_q, path, example[:2])
    _say(args, f"ONNX: {written}")
    return written


def _report(model: Any, model_q: Any, workflow: str, data: list[Any], args: argparse.Namespace,
            ckpt: Path, onnx_path: Path | None) -> Any:  # fmt: skip
    import zeropoint as zp
    from zeropoint.analysis.metrics import resolve_metric
    from zeropoint.analysis.units import labels_of
    from zeropoint.report.model_report import analysis_report, deployment_rows

    batches = data[: args.max_batches]
    inputs = [_inputs(b) for b in batches]
    labels = [labels_of(b) for b in batches]
    has_labels = all(y is not None for y in labels)
    try:
        metric = resolve_metric(args.metric, has_labels)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    label_t = None
    if has_labels:
        import torch

        label_t = torch.cat(labels)  # type: ignore[arg-type]
    analysis = None
    program = None
    if workflow == "static":
        analysis = zp.analyze(model, model_q, batches, metric=metric, progress=not args.quiet,
                              consistency="auto" if onnx_path is not None else False)  # fmt: skip
        program = zp.to_integer(model_q, inputs[0][:2])
    summary = deployment_rows(model, model_q, inputs, label_t, metric, ckpt, onnx_path, program)
    title = f"{type(model).__name__} — zeropoint {args.config}"
    return analysis_report(title, analysis, summary)


def _finish(report: Any, out: Path, caught: Any, args: argparse.Namespace, elapsed: float) -> None:
    from zeropoint.report.files import atomic_write_text
    from zeropoint.report.html import write_html
    from zeropoint.report.tables import format_table

    report.warnings = caught.lines()
    path = write_html(out / "report.html", report)
    atomic_write_text(out / "report.json", report.to_json())
    _say(args, format_table(report.summary, digits={"size KB": 1, "latency ms": 2,
                                                     "speed vs fp32": 2}))  # fmt: skip
    if report.analysis:
        top = sorted(report.analysis["layers"], key=lambda d: -(d.get("only_quantized") or 0))
        _say(args, "most sensitive: " + ", ".join(d["name"] for d in top[:3]))
    if caught.count:
        _say(args, f"{caught.count} third-party warnings captured (listed in the report)")
    _say(args, f"report: {path} ({elapsed:.1f} s)")


def _report_cmd(args: argparse.Namespace) -> int:
    import zeropoint as zp
    from zeropoint.report.capture import captured_warnings

    out = Path(args.dir)
    if args.render_only:
        return _render_only(out, args)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise CliError(f"{out} has no {MANIFEST}: it was not written by `zeropoint quantize`")
    try:
        manifest = json.loads(manifest_path.read_text())
        spec, calib_spec = manifest["model"], manifest["calib"]
    except (ValueError, KeyError) as exc:
        raise CliError(f"{manifest_path} is damaged: {exc!r}") from None
    if manifest.get("cwd") and manifest["cwd"] not in sys.path and Path(manifest["cwd"]).is_dir():
        sys.path.insert(0, manifest["cwd"])
    data_spec = args.data or manifest.get("data") or calib_spec
    model = build_model(spec)
    data = load_batches(data_spec, "evaluation data")
    check_batches(model, data, "evaluation data")
    start = time.perf_counter()
    with captured_warnings() as caught:
        try:
            model_q = zp.load(out / "checkpoint", build_model(spec))
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise CliError(f"cannot load the checkpoint in {out}: {_first_line(exc)}") from None
        onnx_path = out / "model.onnx" if (out / "model.onnx").is_file() else None
        args.config = manifest.get("config", "?")
        args.max_batches = args.max_batches or manifest.get("max_batches")
        workflow = manifest.get("workflow", "static")
        report = _report(model, model_q, workflow, data, args, out / "checkpoint", onnx_path)
    _finish(report, out, caught, args, time.perf_counter() - start)
    return 0


def _render_only(out: Path, args: argparse.Namespace) -> int:
    from zeropoint.report.html import ReportData, write_html

    source = out / "report.json"
    if not source.is_file():
        raise CliError(f"{out} has no report.json to render: run `zeropoint quantize` first")
    try:
        report = ReportData.from_json(source.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise CliError(f"{source} is damaged: {_first_line(exc)}") from None
    _say(args, f"report: {write_html(out / 'report.html', report)}")
    return 0


def _formats(_: argparse.Namespace) -> int:
    from zeropoint.formats.table import describe_formats, format_table

    print(format_table(describe_formats()))
    return 0


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, flush=True)


QUANTIZE_EXAMPLES = """examples:
  zeropoint quantize mypkg.models:build_model --calib mypkg.data:calib_batches --out out/
  zeropoint quantize mypkg.models:resnet --calib mypkg.data:calib --config int8_static \\
      --observer entropy --data mypkg.data:val_batches --metric accuracy --out out/resnet
  zeropoint quantize mypkg.models:encoder --calib mypkg.data:calib --config int4_weight_only

MODEL: an nn.Module or a function returning one (called with no arguments).
--calib / --data: an iterable of batches — tensors or (inputs, labels) pairs — or a function
returning one; a single tensor is one batch. Writes DIR/checkpoint (zp.save), DIR/model.onnx
(static configs), DIR/report.html, DIR/report.json and DIR/zeropoint.json (how to rebuild)."""

REPORT_EXAMPLES = """examples:
  zeropoint report out/
  zeropoint report out/ --data mypkg.data:val_batches --metric agreement

  zeropoint report out/ --render-only

Rebuilds the model from the code named in DIR/zeropoint.json, loads DIR/checkpoint, analyses it
on the evaluation data (default: the data used when quantizing) and rewrites DIR/report.html and
DIR/report.json. --render-only rewrites DIR/report.html from DIR/report.json as it is."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="zeropoint",
        description="Quantize PyTorch models: formats, calibration, int8 engine, reports.",
        epilog="run `zeropoint COMMAND --help` for a command's options and examples",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    q = sub.add_parser("quantize", help="quantize a model from your code; export and report",
                       epilog=QUANTIZE_EXAMPLES, formatter_class=fmt)  # fmt: skip
    q.add_argument("model", help="MODULE:ATTRIBUTE of the float model (or a function building it)")
    q.add_argument("--calib", required=True, help="MODULE:ATTRIBUTE of the calibration batches")
    q.add_argument("--config", default="int8_static",
                   help=f"a preset ({', '.join(STATIC + DYNAMIC)}) or MODULE:ATTRIBUTE of a "
                        "zp.QuantConfig (default: int8_static)")  # fmt: skip
    q.add_argument(
        "--observer",
        default=None,
        help="activation calibration: minmax, percentile, entropy, mse, aciq",
    )
    q.add_argument(
        "--data",
        default=None,
        help="MODULE:ATTRIBUTE of evaluation batches for the report (default: --calib)",
    )
    q.add_argument(
        "--metric",
        default=None,
        choices=("accuracy", "agreement", "cosine", "kl"),
        help="default: accuracy when batches carry labels, else KL to the float outputs",
    )
    q.add_argument(
        "--max-batches", type=int, default=8, help="batches the report analyses (default 8)"
    )
    q.add_argument(
        "--out", default="zeropoint-out", help="output directory (default: zeropoint-out)"
    )
    q.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    q.add_argument("--quiet", action="store_true", help="print nothing but errors")
    q.set_defaults(func=_quantize)
    r = sub.add_parser("report", help="re-render the report of a saved checkpoint",
                       epilog=REPORT_EXAMPLES, formatter_class=fmt)  # fmt: skip
    r.add_argument("dir", help="a directory written by `zeropoint quantize`")
    r.add_argument("--data", default=None,
                   help="MODULE:ATTRIBUTE of evaluation batches (default: those of quantize)")  # fmt: skip
    r.add_argument("--metric", default=None, choices=("accuracy", "agreement", "cosine", "kl"),
                   help="default: accuracy when batches carry labels, else KL to the float "
                        "outputs")  # fmt: skip
    r.add_argument("--max-batches", type=int, default=None,
                   help="batches the report analyses (default: as when quantizing)")  # fmt: skip
    r.add_argument("--render-only", action="store_true",
                   help="rewrite DIR/report.html from DIR/report.json alone: no model code, "
                        "no data, nothing re-measured")  # fmt: skip
    r.add_argument("--quiet", action="store_true", help="print nothing but errors")
    r.set_defaults(func=_report_cmd)
    f = sub.add_parser("formats", help="table of number formats: range, resolution, dynamic range",
                       epilog="example:\n  zeropoint formats", formatter_class=fmt)  # fmt: skip
    f.set_defaults(func=_formats)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "max_batches", None) is not None and args.max_batches < 1:
        print("zeropoint: error: --max-batches must be at least 1", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"zeropoint: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, PermissionError, FileNotFoundError, ImportError) as exc:
        print(f"zeropoint: error: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
