"""`python -m demo [main|tour] [--out DIR] [--quick] [--weight-only]`: the main job or the tensor tour."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("job", nargs="?", default="main", choices=("main", "tour"))
    parser.add_argument("--out", default="out", help="directory for reports (default: out)")
    parser.add_argument("--quick", action="store_true", help="smaller, faster run")
    parser.add_argument("--weight-only", action="store_true",
                        help="main job: add the MiniLM weight-only algorithms (GPTQ, AWQ, HQQ "
                        "against ONNX Runtime's MatMulNBits; long)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.job == "tour":
        from demo import tour

        tour.run(Path(args.out))
        return 0
    from demo import main_job

    return main_job.run(Path(args.out), quick=args.quick, weight_only_rows=args.weight_only)


if __name__ == "__main__":
    sys.exit(main())
