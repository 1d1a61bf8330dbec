"""The data-starvation meter's bookkeeping, with a fake clock and a recorded synchronise."""
from __future__ import annotations

import torch

from train.meter import StepMeter


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_wait_and_compute_are_split_at_data_arrival_and_step_end():
    clock, synced = FakeClock(), []
    m = StepMeter(torch.device("cpu"), clock=clock, sync=lambda: synced.append(clock.now))
    m.start()
    for wait, compute in ((0.5, 1.5), (0.0, 2.0), (1.0, 1.0)):
        clock.now += wait
        m.data_ready()
        clock.now += compute
        m.step_done(clips=4)
    assert m.steps == 3 and m.clips == 12
    assert m.wait == 1.5 and m.compute == 4.5
    assert abs(m.wait_pct() - 25.0) < 1e-9 and abs(m.clips_per_s() - 2.0) < 1e-9
    assert synced == [0.5, 2.0, 2.0, 4.0, 5.0, 6.0]  # at both ends of every step's compute


def test_cpu_meter_does_not_synchronise_and_cuda_waits_on_the_current_stream_only(monkeypatch):
    assert StepMeter(torch.device("cpu")).sync is None
    calls = []

    class Stream:  # a stand-in for the current CUDA stream: what the meter waits on is what it records
        def synchronize(self):
            calls.append("stream")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a, **k: Stream())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append("device"))
    clock = FakeClock()
    m = StepMeter(torch.device("cuda", 0), clock=clock)
    m.start()
    m.data_ready()
    m.step_done(clips=1)
    assert calls == ["stream", "stream"]  # the current stream at both ends of the step, never the whole device
