"""A synthetic ImageNet-style folder for image pre-training: one class per shape of the synthetic videos.

Each image is one still frame drawn like the synthetic videos' (random background, texture, colours, size,
position and rotation), so the classes differ only in the object's shape: learnable from a single image.

Layout written by `generate_image_folder` (what `pipelines.images.open_image_folder` reads)::

    root/train/<shape>/<shape>_<index>.JPEG
    root/val/<shape>/<shape>_<index>.JPEG
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from .synthetic import SHAPES, Sample, check_size

__all__ = ["SHAPES", "render_image", "generate_image_folder"]


def render_image(shape: str, rng: np.random.Generator, size) -> np.ndarray:
    """One uint8 (H, W, 3) image of `shape`."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    # the "spin" pair draws the largest objects (a third of the short side), at a random angle
    return Sample("spin", rng, 1, check_size(size), shapes=(shape,), textures=("solid",)).frame(0)


def generate_image_folder(root, per_class: int = 100, val_per_class: int = 20, size=64, seed: int = 0,
                          quality: int = 90, progress: bool = True) -> dict:
    """Write train/ and val/ folders; an image already on disk is kept, so an interrupted run resumes.
    Each image's draws come from (seed, split, class, index) alone."""
    if per_class < 1 or val_per_class < 1:
        raise ValueError(f"per_class and val_per_class must be >= 1, got {per_class}, {val_per_class}")
    jobs = [(split, label, shape, i) for split, count in (("train", per_class), ("val", val_per_class))
            for label, shape in enumerate(SHAPES) for i in range(count)]
    for split, label, shape, i in tqdm(jobs, desc="images", unit="img", disable=not progress):
        path = os.path.join(root, split, shape, f"{shape}_{i:05d}.JPEG")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        rng = np.random.default_rng([seed, split == "val", label, i])
        tmp = path + ".tmp"
        Image.fromarray(render_image(shape, rng, size)).save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)  # a killed run never leaves a truncated image under its final name
    return {"root": os.fspath(root), "classes": len(SHAPES), "train": per_class * len(SHAPES),
            "val": val_per_class * len(SHAPES)}
