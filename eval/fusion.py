"""The work of `python -m eval ensemble` (its command line is eval/ensemble.py): fuse the saved scores of several
models on one split, weighted, and write the same reports as `python -m eval`."""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from prep.outputs import check_writable, refuse_input_as_output

from .dump import fuse, load_scores
from .metrics import accuracy_report
from .run import write_reports


def ensemble(inputs: list[str], weights: list[float] | None = None, out_dir: str = "") -> dict:
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
