"""What keeps a run from failing silently: stop signals, the precision a device can train in, and data that
cannot be served as the model asks. Each problem is one line: a warning, or a `RunStopped` with an exit code."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

import torch
import torch.distributed as dist

log = logging.getLogger("train")


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
    served by a replacement, summed over ranks."""

    def __init__(self, loader):
        self.log = getattr(loader, "damage_log", None)
        self.seen = 0

    def epoch_row(self) -> dict:
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
        return {"damaged_videos": len(damaged), "replaced_samples": replaced}
