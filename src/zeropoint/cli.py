"""The `zeropoint` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _formats(_: argparse.Namespace) -> int:
    from zeropoint.formats.table import describe_formats, format_table

    print(format_table(describe_formats()))
    return 0


def _tour(args: argparse.Namespace) -> int:
    from zeropoint.demo import tour

    tour.run(Path(args.out))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from zeropoint.demo import main_job

    return main_job.run(Path(args.out), quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeropoint", description="Quantize PyTorch models: formats, calibration, int8 engine."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("formats", help="table of number formats: range, resolution, dynamic range")
    p.set_defaults(func=_formats)
    p = sub.add_parser("tour", help="every calibration method and quantizer on real tensors")
    p.add_argument("--out", default="out", help="directory for the plot (default: out)")
    p.set_defaults(func=_tour)
    p = sub.add_parser("demo", help="the main job: quantize real models and print the report")
    p.add_argument("--out", default="out", help="directory for reports and models (default: out)")
    p.add_argument("--quick", action="store_true", help="smaller, faster run")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, PermissionError, FileNotFoundError) as exc:
        print(f"zeropoint: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
