"""Score dumps (scores.npy + scores_index.json) and their fusion: how two-stream and multi-model results of
the papers are made. `python -m eval ensemble RUN_OR_SCORES... [--weights 1 0.5] [--out DIR]`."""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from prep.outputs import atomic_write, write_json

SCORES, VIEWS, INDEX = "scores.npy", "scores_views.npy", "scores_index.json"
FEATURES, FEATURES_INDEX = "features.npy", "features_index.json"


def save_scores(out_dir: str, scores: torch.Tensor, rows: list[dict], classes: list[str], meta: dict,
                views: torch.Tensor | None = None) -> None:
    """(videos x classes) mean softmax over views, optionally (videos x views x classes), with the index that
    says which video and class each row and column is."""
    _save_array(os.path.join(out_dir, SCORES), scores)
    if views is not None:
        _save_array(os.path.join(out_dir, VIEWS), views)
    _write_index(os.path.join(out_dir, INDEX), meta, rows, classes)


def save_features(out_dir: str, features: torch.Tensor, rows: list[dict], classes: list[str], meta: dict) -> None:
    """`python -m eval features`' embeddings, (videos x D) or (videos x views x D), with the same kind of index."""
    _save_array(os.path.join(out_dir, FEATURES), features)
    _write_index(os.path.join(out_dir, FEATURES_INDEX), meta, rows, classes)


def _write_index(path: str, meta: dict, rows: list[dict], classes: list[str]) -> None:
    index = dict(meta, ids=[r["id"] for r in rows], labels=[r.get("label") for r in rows], classes=list(classes))
    write_json(path, index)


def _save_array(path: str, values: torch.Tensor) -> None:
    with atomic_write(path, "wb") as f:
        np.save(f, values.numpy().astype(np.float32), allow_pickle=False)


def load_scores(path: str) -> tuple[np.ndarray, dict]:
    """A dump from an eval folder or its scores.npy: (scores, index), checked against each other."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    npy = os.path.join(folder, SCORES) if os.path.isdir(path) else path
    index_path = os.path.join(folder, INDEX)
    for p in (npy, index_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{path}: no {os.path.basename(p)} (run `python -m eval` first; it writes both)")
    scores = np.load(npy, allow_pickle=False)
    with open(index_path) as f:
        index = json.load(f)
    if scores.shape != (len(index["ids"]), len(index["classes"])):
        raise ValueError(f"{path}: scores of shape {scores.shape} do not match its index "
                         f"({len(index['ids'])} videos x {len(index['classes'])} classes)")
    return scores, index


def fuse(dumps: list[tuple[np.ndarray, dict]], weights: list[float], names: list[str]) -> tuple[np.ndarray, dict]:
    """Weighted sum of the dumps' scores; refuses dumps of other videos, labels or classes in one line."""
    if len(weights) != len(dumps):
        raise ValueError(f"{len(weights)} weights for {len(dumps)} score dumps")
    base_scores, base = dumps[0]
    for (scores, index), name in zip(dumps[1:], names[1:]):
        for key, what in (("classes", "class list"), ("ids", "videos"), ("labels", "labels")):
            if index[key] != base[key]:
                difference = _difference(index[key], base[key])
                raise ValueError(f"{name} and {names[0]} differ in their {what} ({difference}); "
                                 "fuse scores of the same split and classes only")
    fused = sum(w * s.astype(np.float64) for w, (s, _) in zip(weights, dumps)) / sum(weights)
    return fused.astype(np.float32), dict(base, fused_from=names, weights=weights)


def _difference(a: list, b: list) -> str:
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)}"
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"entry {i}: {a[i]!r} vs {b[i]!r}"
