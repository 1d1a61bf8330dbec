"""pipelines.sampling: frame indices per scheme, and which (video, view) items each rank reads per epoch."""
import numpy as np
import pytest

from pipelines.sampling import (ClipSpec, EpochPlan, clip_indices, dense_indices, sample_rng, tsn_indices,
                                view_of)


def test_tsn_training_takes_one_frame_inside_each_segment():
    for epoch in range(20):
        idx = tsn_indices(40, 8, sample_rng(0, epoch, 3))
        assert idx.dtype == np.int64 and idx.shape == (8,)
        segment = np.arange(8) * 5
        assert np.all((idx >= segment) & (idx < segment + 5))


def test_tsn_training_is_random_across_epochs_and_repeatable():
    draws = {tuple(tsn_indices(40, 8, sample_rng(0, e, 3))) for e in range(10)}
    assert len(draws) > 5
    assert np.array_equal(tsn_indices(40, 8, sample_rng(1, 2, 3)), tsn_indices(40, 8, sample_rng(1, 2, 3)))


def test_tsn_evaluation_takes_segment_centres():
    assert tsn_indices(40, 8).tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    # two clips: the quarter points of each segment
    assert tsn_indices(40, 4, clip=0, clips=2).tolist() == [2, 12, 22, 32]
    assert tsn_indices(40, 4, clip=1, clips=2).tolist() == [7, 17, 27, 37]


def test_tsn_short_video_repeats_frames_in_order():
    idx = tsn_indices(3, 8)
    assert idx.min() >= 0 and idx.max() <= 2
    assert np.all(np.diff(idx) >= 0) and set(idx.tolist()) == {0, 1, 2}
    assert tsn_indices(3, 8, sample_rng(0, 0, 0)).max() <= 2


def test_dense_training_window_from_random_start():
    starts = set()
    for epoch in range(30):
        idx = dense_indices(50, 8, 2, sample_rng(0, epoch, 0))
        assert np.array_equal(np.diff(idx), np.full(7, 2))
        assert 0 <= idx[0] and idx[-1] <= 49
        starts.add(int(idx[0]))
    assert len(starts) > 10


def test_dense_evaluation_windows_are_centred_and_evenly_spaced():
    # 15-frame window in a 35-frame video: 21 possible starts
    assert dense_indices(35, 8, 2)[0] == 10
    starts = [int(dense_indices(35, 8, 2, clip=c, clips=3)[0]) for c in range(3)]
    assert starts == [3, 10, 17]
    for c in range(3):
        assert dense_indices(35, 8, 2, clip=c, clips=3)[-1] <= 34


def test_dense_short_video_clamps_to_last_frame():
    idx = dense_indices(5, 8, 2)
    assert idx.tolist() == [0, 2, 4, 4, 4, 4, 4, 4]
    assert dense_indices(5, 8, 2, sample_rng(0, 0, 0)).tolist() == [0, 2, 4, 4, 4, 4, 4, 4]


def test_clip_indices_dispatches_on_contract_fields():
    tsn, dense = ClipSpec(8), ClipSpec(8, "dense", 4)
    assert np.array_equal(clip_indices(40, tsn, False), tsn_indices(40, 8))
    assert np.array_equal(clip_indices(100, dense, False, clip=1, clips=2), dense_indices(100, 8, 4, clip=1, clips=2))
    rng_a, rng_b = sample_rng(5, 1, 7), sample_rng(5, 1, 7)
    assert np.array_equal(clip_indices(100, dense, True, rng_a), dense_indices(100, 8, 4, rng_b))
    with pytest.raises(ValueError, match="rng"):
        clip_indices(40, tsn, True)
    with pytest.raises(ValueError, match="clip 2"):
        clip_indices(40, tsn, False, clip=2, clips=2)
    with pytest.raises(ValueError, match="sampling"):
        ClipSpec(8, "random")


def test_view_numbering():
    assert [view_of(v, 3) for v in range(6)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


# --------------------------------------------------------------------------------------------- epoch plans


def test_training_ranks_read_disjoint_slices_that_cover_the_epoch():
    plans = [EpochPlan(12, 3, True, rank=r, world_size=2, seed=4) for r in range(2)]
    assert [len(p.items(0)) for p in plans] == [6, 6]
    seen = [v for p in plans for v, view in p.items(0)]
    assert sorted(seen) == list(range(12)) and all(view == 0 for p in plans for _, view in p.items(0))


def test_training_pads_by_wrap_around_and_drops_partial_batch():
    plans = [EpochPlan(9, 2, True, rank=r, world_size=2) for r in range(2)]
    assert [p.per_rank for p in plans] == [5, 5]  # 9 padded to 10 by wrap-around
    assert [p.num_batches for p in plans] == [2, 2]  # 5 per rank, batch 2: the fifth is dropped
    orders = np.concatenate([p.order(0) for p in plans])
    assert sorted(set(orders.tolist())) == list(range(9)) and len(orders) == 10


def test_training_reshuffles_per_epoch_deterministically():
    plan = EpochPlan(50, 5, True, seed=1)
    assert plan.items(0) != plan.items(1)
    assert plan.items(3) == EpochPlan(50, 5, True, seed=1).items(3)
    assert plan.items(3) != EpochPlan(50, 5, True, seed=2).items(3)


def test_evaluation_reads_every_view_exactly_once_across_ranks():
    plans = [EpochPlan(7, 4, False, views=6, rank=r, world_size=3) for r in range(3)]
    items = [it for p in plans for it in p.items(0)]
    assert sorted(items) == [(v, w) for v in range(7) for w in range(6)]
    assert [p.num_samples for p in plans] == [14, 14, 14]
    assert [p.num_batches for p in plans] == [4, 4, 4]  # 14 = 4 + 4 + 4 + 2: last batch partial
    assert plans[0].items(0) == plans[0].items(5)  # no shuffling


def test_evaluation_padding_positions_repeat_a_real_item_and_end_at_the_batch():
    plan = EpochPlan(5, 4, False, views=1)
    assert plan.num_batches == 2
    assert [plan.item(p, 0) for p in range(8)] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (0, 0), (0, 0), (0, 0)]
    with pytest.raises(IndexError):
        plan.item(8, 0)


def test_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch"):
        EpochPlan(5, 4, True, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        EpochPlan(5, 1, True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="one view"):
        EpochPlan(5, 1, True, views=3)
