"""ShardPlan (pipelines/shard_plan.py): node-disjoint shards, every video once per epoch, a proper shuffle inside a
window of shards, the same batches on every rank, and a pure function of (seed, epoch, rank, layout)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pipelines.sampling import EpochPlan
from pipelines.shard_plan import MIN_CLASS_MIX, ShardPlan, class_mix, local_world_size, plan_for


def _plans(num_videos, per_shard, world, local, batch=2, seed=3, window=2, repeats=1):
    shard_of = tuple(v // per_shard for v in range(num_videos))
    return [ShardPlan(num_videos, batch, True, rank=r, world_size=world, seed=seed, repeats=repeats,
                      shard_of=shard_of, local_world_size=local, window=window) for r in range(world)]


def test_every_video_once_per_epoch_on_same_batch_counts_and_nodes_read_disjoint_shards():
    plans = _plans(96, 8, world=4, local=2)  # 12 shards, 2 nodes of 2 ranks
    for epoch in range(3):
        seen = [p.order(epoch) for p in plans]
        assert {len(s) for s in seen} == {24} and {p.num_batches for p in plans} == {12}
        assert sorted(np.concatenate(seen).tolist()) == list(range(96))
        node_shards = [{v // 8 for r in (0, 1) for v in seen[2 * n + r]} for n in (0, 1)]
        assert not node_shards[0] & node_shards[1] and len(node_shards[0]) == len(node_shards[1]) == 6
        assert node_shards[0] == plans[0].node_shards(epoch)
    assert not np.array_equal(plans[0].order(0), plans[0].order(1))  # a new shuffle every epoch
    assert plans[0].node_shards(0) == plans[0].node_shards(1)  # on the same shards: a node's cache serves it again


def test_uneven_split_repeats_and_drops_as_epoch_plan_does():
    plans = _plans(50, 7, world=4, local=2, batch=4)  # 8 shards (the last has 1 video)
    ref = EpochPlan(50, 4, True, rank=0, world_size=4)
    counts = Counter(np.concatenate([p.order(0) for p in plans]).tolist())
    assert set(counts) == set(range(50))
    assert sum(c - 1 for c in counts.values()) == plans[0].repeated == ref.per_rank * 4 - 50 == 2
    assert [p.num_batches for p in plans] == [ref.num_batches] * 4 and plans[0].dropped == 13 % 4
    # each node reads its half of the shards plus at most the one it shares with the other node and a wrapped one
    for p in plans[::2]:
        assert len(p.node_shards(0)) <= 8 / 2 + 2


def test_pure_function_and_items_match_order():
    a, b = _plans(64, 8, world=2, local=1, repeats=2)[1], _plans(64, 8, world=2, local=1, repeats=2)[1]
    assert np.array_equal(a.order(5), b.order(5))
    items = a.items(5)
    assert items[:4] == [(int(a.order(5)[0]), 0), (int(a.order(5)[0]), 1), (int(a.order(5)[1]), 0),
                         (int(a.order(5)[1]), 1)]
    # mid-epoch resume: the item at a position depends on nothing but the plan and the epoch
    assert [a.item(p, 5) for p in range(10, a.num_positions)] == items[10:]


def test_shuffle_stays_inside_its_window_and_mixes_the_window():
    p = _plans(128, 8, world=1, local=1, batch=4, window=4)[0]  # 16 shards, windows of 4 shards = 32 videos
    order = p.order(0)
    windows = p.windows(0)
    assert [w[0] for w in windows] == [0, 32, 64, 96] and all(len(w[1]) == 4 for w in windows)
    for start, shards in windows:
        block = order[start:start + 32]
        assert {int(v) // 8 for v in block} == set(shards)
        assert len({int(v) // 8 for v in block[:8]}) > 1  # the first 8 reads are not one shard's videos
    assert sorted(order.tolist()) == list(range(128)) and not np.array_equal(order, np.sort(order))


def test_windows_cover_each_rank_of_a_node_alike():
    plans = _plans(96, 8, world=4, local=2, window=3)
    for p in plans:
        order = p.order(2)
        windows = p.windows(2)
        for (start, shards), nxt in zip(windows, [*windows[1:], (len(order), None)]):
            assert {int(v) // 8 for v in order[start:nxt[0]]} <= set(shards)
    assert [s for _, s in plans[0].windows(2)] == [s for _, s in plans[1].windows(2)]


def test_local_world_size_from_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_world_size(4) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="LOCAL_WORLD_SIZE 3 does not divide the world size 4"):
        local_world_size(4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert local_world_size(4) == 4


def test_class_mix_tells_class_sorted_shards_from_mixed_ones(caplog):
    """A list sorted by class makes one-class shards, which a window of 2 shards cannot mix: the loader warns."""
    plan = _plans(400, 20, 2, 1, batch=4, window=2)[0]
    sorted_labels = [v // 20 for v in range(400)]  # 20 classes, one per shard
    mixed_labels = list(np.random.default_rng(0).integers(0, 20, 400))
    assert class_mix(plan, sorted_labels) < MIN_CLASS_MIX < 0.9 < class_mix(plan, mixed_labels)

    class Streamed:
        gate = type("Gate", (), {"url": "s3://b/store"})()
        rows = [{"label": c, "shard": f"s{v // 20:02d}.arrow"} for v, c in enumerate(sorted_labels)]

        def __len__(self):
            return len(self.rows)

    with caplog.at_level("WARNING", logger="pipelines"):
        plan_for(Streamed(), 4, True, 1, 0, 2, 3, 1)
    assert any("look sorted by class" in r.getMessage() and "VIDKIT_SHUFFLE_WINDOW" in r.getMessage()
               for r in caplog.records)
    Streamed.rows = [{"label": int(c), "shard": r["shard"]} for c, r in zip(mixed_labels, Streamed.rows)]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipelines"):
        plan_for(Streamed(), 4, True, 1, 0, 2, 3, 1)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
