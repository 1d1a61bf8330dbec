"""Checkpoints written atomically (temporary file, fsync, rename): a kill never leaves a torn one."""
from __future__ import annotations

import os

import torch

LAST, BEST = "last.pt", "best.pt"


def save_atomic(state: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def resume_path(run_dir: str, resume: str) -> str | None:
    """`auto`: the run folder's last checkpoint if there is one; `none`: start fresh; else a path."""
    if resume in ("", "none"):
        return None
    if resume == "auto":
        path = os.path.join(run_dir, LAST)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return resume


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile
