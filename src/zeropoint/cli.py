"""The `zeropoint` command."""

from __future__ import annotations

import argparse
import sys


def _formats(_: argparse.Namespace) -> int:
    from zeropoint.formats.table import describe_formats, format_table

    print(format_table(describe_formats()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeropoint", description="Quantize PyTorch models: formats, calibration, int8 engine."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("formats", help="table of number formats: range, resolution, dynamic range")
    p.set_defaults(func=_formats)
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
