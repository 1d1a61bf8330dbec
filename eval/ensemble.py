"""python -m eval ensemble EVAL_DIR_OR_SCORES... [--weights W...] [--out DIR]: fuse the saved scores of several
models on the same split and report the same metrics and plots as `python -m eval` (for an unlabelled split, the
same submission files and no accuracy)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

from prep.cli import NON_NEGATIVE_FLOAT, add_debug_option, run_main
from prep.outputs import check_writable, refuse_input_as_output
from runtime.printing import printable

from .dump import fuse, load_scores
from .metrics import accuracy_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval ensemble", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="eval output folders (or their scores.npy)")
    p.add_argument("--weights", type=NON_NEGATIVE_FLOAT, nargs="+", default=None, help="one per input (default: equal)")
    p.add_argument("--out", default="", help="report folder (default: ensemble_<n> beside the first input)")
    add_debug_option(p)
    return p


def ensemble(inputs: list[str], weights: list[float] | None = None, out_dir: str = "") -> dict:
    from .run import write_reports

    if len(inputs) < 2:
        raise ValueError("an ensemble needs at least two score dumps")
    weights = weights or [1.0] * len(inputs)
    shares = normalised_weights(weights)
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(inputs[0])), f"ensemble_{len(inputs)}")
    # the out folder's scores.npy, scores_index.json and reports would replace an input's own
    refuse_input_as_output([("--out", out_dir)], [("folder", _folder(p)) for p in inputs])
    check_writable(out_dir)
    scores, index = fuse([load_scores(p) for p in inputs], shares, inputs)
    if not np.isfinite(scores).all():
        bad = [p for p in inputs if not np.isfinite(load_scores(p)[0]).all()]
        raise ValueError(f"the fused scores are not finite: {', '.join(bad) or 'the weighted sum'} "
                         f"{'holds' if bad else 'overflows'} nan or inf; evaluate again or check --weights")
    classes, scores = index["classes"], torch.from_numpy(scores)
    labelled = all(label is not None for label in index["labels"])  # else a test split: submission files
    report = accuracy_report(scores, torch.tensor(index["labels"]), classes) if labelled else None
    summary = {"model": "ensemble of " + " + ".join(_name(p) for p in inputs), "split": index.get("split"),
               "inputs": inputs, "weights": weights, "weight_shares": shares, "videos": len(index["ids"]),
               **{k: report[k] if report else None for k in ("top1", "top5", "mean_class_acc")}}
    rows = [{"id": i, "label": label} for i, label in zip(index["ids"], index["labels"])]
    write_reports(out_dir, summary, report, scores, rows, classes)
    summary["out_dir"] = out_dir
    return summary


def normalised_weights(weights: list[float]) -> list[float]:
    """Each weight's share of their sum, computed without overflow: divided by the largest first, so the sum of
    the scaled weights is at most their count (a plain sum of 1e308 and 1e308 is inf, and inf / inf nan)."""
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"--weights must be finite numbers >= 0, got {' '.join(map(str, weights))}")
    largest = max(weights)
    if not largest > 0:
        raise ValueError(f"--weights must not all be 0, got {' '.join(map(str, weights))}")
    scaled = [w / largest for w in weights]
    total = sum(scaled)
    return [w / total for w in scaled]


def _folder(path: str) -> str:
    """The eval folder of an input (the folder itself, or the folder of its scores.npy)."""
    return path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))


def _name(path: str) -> str:
    path = os.path.abspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    return os.path.basename(os.path.dirname(folder)) or folder


def main(argv=None) -> int:
    return run_main("eval ensemble", _main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
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
