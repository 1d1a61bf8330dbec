"""Training checkpoints record the process layout the epochs were dealt for (world size, ranks per node, shuffle
window: pipelines/shard_plan.plan_layout); a resume on another layout says so in one line, with what it does to the
resumed epoch (train/layout.py); the same layout says nothing; a checkpoint without the record says it is unknown."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines.sampling import EpochPlan
from pipelines.shard_plan import WINDOW_ENV, ShardPlan, resumed_epoch_reads
from s3fixture import prepped_on_server
from train import checkpoint as ckpt
from train.config import TrainConfig, apply
from train.engine import Trainer
from train.layout import check_layout
from train.setup import Dist

CPU = Dist(0, 1, 0, torch.device("cpu"))
VIDEOS, PER_SHARD, BATCH, SEED, EPOCH = 96, 8, 2, 3, 1


def _shard_plans(world: int, per_node: int, window: int = 2) -> list[ShardPlan]:
    shard_of = tuple(v // PER_SHARD for v in range(VIDEOS))
    return [ShardPlan(VIDEOS, BATCH, True, rank=r, world_size=world, seed=SEED, shard_of=shard_of,
                      local_world_size=per_node, window=window) for r in range(world)]


def _local_plans(world: int) -> list[EpochPlan]:
    return [EpochPlan(VIDEOS, BATCH, True, rank=r, world_size=world, seed=SEED) for r in range(world)]


def _trained(old: list, new: list, batches: int) -> tuple[int, int]:
    """What the loops do, rank by rank: the old ranks trained on their first `batches` batches before the checkpoint;
    each new rank skips as many batches of its own plan and trains on the rest (tests/test_shard_plan.py shows
    `order` is what a rank's loader reads)."""
    before = [p.order(EPOCH)[:batches * BATCH] for p in old]
    after = [p.order(EPOCH)[batches * BATCH:p.num_batches * BATCH] for p in new]
    whole = [p.order(EPOCH)[:p.num_batches * BATCH] for p in old]
    counts = np.bincount(np.concatenate(before + after), minlength=VIDEOS)
    base = np.bincount(np.concatenate(whole), minlength=VIDEOS)
    return int(((counts >= 2) & (counts > base)).sum()), int(((counts == 0) & (base > 0)).sum())


def _layout(plan) -> dict:
    if isinstance(plan, ShardPlan):
        return {"world_size": plan.world_size, "ranks_per_node": plan.local_world_size, "shuffle_window": plan.window}
    return {"world_size": plan.world_size, "ranks_per_node": plan.world_size, "shuffle_window": None}


@pytest.mark.parametrize("old,new", [((4, 2), (4, 4)), ((4, 2), (2, 1)), ((2, 2), (4, 2))],
                         ids=["local-world-size", "fewer-nodes", "more-nodes"])
def test_the_resumed_epoch_counts_what_a_streamed_run_trains_twice_or_leaves_out(old, new):
    olds, news = _shard_plans(*old), _shard_plans(*new)
    for batches in (0, 5, 11):
        got = resumed_epoch_reads(_layout(olds[0]), news[0], EPOCH, batches)
        assert got == _trained(olds, news, batches), batches
    twice, skipped = resumed_epoch_reads(_layout(olds[0]), news[0], EPOCH, 5)
    assert twice + skipped > 0  # the layouts deal the nodes other shards: the mid-epoch resume is not exact
    assert resumed_epoch_reads(_layout(olds[0]), olds[1], EPOCH, 5) == (0, 0)  # the same layout: exact


def test_the_resumed_epoch_counts_for_a_local_store_and_another_world_size():
    olds, news = _local_plans(4), _local_plans(2)
    assert resumed_epoch_reads(_layout(olds[0]), news[0], EPOCH, 7) == _trained(olds, news, 7) != (0, 0)
    assert resumed_epoch_reads(_layout(news[0]), news[1], EPOCH, 7) == (0, 0)


def _check(saved, plan, batches, caplog, world=None):
    loader = SimpleNamespace(plan=plan)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train"):
        line = check_layout(saved, loader, world or plan.world_size, EPOCH, batches, 1)
    said = [r for r in caplog.records if r.name == "train"]
    assert len(said) == (line is not None) and (not said or said[0].getMessage() == line)
    return line, said[0].levelno if said else None


def test_one_line_on_another_layout_and_none_on_the_same(caplog, monkeypatch):
    two_nodes, one_node = _shard_plans(4, 2)[0], _shard_plans(4, 4)[0]
    assert _check(_layout(two_nodes), _shard_plans(4, 2)[3], 5, caplog) == (None, None)
    line, level = _check(_layout(two_nodes), one_node, 5, caplog)
    twice, skipped = _trained(_shard_plans(4, 2), _shard_plans(4, 4), 5)
    assert level == logging.WARNING
    assert "written on 2 node(s) x 2 rank(s), shuffle window 2 shards, this run is 1 node(s) x 4 rank(s)" in line
    assert f"the rest of epoch {EPOCH + 1} (after batch 5 of each rank)" in line
    assert f"{twice} of its {VIDEOS} videos are trained on twice and {skipped} not at all" in line
    line, level = _check(_layout(two_nodes), one_node, 0, caplog)  # at an epoch's start: nothing twice
    assert level == logging.WARNING and "no video trained on twice or left out" in line and "cache" in line
    # another window is another layout too, with the same shards on each node
    assert "shuffle window 4 shards" in _check(_layout(two_nodes), _shard_plans(4, 2, window=4)[0], 5, caplog)[0]
    assert "cache" not in _check(_layout(two_nodes), _shard_plans(4, 2, window=4)[0], 0, caplog)[0]
    # a local store deals its epochs by the world size alone: another LOCAL_WORLD_SIZE is the same layout
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    local = _local_plans(2)[0]
    assert _check({"world_size": 2, "ranks_per_node": 2, "shuffle_window": None}, local, 5, caplog) == (None, None)
    line, _ = _check({"world_size": 4, "ranks_per_node": 4, "shuffle_window": None}, local, 5, caplog)
    assert "written on 4 process(es), this run is 2 process(es)" in line
    assert f"{_trained(_local_plans(4), _local_plans(2), 5)[0]} of its {VIDEOS} videos are trained on twice" in line


def test_a_checkpoint_without_the_layout_says_it_is_unknown_once(caplog):
    plan = _shard_plans(4, 2)[0]
    line, level = _check(None, plan, 5, caplog)
    assert level == logging.WARNING and "does not record the process layout" in line
    assert "2 node(s) x 2 rank(s)" in line and "some of its videos are trained on twice" in line
    line, level = _check(None, plan, 0, caplog)  # at an epoch's start nothing can be read twice: said, not warned
    assert level == logging.INFO and "does not record the process layout" in line
    # a saved layout this split cannot be dealt for (no node count for a streamed split): said plainly, no crash
    line, _ = _check({"world_size": 8, "ranks_per_node": None, "shuffle_window": None}, plan, 5, caplog)
    assert "some of its samples may be trained on twice" in line


def _config(data, output, **overrides) -> TrainConfig:
    base = dict(model="tsn_tiny", batch_size=4, py_workers=1, threads=1, amp="none", progress=False, epochs=1,
                eval_every=0, seed=0, name="run", optimizer="adamw", lr=0.002)
    return apply(TrainConfig(), {**base, "data": str(data), "output": str(output), **overrides}, "test")


def _resume_lines(data, tmp_path, caplog, saved: dict | None = None, batches: int = 2, **config) -> list[str]:
    """The lines about the layout a resume from the run's last.pt says; with `saved`, the counts of the resumed
    epoch it must name are checked against `resumed_epoch_reads` of that layout and the resumed run's plan."""
    trainer = Trainer(_config(data, tmp_path, **config), CPU)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="train"):
            trainer.resume()
        assert trainer.progress.batches == batches
        said = [r.getMessage() for r in caplog.records if "process layout" in r.getMessage()]
        if saved is not None:
            twice, skipped = resumed_epoch_reads(saved, trainer.train_loader.plan, 0, batches)
            assert twice + skipped > 0  # the test's layouts make a difference to the resumed epoch
            assert len(said) == 1 and f"{twice} of its {len(trainer.train_loader.dataset)} videos are trained on " \
                f"twice and {skipped} not at all" in said[0], said
        return said
    finally:
        trainer.train_loader.close()
        trainer.writer.close()


def test_a_run_records_its_layout_and_resumes_on_it_silently(data, tmp_path, caplog, monkeypatch):
    """Old code: no layout in the checkpoint, and no line when it resumed on another."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    trainer = Trainer(_config(data, tmp_path, max_steps=2), CPU)
    trainer.fit()  # stops after 2 of the epoch's 7 steps: a mid-epoch checkpoint
    trainer.train_loader.close()
    last = str(tmp_path / "run" / ckpt.LAST)
    state = ckpt.load(last)
    assert state["layout"] == {"world_size": 1, "ranks_per_node": 1, "shuffle_window": None}
    assert _resume_lines(data, tmp_path, caplog) == []
    # as if it had been written by two processes, then by a version before the record
    ckpt.save_atomic(dict(state, layout={"world_size": 2, "ranks_per_node": 2, "shuffle_window": None}), last)
    said = _resume_lines(data, tmp_path, caplog, saved={"world_size": 2, "ranks_per_node": 2, "shuffle_window": None})
    assert "written on 2 process(es), this run is 1 process(es)" in said[0]
    assert "the rest of epoch 1 (after batch 2 of each rank)" in said[0]
    ckpt.save_atomic({k: v for k, v in state.items() if k != "layout"}, last)
    said = _resume_lines(data, tmp_path, caplog)
    assert len(said) == 1 and "does not record the process layout" in said[0], said


@pytest.fixture(scope="module")
def streamed(s3):
    """20 synthetic videos on the S3 server (15 for training), in shards of about two videos."""
    return prepped_on_server(s3, "layout", ["--videos", "20", "--frames", "8", "--size", "32", "--workers", "1",
                                            "--no-progress", "--shard-size", "12K"])


def test_a_streamed_run_resumed_with_another_shuffle_window_says_what_its_epoch_trains(s3_env, streamed, tmp_path,
                                                                                      caplog, monkeypatch):
    """The shuffle window is part of a streamed split's layout (VIDKIT_SHUFFLE_WINDOW): one process can change it."""
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv(WINDOW_ENV, "2")
    trainer = Trainer(_config(streamed, tmp_path, max_steps=1, batch_size=2), CPU)
    trainer.fit()
    trainer.train_loader.close()
    saved = ckpt.load(str(tmp_path / "run" / ckpt.LAST))["layout"]
    assert saved == {"world_size": 1, "ranks_per_node": 1, "shuffle_window": 2}
    assert _resume_lines(streamed, tmp_path, caplog, batches=1, batch_size=2) == []
    monkeypatch.setenv(WINDOW_ENV, "4")
    said = _resume_lines(streamed, tmp_path, caplog, saved=saved, batches=1, batch_size=2)
    assert "shuffle window 2 shards, this run is 1 node(s) x 1 rank(s), shuffle window 4 shards" in said[0]
