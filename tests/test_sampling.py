"""pipelines.sampling: frame indices per scheme, and which (video, view) items each rank reads per epoch."""
import numpy as np
import pytest

from models.registry import InputContract
from pipelines.sampling import (ClipSpec, EpochPlan, clip_indices, dense_indices, grouped_indices, sample_rng,
                                tsn_indices, view_of)


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


# --------------------------------------------------------------------------------------------- frames_per_group


def _offsets(idx: np.ndarray, groups: int, seg_len: int) -> np.ndarray:
    """(groups, F) offsets of each frame from its segment's first frame."""
    return idx.reshape(groups, -1) - (np.arange(groups) * seg_len)[:, None]


def test_frames_per_group_training_takes_the_same_distinct_offsets_in_every_segment():
    spec = ClipSpec(8, frames_per_group=2)  # IBM's groups 4 x frames_per_group 2
    draws = set()
    for epoch in range(30):
        idx = clip_indices(43, spec, True, sample_rng(0, epoch, 5))
        assert idx.dtype == np.int64 and idx.shape == (8,) and np.all(np.diff(idx) > 0)
        off = _offsets(idx, 4, 43 // 4)  # IBM's integer segments of 10 frames: 40..42 are never read
        assert np.all(off == off[0]) and off[0, 0] != off[0, 1]
        assert np.all((off >= 0) & (off < 10))
        draws.add(tuple(off[0]))
    assert len(draws) > 10  # 45 pairs of offsets: the draws vary
    assert np.array_equal(clip_indices(43, spec, True, sample_rng(1, 2, 3)),
                          grouped_indices(43, 4, 2, sample_rng(1, 2, 3)))


def test_frames_per_group_short_video_draws_from_the_whole_video_with_repeats():
    spec = ClipSpec(12, frames_per_group=3)  # 4 groups of 3: a 10-frame video has segments of 2 < 3
    idx = clip_indices(10, spec, True, sample_rng(0, 0, 0))
    assert idx.shape == (12,) and np.all(np.diff(idx) >= 0) and idx.min() >= 0 and idx.max() <= 9
    assert len(set(idx.tolist())) < 12  # 12 frames out of 10: some repeat


def test_frames_per_group_evaluation_spreads_the_offsets_evenly_per_clip():
    spec = ClipSpec(8, frames_per_group=2)
    # 4 segments of 10 frames (43 // 4), offsets at (j + fraction) * 10 / 2
    assert clip_indices(43, spec, False).tolist() == [2, 7, 12, 17, 22, 27, 32, 37]
    clip0, clip1 = (clip_indices(43, spec, False, clip=c, clips=2) for c in range(2))
    assert _offsets(clip0, 4, 10)[0].tolist() == [1, 6] and _offsets(clip1, 4, 10)[0].tolist() == [3, 8]
    assert np.array_equal(clip0, clip_indices(43, spec, False, clip=0, clips=2))  # deterministic
    # too short for distinct offsets: plain tsn over the 8 frames of the clip
    assert np.array_equal(clip_indices(6, spec, False), tsn_indices(6, 8))


def test_frames_per_group_must_divide_the_clip_and_is_tsn_only():
    assert ClipSpec(8, frames_per_group=2).groups == 4
    with pytest.raises(ValueError, match="must divide the clip's 8 frames"):
        ClipSpec(8, frames_per_group=3)
    with pytest.raises(ValueError, match="use frame_stride"):
        ClipSpec(8, "dense", 2, frames_per_group=2)
    contract = InputContract("NCTHW", num_frames=16, crop_size=32)
    assert ClipSpec.of(contract) == ClipSpec(16) and ClipSpec.of(contract, 4).groups == 4


# --------------------------------------------------------------------------------------------- twice sampling


def _mmaction_twice(total: int, segments: int) -> list[list[int]]:
    """mmaction2's SampleFrames._get_test_clips for clip_len 1 with twice_sample: the segment centres, then the
    segment starts (float offsets, cut to int as its frame_inds are)."""
    avg = total / float(segments)
    base = np.arange(segments) * avg
    return [(base + avg / 2.0).astype(np.int32).tolist(), base.astype(np.int32).tolist()]


@pytest.mark.parametrize("total,segments", [(40, 4), (37, 8), (100, 16), (9, 8)])
def test_twice_sampling_is_mmactions_centres_then_starts(total, segments):
    spec = ClipSpec(segments)
    views = [clip_indices(total, spec, False, clip=v, clips=1, twice=True).tolist() for v in range(2)]
    assert views == _mmaction_twice(total, segments)
    assert views[0] == clip_indices(total, spec, False).tolist()  # the first set is the usual single view


def test_twice_sampling_with_clips_adds_as_many_start_views():
    views = [clip_indices(80, ClipSpec(4), False, clip=v, clips=2, twice=True).tolist() for v in range(4)]
    # fractions of each 20-frame segment: (c + .5) / 2 for the usual clips, then c / 2
    assert views == [[5, 25, 45, 65], [15, 35, 55, 75], [0, 20, 40, 60], [10, 30, 50, 70]]
    with pytest.raises(ValueError, match="clip 4 outside 0..3"):
        clip_indices(80, ClipSpec(4), False, clip=4, clips=2, twice=True)
    with pytest.raises(ValueError, match="twice sampling .* tsn"):
        clip_indices(80, ClipSpec(4, "dense", 2), False, clip=1, clips=1, twice=True)
    grouped = clip_indices(40, ClipSpec(8, frames_per_group=2), False, clip=1, clips=1, twice=True)
    assert grouped.tolist() == [0, 5, 10, 15, 20, 25, 30, 35]  # frames_per_group: offsets from the start too


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


def test_repeats_read_each_video_r_times_in_a_row_in_as_many_batches():
    plain, rep = EpochPlan(10, 2, True, seed=3), EpochPlan(10, 2, True, seed=3, repeats=3)
    assert (rep.num_batches, rep.clips_per_batch, rep.num_samples) == (plain.num_batches, 6, 3 * plain.num_samples)
    items = rep.items(4)
    assert [v for v, _ in items[::3]] == [v for v, _ in plain.items(4)]  # the same videos, the same order
    assert items == [(v, c) for v, _ in plain.items(4) for c in range(3)]  # copies 0..2 next to each other
    with pytest.raises(IndexError):
        rep.item(rep.num_positions, 4)


def test_repeats_shard_videos_over_ranks_as_without():
    plans = [EpochPlan(12, 3, True, rank=r, world_size=2, seed=4, repeats=2) for r in range(2)]
    for r, plan in enumerate(plans):
        plain = EpochPlan(12, 3, True, rank=r, world_size=2, seed=4)
        assert [v for v, c in plan.items(1) if c == 0] == [v for v, _ in plain.items(1)]
    videos = [v for p in plans for v, c in p.items(1) if c == 1]
    assert sorted(videos) == list(range(12))


def test_repeats_are_for_training():
    with pytest.raises(ValueError, match="repeated augmentation is for training"):
        EpochPlan(5, 1, False, repeats=2)
    with pytest.raises(ValueError, match="repeats"):
        EpochPlan(5, 1, True, repeats=0)
