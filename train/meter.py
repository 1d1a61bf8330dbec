"""The data-starvation meter: each step split into waiting for data and computing.

Waiting is the time from the end of one step to the arrival of the next batch; computing is the rest.
On a GPU both ends of the compute part wait for the training stream only (`current_stream().synchronize()`),
so queued kernels are not mistaken for waiting; a device-wide `torch.cuda.synchronize()` would also wait for
DALI's own streams prefetching the next batches, and book that data work as compute.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


def _stream_sync() -> None:
    torch.cuda.current_stream().synchronize()


class StepMeter:
    def __init__(self, device: torch.device, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None):
        self.sync = sync if sync is not None else (_stream_sync if device.type == "cuda" else None)
        self.clock = clock
        self.wait = self.compute = 0.0
        self.steps = self.clips = 0
        self._mark = self._ready = 0.0

    def start(self) -> None:
        self._mark = self.clock()

    def data_ready(self) -> None:
        if self.sync:
            self.sync()
        self._ready = self.clock()
        self.wait += self._ready - self._mark

    def step_done(self, clips: int) -> None:
        if self.sync:
            self.sync()
        self._mark = self.clock()
        self.compute += self._mark - self._ready
        self.steps += 1
        self.clips += clips

    def wait_pct(self) -> float:
        total = self.wait + self.compute
        return 100.0 * self.wait / total if total > 0 else 0.0

    def clips_per_s(self) -> float:
        total = self.wait + self.compute
        return self.clips / total if total > 0 else 0.0

    def postfix(self) -> str:
        return f"{self.clips_per_s():.1f} clips/s, data wait {self.wait_pct():.1f}%"

    def summary(self) -> dict:
        return {"steps": self.steps, "clips": self.clips, "clips_per_s": round(self.clips_per_s(), 2),
                "data_wait_s": round(self.wait, 3), "compute_s": round(self.compute, 3),
                "data_wait_pct": round(self.wait_pct(), 2)}
