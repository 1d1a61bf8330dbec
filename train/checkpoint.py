"""A run's checkpoints: plain data, checksummed, written atomically, the previous good one kept.

A checkpoint holds only tensors, numbers, strings, None, lists, tuples and dicts, so it loads with
`torch.load(weights_only=True)`: reading one never runs code. It carries a SHA-256 of everything in it;
`torch.load` checks no CRC, so a flipped byte in a tensor would otherwise resume silently. Writing goes
through a temporary file, fsync and rename (a kill never leaves a torn file), and `last.pt` moves to
`previous.pt` first, so a damaged `last.pt` still leaves a good checkpoint to resume from.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import random
import re
import shutil
import zipfile

import numpy as np
import torch

from models.checkpoints import CheckpointError
from models.weights import current_names
from prep.outputs import atomic_write, refuse_input_as_output

log = logging.getLogger("train")

LAST, PREVIOUS, BEST = "last.pt", "previous.pt", "best.pt"
WRITTEN = (LAST, PREVIOUS, BEST, "best_e*_top1_*.pt", "epoch_*.pt")  # what a run writes into its folder
CHECKSUM = "checksum"


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written; the message is one line naming the file."""


# ------------------------------------------------------------------------------------------- writing


def save_atomic(state: dict, path: str, keep_previous: bool = False) -> None:
    """Write `state` (plus its checksum) to `path`; with `keep_previous` the file there becomes previous.pt."""
    state = dict(state, **{CHECKSUM: checksum(state)})
    previous = os.path.join(os.path.dirname(path), PREVIOUS) if keep_previous else None
    try:
        # a fixed temporary name: the run folder is locked (train.engine), and a killed run's leftover is reused
        with atomic_write(path, "wb", tmp=path + ".tmp", previous=previous) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as err:
        # torch's zip writer turns a failed write (a disk full part-way) into a RuntimeError about its position
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError):
            raise
        raise CheckpointWriteError(_write_failure(cause, path)) from None


def _write_failure(err: OSError, path: str) -> str:
    kept = "the previous checkpoint is kept; run the same command again to resume"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        return f"no space left on device writing {path} ({free / 2**20:.0f} MiB free): free some space; {kept}"
    return f"could not write {path}: {err.strerror or err}; {kept}"


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def checksum(state: dict) -> str:
    """SHA-256 over every value of the checkpoint (tensor bytes, dtypes, shapes, numbers, strings), in order."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != CHECKSUM})
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"{")
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for value in obj:
            _feed(h, value)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


# ------------------------------------------------------------------------------------------- reading


def load(path: str) -> dict:
    """A checkpoint written by `python -m train`, read without running code and verified; else one-line
    CheckpointError (missing, empty, truncated, damaged, holding objects, or not a training checkpoint)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and plain data, "
                              f"which could run code when loaded ({_first_line(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or damaged ({_first_line(err)})") from None
    if not (isinstance(state, dict) and "model_name" in state and isinstance(state.get("model"), dict)):
        raise CheckpointError(f"{path}: not a checkpoint written by `python -m train`")
    if CHECKSUM not in state:
        log.warning("%s has no checksum (written by an older version): it cannot be verified", path)
    elif state[CHECKSUM] != checksum(state):
        raise CheckpointError(f"{path}: damaged: its contents do not match the checksum stored in it")
    return state


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    for line in text:  # torch's weights-only refusal puts the offending global on a later line
        if "Unsupported global" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ")[:200]
    return (text or [type(err).__name__])[0][:200]


def load_weights(model: torch.nn.Module, weights: dict) -> None:
    """A resumed run's model (or EMA) weights, strictly, under the model's current names: a checkpoint written before
    a model renamed its parameters (ILA's classifier under `head.`) resumes as eval reads it (one mechanism,
    models.weights.current_names)."""
    model.load_state_dict(current_names(model, weights))


def resume_candidates(run_dir: str, resume: str) -> list[str]:
    """The checkpoints to try in order: `auto`: the run folder's last, then previous; `none`: none; a path."""
    if resume in ("", "none"):
        return []
    if resume == "auto":
        return [p for p in (os.path.join(run_dir, LAST), os.path.join(run_dir, PREVIOUS)) if os.path.isfile(p)]
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume: checkpoint not found: {resume}")
    return [resume]


def load_first_good(paths: list[str], warn: bool = True) -> tuple[str, dict] | None:
    """(path, state) of the first readable, intact checkpoint; a warning for each damaged one passed over,
    a one-line CheckpointError when all are damaged."""
    problems = []
    for path in paths:
        try:
            state = load(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems and warn:
            log.warning("%s; resuming from %s instead (epoch %d, step %d)", "; ".join(problems), path,
                        state["epoch"], state["step"])
        return path, state
    if problems:
        raise CheckpointError(f"{'; '.join(problems)}; no good checkpoint to resume from: move it away to "
                              f"start over, or pass --resume none")
    return None


# ----------------------------------------------------------------------- kept checkpoints, averaging

_KEPT = re.compile(r"best_e(\d+)_top1_([0-9.]+)\.pt$")


def kept_name(epoch: int, score: float) -> str:
    return f"best_e{epoch:04d}_top1_{score:.4f}.pt"


def every_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def kept_checkpoints(run_dir: str) -> list[tuple[float, int, str]]:
    """(score, epoch, path) of the run's kept best checkpoints, best first (the earlier epoch on a tie)."""
    found = []
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else ():
        m = _KEPT.fullmatch(name)
        if m:
            found.append((float(m.group(2)), int(m.group(1)), os.path.join(run_dir, name)))
    return sorted(found, key=lambda f: (-f[0], f[1]))


def keep_top(state: dict, run_dir: str, score: float, k: int) -> None:
    """Write `state` as a kept checkpoint when `score` is among the `k` best, and delete those it pushes out."""
    path = os.path.join(run_dir, kept_name(state["epoch"], score))
    score = float(f"{score:.4f}")  # as the kept files' names hold it: a tie with an earlier epoch stays a tie
    kept = [f for f in kept_checkpoints(run_dir) if f[2] != path]  # an epoch redone after a resume replaces its file
    ranked = sorted(kept + [(score, state["epoch"], path)], key=lambda f: (-f[0], f[1]))
    if (score, state["epoch"], path) in ranked[:k]:
        save_atomic(state, path)
    for _, _, old in ranked[k:]:
        _remove(old)


def average_checkpoints(run_dir: str, top: int, out: str | None = None) -> str:
    """Average the weights of the run's `top` best kept checkpoints into one evaluable checkpoint (the
    best one's metadata, no optimizer state); its path. One-line ValueError when it cannot."""
    kept = kept_checkpoints(run_dir)
    if len(kept) < top:
        raise ValueError(f"{run_dir} has {len(kept)} kept best checkpoints (best_e*_top1_*.pt), fewer than "
                         f"--top {top}: train with --keep_best {top} or more")
    out = out or os.path.join(run_dir, f"averaged_top{top}.pt")
    run_files = [os.path.join(run_dir, name) for name in (LAST, PREVIOUS, BEST)] + [p for _, _, p in kept[:top]]
    refuse_input_as_output([("--out", out)], [("checkpoint", path) for path in run_files])
    states = [load(path) for _, _, path in kept[:top]]
    _check_same_model([p for _, _, p in kept[:top]], states)
    best = dict(states[0])
    best["model"] = _mean_tensors([s["model"] for s in states])
    emas = [s.get("ema") for s in states]
    best["ema"] = _mean_tensors(emas) if all(emas) else None
    # an average is evaluated or fine-tuned, not resumed
    for key in ("optimizer", "scheduler", "scaler", "rng", "rng_ranks"):
        best[key] = None
    best["averaged_from"] = [os.path.basename(p) for _, _, p in kept[:top]]
    save_atomic(best, out)
    return out


def _check_same_model(paths: list[str], states: list[dict]) -> None:
    first = states[0]
    for path, state in zip(paths[1:], states[1:]):
        args = ((state.get("config") or {}).get("model_args"), (first.get("config") or {}).get("model_args"))
        shapes = [{k: tuple(v.shape) for k, v in s["model"].items()} for s in (state, first)]
        if (state["model_name"], state["num_classes"]) != (first["model_name"], first["num_classes"]) or \
                args[0] != args[1] or shapes[0] != shapes[1]:
            raise ValueError(f"{path} is a checkpoint of another model than {paths[0]} ({state['model_name']} with "
                             f"{state['num_classes']} classes vs {first['model_name']} with {first['num_classes']}, "
                             f"or other arguments or weights): they cannot be averaged")


def _mean_tensors(dicts: list[dict]) -> dict:
    """Floating tensors averaged (in float64, stored in their dtype); counters as in the first."""
    return {k: (torch.stack([d[k].double() for d in dicts]).mean(0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in dicts[0].items()}


# ---------------------------------------------------------------------------------------- RNG state


def rng_state(device: torch.device) -> dict:
    """Every random generator the loop draws from, as plain data (numpy's and Python's as lists)."""
    np_state = np.random.get_state(legacy=False)
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                      "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                      "gauss": float(np_state["gauss"])},
            "python": [version, list(internal), gauss]}


def gather_rng_states(device: torch.device, world: int) -> list[dict]:
    """Every rank's `rng_state`, in rank order (a collective: all ranks call it). Each rank draws its own dropout,
    drop-path and mixup numbers, so a bit-exact resume needs each rank's state, not rank 0's for all."""
    own = rng_state(device)
    if world == 1:
        return [own]
    import torch.distributed as dist

    gathered = [None] * world
    dist.all_gather_object(gathered, own)
    return gathered


def rank_rng_state(state: dict, rank: int, world: int) -> tuple[dict, str | None]:
    """(the RNG state this rank resumes with, a warning when the resume cannot be bit-exact). Checkpoints written
    before the per-rank states existed hold rank 0's only."""
    ranks = state.get("rng_ranks")
    if ranks and len(ranks) == world:
        return ranks[rank], None
    saved = len(ranks) if ranks else 1
    if saved == world:  # one process, old or new format alike
        return state["rng"], None
    own = ranks[rank % saved] if ranks else state["rng"]
    return own, (f"the checkpoint holds the random states of {saved} process(es) and this run has {world}: the "
                 f"run resumes with reused states (dropout, drop-path and mixup draws differ from an "
                 f"uninterrupted run on {world})")


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32),
                                                                "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def all_finite(tensors: dict) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile
