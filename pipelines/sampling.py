"""Which videos each rank reads in an epoch, and which frames of a video make a clip. Plain numpy.

Everything here is a pure function of its arguments (seed, epoch, rank, index...), so DALI's parallel
external source can call it from any worker process, in any order, and get the same answer.

Frame sampling (`clip_indices`):
- "tsn": the video is cut into `num_frames` equal segments and one frame is taken per segment: a random
  one in training, in evaluation the frame at fraction (clip + 0.5) / clips of each segment (the centre for
  one clip). Videos shorter than `num_frames` repeat frames.
- "dense": `num_frames` frames `frame_stride` apart (a window of (num_frames - 1) * stride + 1 frames) from a
  random start in training; in evaluation `clips` windows evenly spaced over the video (centred for one).
  Windows longer than the video are clamped: the last frame repeats.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMES = ("tsn", "dense")


@dataclass(frozen=True)
class ClipSpec:
    """The part of a model's InputContract that decides which frames are read (picklable, torch-free)."""

    num_frames: int
    sampling: str = "tsn"
    frame_stride: int = 1

    def __post_init__(self):
        if self.sampling not in SCHEMES:
            raise ValueError(f"sampling must be one of {SCHEMES}, got {self.sampling!r}")
        if int(self.num_frames) < 1 or int(self.frame_stride) < 1:
            raise ValueError(f"num_frames and frame_stride must be >= 1, got {self.num_frames}, {self.frame_stride}")

    @classmethod
    def of(cls, contract) -> "ClipSpec":
        return cls(int(contract.num_frames), contract.sampling, int(contract.frame_stride))


def sample_rng(seed: int, epoch: int, index: int, view: int = 0) -> np.random.Generator:
    """The random stream of one (video, view) in one epoch: independent of rank, worker and read order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(view)])


def tsn_indices(video_frames: int, num_frames: int, rng: np.random.Generator | None = None,
                clip: int = 0, clips: int = 1) -> np.ndarray:
    """One frame per segment: random with `rng` (training), else at fraction (clip + .5) / clips of each."""
    _check_video(video_frames)
    seg_len = video_frames / num_frames
    where = rng.random(num_frames) if rng is not None else np.full(num_frames, (clip + 0.5) / clips)
    idx = np.floor((np.arange(num_frames) + where) * seg_len).astype(np.int64)
    return np.clip(idx, 0, video_frames - 1)


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
                 clip: int = 0, clips: int = 1) -> np.ndarray:
    """Frame indices (int64, length spec.num_frames) of one clip; `spec` is a ClipSpec or an InputContract."""
    if training and rng is None:
        raise ValueError("training clips need an rng")
    if not 0 <= clip < clips:
        raise ValueError(f"clip {clip} outside 0..{clips - 1}")
    rng = rng if training else None
    if spec.sampling == "tsn":
        return tsn_indices(video_frames, spec.num_frames, rng, clip, clips)
    if spec.sampling == "dense":
        return dense_indices(video_frames, spec.num_frames, spec.frame_stride, rng, clip, clips)
    raise ValueError(f"unknown sampling {spec.sampling!r}; expected one of {SCHEMES}")


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
    of full batches. Evaluation: every (video, view) pair, video-major, rank r takes every world_size-th
    from r, in order; the last batch may be partial (so ranks may differ by one batch)."""

    num_videos: int
    batch_size: int
    training: bool
    views: int = 1
    rank: int = 0
    world_size: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.views < 1:
            raise ValueError(f"batch_size and views must be >= 1, got {self.batch_size}, {self.views}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside 0..{self.world_size - 1}")
        if self.training and self.views != 1:
            raise ValueError("training reads one view per video")
        if self.training and self.per_rank < self.batch_size:
            raise ValueError(f"{self.num_videos} videos over {self.world_size} rank(s) do not fill one batch of "
                             f"{self.batch_size}: lower the batch size")

    @property
    def per_rank(self) -> int:
        """Items this rank reads per epoch (before dropping the partial training batch)."""
        if self.training:
            return -(-self.num_videos // self.world_size)
        return len(range(self.rank, self.num_videos * self.views, self.world_size))

    @property
    def num_samples(self) -> int:
        """Real samples this rank yields per epoch."""
        return self.num_batches * self.batch_size if self.training else self.per_rank

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
        """(video, view) at `position` of this rank's epoch; positions past the real samples (evaluation's
        padding up to a full batch) repeat the first item. `order` may pass a cached `self.order(epoch)`."""
        if not 0 <= position < self.num_batches * self.batch_size:
            raise IndexError(f"position {position} outside the epoch's {self.num_batches} batches")
        if self.training:
            order = self.order(epoch) if order is None else order
            return int(order[position]), 0
        flat = self.rank + self.world_size * (position if position < self.per_rank else 0)
        return divmod(flat, self.views)

    def items(self, epoch: int) -> list[tuple[int, int]]:
        """Every real item of the epoch for this rank, in read order (for tests and tools)."""
        order = self.order(epoch) if self.training else None
        return [self.item(p, epoch, order) for p in range(self.num_samples)]
