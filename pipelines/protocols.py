"""The source projects' test and training protocols: which frames, resize and crops each one's own code computes.

A `Protocol` is one source's rules, as its authors' functions compute them (integer arithmetic, rounding, short
videos and multi-clip placement included), in three parts:

- temporal: `test_clips(n, clip)` -> the test views' frame indices, `train_clip(n, clip, rng)` -> one training
  draw (from a numpy Generator: same support as the authors' draw, not their random stream);
- resize: the evaluation frame size for a short side (`torchvision`'s truncation, mmcv's rounding, DALI's);
- crops: the boxes of 1, 3 (or 5/10) crops on the resized frame, in integer pixels.

`ClipRule` carries the clip parameters in the request vocabulary of `python -m eval views` (eval/views.py):
sampling "uniform" (one frame per segment, TSN), "dense" (`frames` frames `stride` apart) or "frame_uniform"
(mmaction's, AIM and ILA); `stride` is IBM's frames_per_group for `ibm`/`sifar` uniform sampling (their one
option for both). The five protocols (`PROTOCOLS`):

  ibm, sifar   IBM action-recognition-pytorch utils/video_dataset.py (`_get_val_indices`, `_sample_indices`,
               `random_clip`) and test.py's crops; SIFAR video_dataset.py (`sample_val_test_clip`,
               `sample_train_clip`) and video_dataset_aug.py `get_augmentor`: the same sampling; SIFAR's three
               crops run along the diagonal when the crop is smaller than both sides.
  mmaction     mmaction 0.x `SampleFrames` (`_get_test_clips`, `_get_train_clips`, `get_seq_frames`) as STS and
               AIM run it; `Resize(-1, S)` (mmcv.rescale_size), `CenterCrop`, `ThreeCrop`, `TenCrop`.
  ila          ILA datasets/build.py `build_dataloader`: frame_uniform for one clip; for C > 1 clips ILA draws C
               training-mode TSN clips at random (`SampleFrames(multiview=C)` without test_mode). That test is
               random: here view v of C takes, in each segment of n // T frames, the offset (v + 1/2) / C of the
               segment: fixed, and inside the authors' support. Its crops follow `build_dataloader`: 3 crops are
               Resize(-1, c) + ThreeCrop(c), else Resize(-1, int(256 / 224 * c)) + CenterCrop(c).
  vidkit       this toolkit's own scheme (pipelines/sampling.py), the default for new recipes: DALI's rounding
               of the resize (half up) and of the crop positions.

Frame indices are 0-based positions in the stored frame sequence (IBM/SIFAR's 1-based file numbers minus one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import sampling as own

SAMPLINGS = ("uniform", "dense", "frame_uniform")
# the toolkit's config names of the same samplings
CONFIG_SAMPLING = {"tsn": "uniform", "dense": "dense", "frame_uniform": "frame_uniform"}


class ProtocolError(ValueError):
    """A request the protocol does not have (one line)."""


@dataclass(frozen=True)
class ClipRule:
    """One clip's temporal parameters: `frames` per clip, `sampling`, `stride`; `clips` test views (x 2 twice)."""

    frames: int
    sampling: str = "uniform"
    stride: int = 1
    clips: int = 1
    twice: bool = False

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ProtocolError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if min(self.frames, self.stride, self.clips) < 1:
            raise ProtocolError(f"frames, frame_stride and clips must be >= 1, got {self.frames}, {self.stride}, "
                                f"{self.clips}")


@dataclass(frozen=True)
class Box:
    """One evaluation crop: the frame resized to `resize` (w, h), then the box x0, y0, x1, y1 (exclusive)."""

    resize: tuple
    box: tuple
    flip: bool = False


# --------------------------------------------------------------------------- IBM / SIFAR temporal rules


def ibm_test_clips(n: int, clip: ClipRule) -> list[np.ndarray]:
    """IBM `_get_val_indices` with fixed offsets (test.py's default; SIFAR's `sample_val_test_clip` is the same)."""
    if clip.sampling == "dense":
        last = max(1, 1 + n - clip.stride * clip.frames) - 1
        starts = np.linspace(0, last, num=clip.clips, dtype=int)
        return [(int(s) + np.arange(clip.frames) * clip.stride) % n for s in starts]
    groups = clip.frames // clip.stride  # uniform: frame_stride is frames_per_group, which this test ignores
    views = []
    for k, offset in enumerate(range(-clip.clips // 2 + 1, clip.clips // 2 + 1)):
        if n > groups:
            tick = n / float(groups)
            shift = offset
            if shift >= tick / 2.0:
                shift = tick / 2.0 - 1e-4
            elif shift < -tick / 2.0:
                shift = -tick / 2.0
            idx = np.array([int(tick / 2.0 + shift + tick * x) for x in range(groups)])
        else:  # the authors seed numpy's global generator with the clip's number: legacy RandomState(k)
            idx = np.random.RandomState(k).choice(n, groups)
        views.append(np.sort(idx))
    return views


def ibm_train_clip(n: int, clip: ClipRule, rng: np.random.Generator) -> np.ndarray:
    """IBM `_sample_indices` (uniform: `groups` segments of n // groups frames, frames_per_group distinct offsets
    shared by every segment) and `random_clip` (dense: a start in [0, n - stride * frames - 1], wrapping)."""
    if clip.sampling == "dense":
        highest = n - clip.stride * clip.frames
        start = 0 if highest <= 0 else int(rng.integers(0, highest))
        return (start + np.arange(clip.frames) * clip.stride) % n
    per_group = clip.stride
    groups = clip.frames // per_group
    ave = n // groups
    if ave >= per_group:
        offsets = rng.choice(ave, per_group, replace=False)
        idx = np.repeat(np.arange(groups) * ave, per_group) + np.tile(offsets, groups)
    elif n < clip.frames:
        idx = rng.choice(n, clip.frames)
    else:
        idx = rng.choice(n, clip.frames, replace=False)
    return np.sort(idx)


def _check_ibm(clip: ClipRule) -> None:
    if clip.sampling == "frame_uniform":
        raise ProtocolError("IBM's and SIFAR's code has no frame_uniform sampling (uniform or dense)")
    if clip.twice:
        raise ProtocolError("IBM's and SIFAR's test has no twice sampling (that is mmaction's twice_sample)")
    if clip.sampling == "uniform" and clip.frames % clip.stride:
        raise ProtocolError(f"frame_stride {clip.stride} (IBM's frames_per_group) must divide frames "
                            f"{clip.frames} (frames = groups x frames_per_group)")


# --------------------------------------------------------------------------- mmaction temporal rules


def _mm_window(clip: ClipRule) -> tuple[int, int, int]:
    """(clip_len, frame_interval, num_clips) of the SampleFrames that the rule stands for."""
    if clip.sampling == "uniform":  # SampleFrames(clip_len=1, num_clips=frames): one view of `frames` segments
        return 1, 1, clip.frames
    return clip.frames, clip.stride, clip.clips


def mmaction_test_offsets(n: int, clip_len: int, interval: int, num_clips: int, twice: bool) -> np.ndarray:
    """`SampleFrames._get_test_clips` (float arithmetic as written; twice appends the unshifted starts)."""
    span = clip_len * interval
    avg = (n - span + 1) / float(num_clips)
    if n > span - 1:
        base = np.arange(num_clips) * avg
        offsets = (base + avg / 2.0).astype(int)
        return np.concatenate([offsets, base]) if twice else offsets
    return np.zeros((num_clips,), dtype=int)


def mmaction_test_clips(n: int, clip: ClipRule) -> list[np.ndarray]:
    if clip.sampling == "frame_uniform":
        return [seq_frames(n, clip.frames, None)]
    clip_len, interval, num_clips = _mm_window(clip)
    offsets = mmaction_test_offsets(n, clip_len, interval, num_clips, clip.twice)
    inds = (offsets[:, None] + np.arange(clip_len)[None, :] * interval).reshape(-1)
    inds = np.mod(inds, n).astype(int)  # out_of_bound_opt 'loop'; the float twice starts truncate here
    per_view = clip.frames
    return [inds[i: i + per_view] for i in range(0, len(inds), per_view)]


def mmaction_train_offsets(n: int, clip_len: int, interval: int, num_clips: int,
                           rng: np.random.Generator) -> np.ndarray:
    """`SampleFrames._get_train_clips`."""
    span = clip_len * interval
    avg = (n - span + 1) // num_clips
    if avg > 0:
        return np.arange(num_clips) * avg + rng.integers(0, avg, size=num_clips)
    if n > max(num_clips, span):
        return np.sort(rng.integers(0, n - span + 1, size=num_clips))
    if avg == 0:
        ratio = (n - span + 1.0) / num_clips
        return np.around(np.arange(num_clips) * ratio)
    return np.zeros((num_clips,), dtype=int)


def mmaction_train_clip(n: int, clip: ClipRule, rng: np.random.Generator) -> np.ndarray:
    if clip.sampling == "frame_uniform":
        return seq_frames(n, clip.frames, rng)
    clip_len, interval, num_clips = _mm_window(clip)
    num_clips = num_clips if clip.sampling == "uniform" else 1
    offsets = mmaction_train_offsets(n, clip_len, interval, num_clips, rng)
    inds = (offsets[:, None] + np.arange(clip_len)[None, :] * interval).reshape(-1)
    return np.mod(inds, n).astype(int)


def seq_frames(n: int, frames: int, rng: np.random.Generator | None) -> np.ndarray:
    """`SampleFrames.get_seq_frames` (frame_uniform, AIM and ILA): segments of (n - 1) / frames, rounded half to
    even at both ends; the test takes their middle, training any frame between them (both ends included)."""
    seg = float(n - 1) / frames
    out = []
    for i in range(frames):
        start, end = int(np.round(seg * i)), int(np.round(seg * (i + 1)))
        out.append((start + end) // 2 if rng is None else int(rng.integers(start, end + 1)))
    return np.array(out, dtype=int)


def _check_mmaction(clip: ClipRule) -> None:
    if clip.sampling != "dense" and clip.clips != 1:
        raise ProtocolError(f"mmaction's {clip.sampling} test takes one view of {clip.frames} frames "
                            f"(SampleFrames clip_len 1 x num_clips {clip.frames}): clips must be 1, got {clip.clips}")
    if clip.twice and clip.sampling == "frame_uniform":
        raise ProtocolError("mmaction's frame_uniform sampling has no twice_sample")


# --------------------------------------------------------------------------- ILA temporal rules


def ila_test_clips(n: int, clip: ClipRule) -> list[np.ndarray]:
    """One clip: frame_uniform's test. C > 1 clips: ILA draws C training-mode TSN clips at random; view v takes
    the fixed offset (v + 1/2) / C of each segment, inside that draw's support."""
    if clip.clips == 1:
        return [seq_frames(n, clip.frames, None)]
    avg = n // clip.frames
    if avg == 0:  # the draw's fixed positions: np.around(c * n / T) mod n
        fixed = np.mod(np.around(np.arange(clip.frames) * (n / clip.frames)), n).astype(int)
        return [fixed.copy() for _ in range(clip.clips)]
    return [np.arange(clip.frames) * avg + int((v + 0.5) * avg / clip.clips) for v in range(clip.clips)]


def ila_train_clip(n: int, clip: ClipRule, rng: np.random.Generator) -> np.ndarray:
    return seq_frames(n, clip.frames, rng)


def _check_ila(clip: ClipRule) -> None:
    if clip.twice:
        raise ProtocolError("ILA's test has no twice sampling")
    if clip.sampling not in ("uniform", "frame_uniform"):
        raise ProtocolError(f"ILA's code decides its sampling (frame_uniform, or TSN views for several clips); "
                            f"{clip.sampling} is not one of its options")


# --------------------------------------------------------------------------- the toolkit's own rules


def _own_spec(clip: ClipRule) -> own.ClipSpec:
    if clip.sampling == "frame_uniform":
        raise ProtocolError("vidkit has no frame_uniform sampling (use --protocol mmaction or ila)")
    if clip.sampling == "dense":
        return own.ClipSpec(clip.frames, "dense", clip.stride)
    return own.ClipSpec(clip.frames, "tsn", 1, clip.stride)


def vidkit_test_clips(n: int, clip: ClipRule) -> list[np.ndarray]:
    spec = _own_spec(clip)
    views = clip.clips * (2 if clip.twice else 1)
    return [own.clip_indices(n, spec, False, clip=c, clips=clip.clips, twice=clip.twice) for c in range(views)]


def vidkit_train_clip(n: int, clip: ClipRule, rng: np.random.Generator) -> np.ndarray:
    return own.clip_indices(n, _own_spec(clip), True, rng)


def _check_vidkit(clip: ClipRule) -> None:
    try:
        _own_spec(clip)
        if clip.twice and clip.sampling != "uniform":
            raise ProtocolError(f"twice sampling (segment centres and starts) is for tsn sampling, not {clip.sampling}")
    except ValueError as e:
        raise ProtocolError(str(e)) from None


# --------------------------------------------------------------------------- resizes


def torchvision_resize(width: int, height: int, short: int) -> tuple[int, int]:
    """torchvision `Resize(short)` (IBM's and SIFAR's GroupScale): the long side truncated."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def mmcv_resize(width: int, height: int, short: int) -> tuple[int, int]:
    """mmaction `Resize(scale=(-1, short))` = mmcv.rescale_size with (inf, short): both sides rounded half up."""
    factor = min(math.inf / max(width, height), short / min(width, height))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


def dali_resize(width: int, height: int, short: int) -> tuple[int, int]:
    """DALI `fn.resize(resize_shorter=short)`: the long side rounded half up (measured on DALI 2.4)."""
    if width <= height:
        return short, int(height * short / width + 0.5)
    return int(width * short / height + 0.5), short


# --------------------------------------------------------------------------- crops


def _box(x: int, y: int, crop: int) -> tuple:
    return (int(x), int(y), int(x) + crop, int(y) + crop)


def _five(width: int, height: int, crop: int) -> list[tuple]:
    """Corners and centre on a grid of quarter steps ((W - c) // 4): IBM's fill_fix_offset, mmaction's TenCrop."""
    ws, hs = (width - crop) // 4, (height - crop) // 4
    return [_box(0, 0, crop), _box(4 * ws, 0, crop), _box(0, 4 * hs, crop), _box(4 * ws, 4 * hs, crop),
            _box(2 * ws, 2 * hs, crop)]


def _with_flips(boxes: list[tuple]) -> list[tuple]:
    return [(b, flip) for b in boxes for flip in (False, True)]


def ibm_crops(width: int, height: int, crop: int, crops: int, diagonal: bool = False) -> list[tuple]:
    """test.py: 1 crop torchvision CenterCrop (half to even); 3 and 5/10 GroupOverSample's quarter steps;
    `diagonal`: SIFAR's three crops when the crop is smaller than both sides."""
    if crops == 1:
        return [(_box(int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0)), crop), False)]
    ws, hs = (width - crop) // 4, (height - crop) // 4
    if crops == 3:
        if diagonal and crop < width and crop < height:
            xy = [(0, 0), (4 * ws, 4 * hs), (2 * ws, 2 * hs)]
        elif width < height:
            xy = [(2 * ws, 0), (2 * ws, 4 * hs), (2 * ws, 2 * hs)]
        else:
            xy = [(0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 2 * hs)]
        return [(_box(x, y, crop), False) for x, y in xy]
    five = _five(width, height, crop)
    return [(b, False) for b in five] if crops == 5 else _with_flips(five)


def sifar_crops(width: int, height: int, crop: int, crops: int) -> list[tuple]:
    return ibm_crops(width, height, crop, crops, diagonal=True)


def mmaction_crops(width: int, height: int, crop: int, crops: int) -> list[tuple]:
    """CenterCrop (floor), ThreeCrop (the crop spans one whole side), TenCrop."""
    if crops == 1:
        return [(_box((width - crop) // 2, (height - crop) // 2, crop), False)]
    if crops == 3:
        if crop == height:
            step = (width - crop) // 2
            return [(_box(x, 0, crop), False) for x in (0, 2 * step, step)]
        if crop == width:
            step = (height - crop) // 2
            return [(_box(0, y, crop), False) for y in (0, 2 * step, step)]
        raise ProtocolError(f"mmaction's ThreeCrop needs the crop ({crop}) to span a side of the resized "
                            f"{width}x{height} frame: resize the short side to the crop")
    return _with_flips(_five(width, height, crop))


def vidkit_crops(width: int, height: int, crop: int, crops: int) -> list[tuple]:
    """DALI's crop positions (0, 1/2, 1 of the free space, rounded half up): 1 centre, 3 along the long side,
    5 corners and centre, 10 those and their mirror images."""
    positions = [(x, y, bool(m)) for x, y, m in _vidkit_positions(crops, width, height)]
    return [(_box(int(px * (width - crop) + 0.5), int(py * (height - crop) + 0.5), crop), m)
            for px, py, m in positions]


def _vidkit_positions(crops: int, width: int, height: int) -> list[tuple]:
    if crops == 1:
        return [(0.5, 0.5, 0)]
    if crops == 3:
        return [(e, 0.5, 0) for e in (0, 0.5, 1)] if width >= height else [(0.5, e, 0) for e in (0, 0.5, 1)]
    five = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0.5, 0.5, 0)]
    return five if crops == 5 else five + [(x, y, 1) for x, y, _ in five]


# --------------------------------------------------------------------------- the protocols


@dataclass(frozen=True)
class Protocol:
    """One source's rules (see the module docstring). `source_size`: the resize is computed from the source
    video's frame size (mmaction and ILA resize decoded video frames), else from the stored frames (IBM and
    SIFAR read extracted frame files). `default_geometry(crops, crop)` -> (short side, crop side) of the
    authors' script run without options."""

    name: str
    crop_counts: tuple
    source_size: bool
    _check: object
    _test: object
    _train: object
    _resize: object
    _crops: object
    _geometry: object

    def check(self, clip: ClipRule) -> None:
        self._check(clip)

    def view_count(self, clip: ClipRule) -> int:
        """Temporal test views of a video long enough for every view (mmaction's twice sampling of a shorter one
        gives only its first, identical, views: a loader repeats them, which leaves their average as it is)."""
        return len(self.test_clips(_LONG, clip))

    def check_length(self, clip: ClipRule, num_frames: int) -> None:
        """Refuse a rule whose test views or training draws are not `num_frames` long (IBM's uniform test with
        frames_per_group F reads groups = frames / F frames per view: a model of `frames` cannot take them)."""
        lengths = {len(v) for v in self.test_clips(_LONG, clip)}
        lengths.add(len(self.train_clip(_LONG, clip, np.random.default_rng(0))))
        if lengths != {num_frames}:
            raise ProtocolError(f"{self.name}'s {clip.sampling} views have {'/'.join(map(str, sorted(lengths)))} "
                                f"frames, the model takes {num_frames}")

    def test_clips(self, n: int, clip: ClipRule) -> list[np.ndarray]:
        """Every test view's frame indices (int64), in the authors' order."""
        _check_video(n)
        self.check(clip)
        return [np.asarray(v, dtype=np.int64) for v in self._test(n, clip)]

    def train_clip(self, n: int, clip: ClipRule, rng: np.random.Generator) -> np.ndarray:
        _check_video(n)
        self.check(clip)
        return np.asarray(self._train(n, clip, rng), dtype=np.int64)

    def geometry(self, crops: int, crop: int | None = None, short_side: int | None = None) -> tuple[int, int]:
        """(short side, crop side): the authors' defaults for `crops`, `crop` and `short_side` where given."""
        return self._geometry(crops, crop, short_side)

    def boxes(self, width: int, height: int, crops: int, crop: int, short_side: int) -> list[Box]:
        """The crops of a frame of width x height: each its resize and box (x1, y1 exclusive)."""
        if crops not in self.crop_counts:
            raise ProtocolError(f"{self.name} takes {', '.join(map(str, self.crop_counts))} crops, not {crops}")
        w, h = self._resize(int(width), int(height), int(short_side))
        if crop > min(w, h):
            raise ProtocolError(f"a {crop} px crop does not fit the {w}x{h} resized frame")
        return [Box((w, h), b, flip) for b, flip in self._crops(w, h, int(crop), crops)]


_LONG = 100_000  # frames: a video long enough for any view to fit


def rule_of(spec, clips: int = 1, twice: bool = False) -> ClipRule:
    """The ClipRule of a pipelines.sampling.ClipSpec (config names: tsn -> uniform; its frames_per_group is the
    uniform rule's stride, as IBM's one option is)."""
    sampling = CONFIG_SAMPLING[spec.sampling]
    stride = spec.frame_stride if sampling == "dense" else int(getattr(spec, "frames_per_group", 1))
    return ClipRule(int(spec.num_frames), sampling, int(stride), int(clips), bool(twice))


def _check_video(n: int) -> None:
    if n < 1:
        raise ProtocolError(f"a video needs at least one frame, got {n}")


def _scripts_geometry(crops, crop, short_side):
    """IBM test.py and SIFAR main.py without options: --input_size 224, scaled by 1 / 0.875 (to 256)."""
    crop = crop or 224
    return (short_side or int(crop / 0.875 + 0.5)), crop


def _mmaction_geometry(crops, crop, short_side):
    """The configs' val_pipeline Resize(-1, 256) + CenterCrop(224); ThreeCrop needs the crop at the short side."""
    if crops == 1:
        crop = crop or 224
        return short_side or int(crop / 0.875 + 0.5), crop
    side = crop or short_side or 256
    return short_side or side, side


def _ila_geometry(crops, crop, short_side):
    """build_dataloader: 3 crops Resize(-1, c) + ThreeCrop(c), else Resize(-1, int(256 / 224 * c))."""
    crop = crop or 224
    if short_side:
        raise ProtocolError("ILA's code sets the short side from the crop size: it takes no eval_scale")
    return (crop if crops == 3 else int(256 / 224 * crop)), crop


def _vidkit_geometry(crops, crop, short_side):
    crop = crop or 224
    return short_side or int(round(crop * 256 / 224)), crop


PROTOCOLS = {
    "ibm": Protocol("ibm", (1, 3, 5, 10), False, _check_ibm, ibm_test_clips, ibm_train_clip, torchvision_resize,
                    ibm_crops, _scripts_geometry),
    "sifar": Protocol("sifar", (1, 3, 5, 10), False, _check_ibm, ibm_test_clips, ibm_train_clip,
                      torchvision_resize, sifar_crops, _scripts_geometry),
    "mmaction": Protocol("mmaction", (1, 3, 10), True, _check_mmaction, mmaction_test_clips, mmaction_train_clip,
                         mmcv_resize, mmaction_crops, _mmaction_geometry),
    "ila": Protocol("ila", (1, 3), True, _check_ila, ila_test_clips, ila_train_clip, mmcv_resize, mmaction_crops,
                    _ila_geometry),
    "vidkit": Protocol("vidkit", (1, 3, 5, 10), False, _check_vidkit, vidkit_test_clips, vidkit_train_clip,
                       dali_resize, vidkit_crops, _vidkit_geometry),
}


def get(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ProtocolError(f"unknown protocol {name!r}: one of {', '.join(PROTOCOLS)} (or a zoo key)") from None
