"""Damaged stored videos met by any rank of a DDP run are counted and named where the user looks: the metrics file
(and TensorBoard, from the same row) and the run's last line, each video once, whichever ranks and epochs met it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import damage_video
from pipelines.sampling import EpochPlan
from prep import open_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, SEED = 4, 0


def _trained(videos: int, rank: int, epoch: int) -> set[int]:
    """The videos a rank of a two-process run trains on in an epoch (its full batches)."""
    plan = EpochPlan(videos, BATCH, True, rank=rank, world_size=2, seed=SEED)
    return set(plan.order(epoch)[:plan.num_batches * BATCH].tolist())


def _read(videos: int, rank: int, epoch: int) -> set[int]:
    return set(EpochPlan(videos, BATCH, True, rank=rank, world_size=2, seed=SEED).order(epoch).tolist())


@pytest.mark.slow
def test_the_damaged_videos_of_every_rank_are_counted_and_named_once(data, tmp_path):
    """Old code: the run's last line counted rank 0's loader only: "1 damaged stored videos" naming the video rank 0
    met in epoch 2, not the one only rank 1 met; the metrics rows counted both but named neither."""
    store = tmp_path / "data"
    shutil.copytree(data, store)
    rows = open_dataset(str(store), "train").rows
    n = len(rows)
    # one video only rank 1 ever reads, and one rank 1 trains on in epoch 1 and rank 0 in epoch 2
    only_rank1 = min((_trained(n, 1, 0) & _trained(n, 1, 1)) - _read(n, 0, 0) - _read(n, 0, 1))
    both = min((_trained(n, 1, 0) & _trained(n, 0, 1)) - _read(n, 0, 0))
    for video in (only_rank1, both):
        damage_video(str(store), video)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train",
           "--model", "tsn_tiny", "--data", str(store), "--output", str(tmp_path), "--name", "run", "--epochs", "2",
           "--batch-size", str(BATCH), "--seed", str(SEED), "--py-workers", "1", "--threads", "1", "--amp", "none",
           "--no-progress", "--eval-every", "0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(rows[v]["id"] for v in (only_rank1, both))
    said = [line for line in proc.stderr.splitlines() if line.startswith("train: ")]
    assert len(said) == 1, proc.stderr[-3000:]
    assert said[0].startswith("train: 2 damaged stored videos were replaced by readable ones in ")
    assert all(name in said[0] for name in names)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["damaged_videos"], sorted(r["damaged_ids"])) for r in metrics] == [(2, names), (2, names)]
    # each video is trained on once in each epoch, by one rank: 4 samples served by a replacement in all
    assert [r["replaced_samples"] for r in metrics] == [2, 2] and "in 4 samples" in said[0]
    assert _tensorboard(tmp_path / "run" / "tb") == ([(1, 2.0), (2, 2.0)], [(1, names), (2, names)])


def _tensorboard(folder) -> tuple[list, list]:
    """(epoch, damaged video count) and (epoch, damaged ids) as TensorBoard shows them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    counts = [(e.step, e.value) for e in events.Scalars("epoch/damaged_videos")]
    texts = [(e.step, sorted(e.tensor_proto.string_val[0].decode().split(", ")))
             for e in events.Tensors("epoch/damaged_ids/text_summary")]
    return counts, texts
