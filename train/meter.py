"""The data-starvation meter: each step split into waiting for data and computing.

Waiting is the time from the end of one step to the arrival of the next batch; computing is the rest.
On a GPU the step ends at a device synchronise, so queued kernels are not mistaken for waiting.
"""
from __future__ import annotations

import time

import torch


class StepMeter:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.wait = self.compute = 0.0
        self.steps = self.clips = 0
        self._mark = self._ready = 0.0

    def start(self) -> None:
        self._mark = time.perf_counter()

    def data_ready(self) -> None:
        self._ready = time.perf_counter()
        self.wait += self._ready - self._mark

    def step_done(self, clips: int) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self._mark = time.perf_counter()
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
