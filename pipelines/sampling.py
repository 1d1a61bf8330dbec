"""Which videos each rank reads in an epoch, and which frames of a video make a clip. Plain numpy.

Everything here is a pure function of its arguments (seed, epoch, rank, index...), so DALI's parallel
external source can call it from any worker process, in any order, and get the same answer.

Frame sampling (`clip_indices`):
- "tsn": the video is cut into `num_frames` equal segments and one frame is taken per segment: a random
  one in training, in evaluation the frame at fraction (clip + 0.5) / clips of each segment (the centre for
  one clip). Videos shorter than `num_frames` repeat frames.
- "tsn" with `frames_per_group` F > 1 (IBM action-recognition-pytorch's uniform sampling): num_frames / F
  groups (segments of n // groups frames, IBM's integer length), F frames in each, num_frames in all. Training
  follows IBM's `_sample_indices`: F distinct random offsets inside a segment, the same F in every segment;
  a video with fewer than F frames per segment (so fewer than num_frames) takes num_frames random frames of
  the whole video instead, with repeats, sorted. Evaluation keeps num_frames frames: F offsets
  evenly spread over a segment (offset j at (j + fraction) / F of it), the same in every segment, the short
  video case as plain "tsn" over num_frames segments. (IBM's test.py, with its default fixed offsets, takes only
  the `groups` segment centres whatever F: a different clip length than the model trained on, which the input
  contract here does not allow.)
- "twice" evaluation (mmaction's SampleFrames(twice_sample=True), TSM's test protocol; "tsn" only): `clips`
  more views whose fraction is clip / clips, the segments' starts for one clip, after the usual ones.
- "dense": `num_frames` frames `frame_stride` apart (a window of (num_frames - 1) * stride + 1 frames) from a
  random start in training; in evaluation `clips` windows evenly spaced over the video (centred for one).
  Windows longer than the video are clamped: the last frame repeats.

These are the toolkit's own scheme, protocol "vidkit". The source projects' schemes (IBM's, SIFAR's, mmaction's,
ILA's, "frame_uniform" included) are in pipelines/protocols.py, which a ClipSpec names in `protocol`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMES = ("tsn", "dense", "frame_uniform")  # frame_uniform: mmaction's (AIM, ILA), protocols.py


@dataclass(frozen=True)
class ClipSpec:
    """The part of a model's InputContract that decides which frames are read (picklable, torch-free)."""

    num_frames: int
    sampling: str = "tsn"
    frame_stride: int = 1
    frames_per_group: int = 1  # tsn: frames per segment (IBM's); num_frames counts them all
    protocol: str = "vidkit"  # whose sampling and test crops: a pipelines.protocols name

    def __post_init__(self):
        if self.sampling not in SCHEMES:
            raise ValueError(f"sampling must be one of {SCHEMES}, got {self.sampling!r}")
        if int(self.num_frames) < 1 or int(self.frame_stride) < 1 or int(self.frames_per_group) < 1:
            raise ValueError(f"num_frames, frame_stride and frames_per_group must be >= 1, got {self.num_frames}, "
                             f"{self.frame_stride}, {self.frames_per_group}")
        check_groups(self.num_frames, self.sampling, self.frames_per_group)

    @property
    def groups(self) -> int:
        return self.num_frames // self.frames_per_group

    @classmethod
    def of(cls, contract, frames_per_group: int | None = None, protocol: str = "vidkit") -> "ClipSpec":
        fpg = getattr(contract, "frames_per_group", 1) if frames_per_group is None else frames_per_group
        return cls(int(contract.num_frames), contract.sampling, int(contract.frame_stride), int(fpg), protocol)


def check_groups(num_frames: int, sampling: str, frames_per_group: int) -> None:
    """frames_per_group > 1 is a tsn option that must divide the clip: one line naming what is wrong."""
    if frames_per_group == 1:
        return
    if sampling != "tsn":
        raise ValueError(f"frames_per_group {frames_per_group} is an option of tsn sampling, not {sampling} (IBM's "
                         f"frames_per_group with dense sampling is the stride: use frame_stride)")
    if num_frames % frames_per_group:
        raise ValueError(f"frames_per_group {frames_per_group} must divide the clip's {num_frames} frames "
                         f"(num_frames = groups x frames_per_group)")


def sample_rng(seed: int, epoch: int, index: int, view: int = 0) -> np.random.Generator:
    """The random stream of one (video, view) in one epoch: independent of rank, worker and read order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(view)])


def eval_fraction(clip: int, clips: int, twice: bool = False) -> float:
    """Where in its segment the evaluation view `clip` takes its frame: (clip + .5) / clips; with `twice` the
    views clips..2 * clips - 1 take (clip - clips) / clips (mmaction's twice_sample: the segments' starts)."""
    if not 0 <= clip < clips * (2 if twice else 1):
        raise ValueError(f"clip {clip} outside 0..{clips * (2 if twice else 1) - 1}")
    return (clip + 0.5) / clips if clip < clips else (clip - clips) / clips


def tsn_indices(video_frames: int, num_frames: int, rng: np.random.Generator | None = None,
                clip: int = 0, clips: int = 1, twice: bool = False) -> np.ndarray:
    """One frame per segment: random with `rng` (training), else at `eval_fraction(clip, clips, twice)` of each."""
    _check_video(video_frames)
    seg_len = video_frames / num_frames
    where = rng.random(num_frames) if rng is not None else np.full(num_frames, eval_fraction(clip, clips, twice))
    idx = np.floor((np.arange(num_frames) + where) * seg_len).astype(np.int64)
    return np.clip(idx, 0, video_frames - 1)


def grouped_indices(video_frames: int, groups: int, per_group: int, rng: np.random.Generator | None = None,
                    clip: int = 0, clips: int = 1, twice: bool = False) -> np.ndarray:
    """IBM's uniform sampling with frames_per_group: `groups` segments of video_frames // groups frames and the
    same `per_group` offsets in each (random and distinct with `rng`, else evenly spread at the view's fraction)."""
    _check_video(video_frames)
    total, seg_len = groups * per_group, video_frames // groups
    if rng is None:
        where = eval_fraction(clip, clips, twice)
        if seg_len < per_group:  # too short for distinct offsets: plain tsn over every frame of the clip
            return tsn_indices(video_frames, total, clip=clip, clips=clips, twice=twice)
        offsets = np.floor((np.arange(per_group) + where) * seg_len / per_group).astype(np.int64)
    elif seg_len >= per_group:
        offsets = np.sort(rng.choice(seg_len, per_group, replace=False))
    else:  # IBM: random frames of the whole video (seg_len < per_group means fewer frames than the clip: repeats)
        return np.sort(rng.choice(video_frames, total)).astype(np.int64)
    return (np.arange(groups)[:, None] * seg_len + offsets[None, :]).reshape(-1).astype(np.int64)


def dense_indices(video_frames: int, num_frames: int, stride: int = 1, rng: np.random.Generator | None = None,
                  clip: int = 0, clips: int = 1) -> np.ndarray:
    """A window of `num_frames` frames `stride` apart: random start with `rng`, else the clip-th of `clips`
    evenly spaced windows. Past the end of a short video the last frame repeats."""
    _check_video(video_frames)
    free = max(video_frames - ((num_frames - 1) * stride + 1), 0)
    if rng is not None:
        start = int(rng.integers(0, free + 1))
    else:  # the free + 1 possible starts cut into `clips` equal parts: take the middle of part `clip`
        start = min(int((clip + 0.5) * (free + 1) / clips), free)
    return np.minimum(start + np.arange(num_frames) * stride, video_frames - 1).astype(np.int64)


def clip_indices(video_frames: int, spec, training: bool, rng: np.random.Generator | None = None,
                 clip: int = 0, clips: int = 1, twice: bool = False) -> np.ndarray:
    """Frame indices (int64, length spec.num_frames) of one clip; `spec` is a ClipSpec or an InputContract.
    Evaluation views: `clip` of `clips`, or of 2 x clips with `twice` (tsn only)."""
    if training and rng is None:
        raise ValueError("training clips need an rng")
    if twice and spec.sampling != "tsn":
        raise ValueError(f"twice sampling (segment centres and starts) is for tsn sampling, not {spec.sampling}")
    eval_fraction(clip, clips, twice)  # the view number is checked in training too: it is a caller's error
    rng = rng if training else None
    per_group = int(getattr(spec, "frames_per_group", 1))
    if spec.sampling == "tsn" and per_group > 1:
        check_groups(spec.num_frames, spec.sampling, per_group)
        return grouped_indices(video_frames, spec.num_frames // per_group, per_group, rng, clip, clips, twice)
    if spec.sampling == "tsn":
        return tsn_indices(video_frames, spec.num_frames, rng, clip, clips, twice)
    if spec.sampling == "dense":
        return dense_indices(video_frames, spec.num_frames, spec.frame_stride, rng, clip, clips)
    raise ValueError(f"{spec.sampling} sampling is mmaction's (AIM, ILA), not the toolkit's: use protocol mmaction "
                     f"or ila")


def _check_video(video_frames: int) -> None:
    if video_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {video_frames}")


def view_of(view: int, crops: int) -> tuple[int, int]:
    """Evaluation view number -> (clip, crop); views are numbered clip * crops + crop."""
    return divmod(int(view), int(crops))


# --------------------------------------------------------------------------------------------- epoch plans


@dataclass(frozen=True)
class EpochPlan:
    """What one rank reads in one epoch, as (video, view) items in read order.

    Training: the videos shuffled by (seed, epoch), padded by wrap-around to a multiple of world_size, rank r
    takes every world_size-th from r; the last partial batch is dropped so every rank runs the same number
    of full batches. With `repeats` R (repeated augmentation, PySlowFast's AUG.NUM_SAMPLE) every video of the
    rank's slice is read R times in a row, as views (copies) 0..R-1: a batch holds `batch_size` videos x R
    copies (`clips_per_batch` items) and an epoch still reads every video once per copy, in as many batches
    as without repeats. Evaluation: every (video, view) pair, video-major, rank r takes every world_size-th
    from r, in order; the last batch may be partial (so ranks may differ by one batch)."""

    num_videos: int
    batch_size: int  # videos per batch (evaluation: items per batch)
    training: bool
    views: int = 1
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    repeats: int = 1

    def __post_init__(self):
        if self.batch_size < 1 or self.views < 1 or self.repeats < 1:
            raise ValueError(f"batch_size, views and repeats must be >= 1, got {self.batch_size}, {self.views}, "
                             f"{self.repeats}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside 0..{self.world_size - 1}")
        if self.training and self.views != 1:
            raise ValueError("training reads one view per video")
        if not self.training and self.repeats != 1:
            raise ValueError(f"repeated augmentation is for training; evaluation reads each view once, "
                             f"got repeats={self.repeats}")
        if self.training and self.per_rank < self.batch_size:
            raise ValueError(f"{self.num_videos} videos over {self.world_size} rank(s) do not fill one batch of "
                             f"{self.batch_size}: lower the batch size")

    @property
    def per_rank(self) -> int:
        """Videos (evaluation: items) this rank reads per epoch (before dropping the partial training batch)."""
        if self.training:
            return -(-self.num_videos // self.world_size)
        return len(range(self.rank, self.num_videos * self.views, self.world_size))

    @property
    def clips_per_batch(self) -> int:
        """Items (clips) in one batch: batch_size videos x repeats copies."""
        return self.batch_size * self.repeats

    @property
    def num_positions(self) -> int:
        """Read positions per epoch, evaluation's padding of the last batch included."""
        return self.num_batches * self.clips_per_batch

    @property
    def num_samples(self) -> int:
        """Real samples (clips) this rank yields per epoch."""
        return self.num_positions if self.training else self.per_rank

    @property
    def num_batches(self) -> int:
        if self.training:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Training: this rank's video indices for the epoch (length per_rank)."""
        perm = np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(epoch)]).permutation(self.num_videos)
        return np.resize(perm, self.per_rank * self.world_size)[self.rank::self.world_size]

    def item(self, position: int, epoch: int, order: np.ndarray | None = None) -> tuple[int, int]:
        """(video, view) at `position` of this rank's epoch (training: view = the copy); positions past the real
        samples (evaluation's padding up to a full batch) repeat the first item. `order` may pass a cached
        `self.order(epoch)`."""
        if not 0 <= position < self.num_positions:
            raise IndexError(f"position {position} outside the epoch's {self.num_batches} batches")
        if self.training:
            order = self.order(epoch) if order is None else order
            video, copy = divmod(position, self.repeats)
            return int(order[video]), copy
        flat = self.rank + self.world_size * (position if position < self.per_rank else 0)
        return divmod(flat, self.views)

    def items(self, epoch: int) -> list[tuple[int, int]]:
        """Every real item of the epoch for this rank, in read order (for tests and tools)."""
        order = self.order(epoch) if self.training else None
        return [self.item(p, epoch, order) for p in range(self.num_samples)]
