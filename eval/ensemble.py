"""python -m eval ensemble EVAL_DIR_OR_SCORES... [--weights W...] [--out DIR]: fuse the saved scores of several
models on the same split and report the same metrics and plots as `python -m eval` (for an unlabelled split, the
same submission files and no accuracy)."""
from __future__ import annotations

import argparse
import json
import sys

from prep.cli import NON_NEGATIVE_FLOAT, add_debug_option, run_main
from runtime.printing import printable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="eval output folders (or their scores.npy)")
    p.add_argument("--weights", type=NON_NEGATIVE_FLOAT, nargs="+", default=None, help="one per input (default: equal)")
    p.add_argument("--out", default="", help="report folder (default: ensemble_<n> beside the first input)")
    add_debug_option(p)
    return p


def main(argv=None) -> int:
    return run_main("eval ensemble", _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .fusion import ensemble  # numpy and torch: only once the arguments are known to be good

    summary = ensemble(args.inputs, args.weights, args.out)
    if summary["top1"] is None:
        print(f"{summary['model']}: no labels, no accuracy: predictions of {summary['videos']} videos -> "
              f"{summary['submission']['csv']}, {summary['submission']['ssv2']}")
    else:
        print(f"{summary['model']}: top-1 {summary['top1']:.2f}  top-5 {summary['top5']:.2f}  "
              f"({summary['videos']} videos) -> {summary['out_dir']}")
    print(json.dumps(printable(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
