"""What keeps a run from failing silently: stop signals, the precision a device can train in, and data that
cannot be served as the model asks. Each problem is one line: a warning, or a `RunStopped` with an exit code."""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import signal
import threading

import torch
import torch.distributed as dist

from prep.guard import Busy, exclusive
from prep.outputs import OutputError, check_free_space, check_writable, same_path

log = logging.getLogger("train")
RUN_LOCK = "train.lock"
BUSY = ("run folder {what} is in use by another training ({holder}): wait for it to end, or pass --name NEW "
        "to train a new run")


class RunStopped(RuntimeError):
    """The run stopped before its end (diverged, interrupted, disk full); `code` is the process's exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class StopSignals:
    """SIGTERM and SIGINT ask the loop to stop at the next optimizer-step boundary (it checkpoints there);
    a second SIGINT aborts at once. The handler only records the signal: logging from a handler could
    deadlock on the logging lock the interrupted code holds."""

    def __init__(self, announce: bool = True):
        self.signum = 0
        self.pid = os.getpid()
        self.announce = announce  # one process of a DDP run says it

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # a forked data worker (Ctrl-C reaches the whole group): the trainer decides
            return
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            os.write(2, f"\ntrain: {signal.Signals(signum).name}: stopping after the current step and saving a "
                        f"checkpoint (Ctrl-C again aborts)\n".encode())

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield self
            return
        self.pid = os.getpid()
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


def training_amp(amp: str, device: torch.device, model: torch.nn.Module, warn: bool = True) -> str:
    """The autocast mode a run trains in. On the CPU, oneDNN's bf16 weight gradients of 3D convolutions
    come out NaN now and then (seen with torch 2.14 / oneDNN 3.12 for small feature maps such as I3D's
    res4 at 2x4x4: a few calls in a hundred, with 1 or 2 threads; fp16 and 2D convolutions are unaffected),
    so a model with 3D convolutions trains in float32 there."""
    if amp != "bf16" or device.type != "cpu" or not any(isinstance(m, torch.nn.Conv3d) for m in model.modules()):
        return amp
    if warn:
        log.warning("amp bf16 on the CPU: oneDNN's bf16 3D-convolution weight gradients are unreliable (NaN), "
                    "so this model trains in float32 here (--amp none)")
    return "none"


def check_stored_videos(rows: list[dict], contract, split: str) -> None:
    """One warning per split when the stored videos are shorter than a clip or smaller than the crop: the
    loader still serves them (frames repeat, frames are upscaled), but the model then sees other data
    than its contract says."""
    if not rows:
        return
    span = (contract.num_frames - 1) * contract.frame_stride + 1 if contract.sampling == "dense" \
        else contract.num_frames
    short = [r for r in rows if int(r.get("num_frames") or 0) < span]
    if short:
        what = f"{contract.num_frames} frames {contract.frame_stride} apart (a {span}-frame window)" \
            if contract.sampling == "dense" else f"{span} frames"
        log.warning("%s split: %d of %d videos have fewer stored frames than a clip of %s (e.g. %s: %s): their clips "
                    "repeat frames", split, len(short), len(rows), what, short[0].get("id"), short[0].get("num_frames"))
    small = [r for r in rows if r.get("size") and min(r["size"]) < contract.crop_size]
    if small:
        log.warning("%s split: %d of %d videos are stored smaller than the model's %d px crop (e.g. %s: %sx%s): their "
                    "frames are upscaled", split, len(small), len(rows), contract.crop_size, small[0].get("id"),
                    *small[0]["size"])


class DamageCounter:
    """Per-epoch counts of what the training loader could not read: distinct damaged videos met and samples
    served by a replacement, gathered from every rank (each rank's loader logs only its own), and the run's totals
    over the epochs counted so far (each video once, whichever ranks and epochs met it)."""

    def __init__(self, loader):
        self.log = getattr(loader, "damage_log", None)
        dataset = getattr(loader, "dataset", None)
        self.rows = getattr(dataset, "rows", None) or []
        self.seen = 0
        self.damaged: set[int] = set()  # every rank's damaged videos (row indices) met in this run so far
        self.replaced = 0

    def epoch_row(self) -> dict:
        """The epoch's metrics; a collective under DDP (every rank calls it at the same epoch end)."""
        if self.log is None:
            return {}
        entries = self.log.entries()
        new, self.seen = entries[self.seen:], len(entries)
        damaged = sorted({v for e in new for v in e["damaged"]})
        replaced = len(new)
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (damaged, replaced))
            damaged = sorted({v for d, _ in gathered for v in d})
            replaced = sum(r for _, r in gathered)
        self.damaged.update(damaged)
        self.replaced += replaced
        row = {"damaged_videos": len(damaged), "replaced_samples": replaced}
        if damaged:
            row["damaged_ids"] = self.names(damaged)
        return row

    def names(self, videos=None) -> list[str]:
        """The ids of `videos` (row indices; default: every damaged video of the run so far), in index order."""
        videos = sorted(self.damaged if videos is None else videos)
        return [str(self.rows[v].get("id", v)) if v < len(self.rows) else str(v) for v in videos]


class RunFolderError(ValueError):
    """The run folder cannot be used (in use by another training, not writable, too little space): one line."""


def claim_run_folder(run_dir: str, d) -> contextlib.ExitStack:
    """Before anything is built: the run folder can be written and is locked against a second training
    (`RUN_LOCK`, holding the holder's pid, host and start time; released when the returned stack closes, and by the
    system if the process dies). Only rank 0 writes into the run folder, so only it locks; every rank raises the
    same RunFolderError when it cannot (DDP: no rank is left waiting for the others). A folder made here is removed
    again when the stack closes before anything else was written in it."""
    stack, error = contextlib.ExitStack(), ""
    if d.main:
        try:
            check_writable(run_dir, "--output")
            if not os.path.isdir(run_dir):
                os.makedirs(run_dir)
                stack.callback(_remove_if_only_lock, run_dir)
            stack.enter_context(exclusive(os.path.join(run_dir, RUN_LOCK), run_dir, BUSY, on_stale=_stale))
        except (Busy, OutputError, OSError) as e:
            stack.close()
            error = str(e) if not isinstance(e, OSError) else f"cannot use the run folder {run_dir}: {e}"
    _raise_on_every_rank(error, d)
    return stack


def check_checkpoint_space(run_dir: str, need: int, d) -> None:
    """Once the model and optimizer are built: room in the run folder for one checkpoint of `need` bytes."""
    error = ""
    if d.main:
        try:
            check_free_space(run_dir, need, "one checkpoint (the model's, its optimizer's and EMA's tensors)",
                             "--output")
        except OutputError as e:
            error = str(e)
    _raise_on_every_rank(error, d)


def _raise_on_every_rank(error: str, d) -> None:
    if d.world > 1:
        said = [error]
        dist.broadcast_object_list(said, src=0)
        error = said[0]
    if error:
        raise RunFolderError(error)


def _remove_if_only_lock(run_dir: str) -> None:
    """A run refused before it wrote anything leaves no folder behind (the lock's record is cleared by then)."""
    with contextlib.suppress(OSError):
        if os.listdir(run_dir) == [RUN_LOCK] and os.path.getsize(os.path.join(run_dir, RUN_LOCK)) == 0:
            os.remove(os.path.join(run_dir, RUN_LOCK))
            os.rmdir(run_dir)


def refuse_pretrained_in_run(pretrained: str, run_dir: str, written: tuple[str, ...]) -> None:
    """A --pretrained checkpoint that is one of the files this run writes (its own last.pt, best.pt, ...) would be
    replaced by the run's first checkpoint: refused in one line before anything is built."""
    if not pretrained or not os.path.isfile(pretrained):
        return
    name = os.path.basename(pretrained)
    if same_path(os.path.dirname(os.path.abspath(pretrained)), run_dir) and \
            any(fnmatch.fnmatchcase(name, pattern) for pattern in written):
        raise RunFolderError(f"--pretrained {pretrained} is a checkpoint of the run folder {run_dir}, which this "
                             f"training writes (it would be replaced): copy it elsewhere, or pass --name NEW")


def _stale(holder: str) -> None:
    log.warning("taking over the run folder's lock from a training that ended without releasing it (%s)", holder)


def checkpoint_bytes(model: torch.nn.Module, optimizer: str, momentum: float, ema: bool) -> int:
    """About the size of one checkpoint: the model's tensors, an EMA copy, and the optimizer's state per
    trainable parameter (AdamW and LAMB: two moments; SGD: a momentum buffer when momentum is on)."""
    tensors = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)  # optimizer state is float32
    slots = 2 if optimizer in ("adamw", "lamb") else (1 if momentum else 0)
    return tensors * (2 if ema else 1) + trainable * slots
