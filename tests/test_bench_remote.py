"""bench.remote's prefetch mode runs end to end on a tiny store (its numbers are a benchmark's, not checked here)."""
from __future__ import annotations

import os

from bench import remote_epochs


def test_prefetch_mode_downloads_every_shard_for_each_setting_and_reports_the_ratio():
    before = dict(os.environ)
    rates = remote_epochs.prefetch_rates(20, 8, 32, "12K", 0.0, parallels=(1, 2), rounds=1)
    assert set(rates) == {1, 2} and all(len(r) == 1 and r[0] > 0 for r in rates.values())
    assert dict(os.environ) == before  # the server's and proxy's settings do not outlive the bench
    line = remote_epochs.prefetch_report({1: [10.0, 12.0, 11.0], 2: [22.0, 20.0, 21.0]}, 0.02)
    assert line == "prefetch at 20 ms: 1 at once 11.0 shards/s (1.00x 1); 2 at once 21.0 shards/s (1.91x 1)"
