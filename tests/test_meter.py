"""The data-starvation meter's bookkeeping, with a fake clock and a recorded synchronise."""
from __future__ import annotations

import inspect

import torch

from train import meter as meter_module
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


def test_cpu_meter_does_not_synchronise_and_cuda_waits_on_the_current_stream_only():
    assert StepMeter(torch.device("cpu")).sync is None
    assert StepMeter(torch.device("cuda", 0)).sync is meter_module._stream_sync
    source = inspect.getsource(meter_module._stream_sync)
    assert "current_stream().synchronize()" in source and "torch.cuda.synchronize()" not in source
