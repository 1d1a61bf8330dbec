"""Procedural synthetic action videos whose classes differ only in the arrow of time.

Classes come in pairs (moving right / moving left, growing / shrinking, ...). Each pair has one forward
generator; the second class of the pair is exactly the time-reversed frame sequence of a sample drawn from the
same distribution. So the *set* of frames of both classes is identically distributed: a model that ignores frame
order (TSN with average consensus) sits at chance within each pair, while a temporal model can learn every class.

Every sample is drawn from a numpy Generator; per-frame sensor noise is keyed by the forward frame index, so a
reversed sample is bit-for-bit the forward one played backwards. Frames are rendered one at a time (the object is
drawn only inside its bounding box), so long, large clips are encoded with bounded memory.

Layout written by `generate`::

    root/videos/<class>/<class>_<index>.mp4|.webm
    root/train.txt, root/val.txt     lines "videos/<class>/<file> <class>"
    root/classes.txt                 one class name per line; line order = integer label
"""
from __future__ import annotations

import itertools
import math
import multiprocessing
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .outputs import write_text

__all__ = ["PAIRS", "CLASS_NAMES", "CODECS", "generate", "render", "iter_frames", "encode_video", "pick_classes"]

# pair name -> (forward class, time-reversed class); the first DEFAULT_PAIRS are used by default
PAIRS: dict[str, tuple[str, str]] = {
    "horizontal": ("moving_right", "moving_left"),
    "vertical": ("moving_down", "moving_up"),
    "scale": ("growing", "shrinking"),
    "spin": ("rotating_clockwise", "rotating_counterclockwise"),
    "fade": ("fading_in", "fading_out"),
    "orbit": ("orbiting_clockwise", "orbiting_counterclockwise"),
}
CLASS_NAMES: tuple[str, ...] = tuple(name for pair in PAIRS.values() for name in pair)
DEFAULT_PAIRS = 5
# codec -> (encoder, file suffix, container format, default constant-quality CRF)
CODECS: dict[str, tuple[str, str, str, int]] = {
    "h264": ("libx264", ".mp4", "mp4", 20),
    "vp9": ("libvpx-vp9", ".webm", "webm", 32),
}
MIN_SIDE = 16

SHAPES = ("disc", "square", "triangle", "bar", "cross", "sector")
# spin only shapes whose symmetry period (120 degrees or more) is far above a sampled frame's turn: a disc looks
# still, and a square or a cross turned 30-45 degrees per sampled frame reads either way
SPIN_SHAPES = ("triangle", "bar", "sector")
TEXTURES = ("solid", "stripes", "checker", "noise")


# ----------------------------------------------------------------------------------------------------------------
# argument checks


def check_size(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        height, width = (int(side) for side in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a (height, width) pair, got {size!r}") from None
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"size {height}x{width} is too small: each side must be at least {MIN_SIDE} px")
    return height, width


def _check_frames(frames) -> int:
    if not isinstance(frames, (int, np.integer)) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2, got {frames!r}")
    return int(frames)


def _check_codec(codec: str, size: tuple[int, int] | None = None) -> tuple[str, str, str, int]:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}: expected one of {sorted(CODECS)}")
    if codec == "h264" and size is not None and (size[0] % 2 or size[1] % 2):
        raise ValueError(f"h264 (yuv420p) needs an even height and width, got {size[0]}x{size[1]}")
    return CODECS[codec]


def _check_fps(fps) -> Fraction:
    try:
        rate = Fraction(fps).limit_denominator(1001)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if rate <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return rate


def _class_index(class_index) -> int:
    if isinstance(class_index, str):
        if class_index not in CLASS_NAMES:
            raise ValueError(f"unknown class {class_index!r}: expected one of {list(CLASS_NAMES)}")
        return CLASS_NAMES.index(class_index)
    if not isinstance(class_index, (int, np.integer)) or not 0 <= class_index < len(CLASS_NAMES):
        raise ValueError(f"class_index must be in [0, {len(CLASS_NAMES)}), got {class_index!r}")
    return int(class_index)


def pick_classes(classes: int | Sequence[str] | None = None) -> list[str]:
    """Class names in label order: None -> the default pairs; an even int -> that many classes (pairs in order);
    a sequence of pair names (keys of PAIRS) -> those pairs."""
    if classes is None:
        classes = 2 * DEFAULT_PAIRS
    if isinstance(classes, (int, np.integer)):
        if classes < 2 or classes % 2 or classes > len(CLASS_NAMES):
            raise ValueError(f"classes must be an even number from 2 to {len(CLASS_NAMES)}, got {classes}")
        return list(CLASS_NAMES[:classes])
    pairs = [classes] if isinstance(classes, str) else list(classes)
    unknown = [pair for pair in pairs if pair not in PAIRS]
    if unknown or not pairs or len(set(pairs)) != len(pairs):
        raise ValueError(f"classes must name distinct pairs among {list(PAIRS)}, got {pairs!r}")
    return [name for pair in pairs for name in PAIRS[pair]]


# ----------------------------------------------------------------------------------------------------------------
# drawing primitives (unit object coordinates: the object's radius is 1)


def _bilinear(grid: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample grid (h, w[, c]) at fractional cell coordinates y, x (clamped to the grid)."""
    h, w = grid.shape[:2]
    y = np.clip(y, 0, h - 1)
    x = np.clip(x, 0, w - 1)
    y0 = np.minimum(y.astype(np.intp), h - 2 if h > 1 else 0)
    x0 = np.minimum(x.astype(np.intp), w - 2 if w > 1 else 0)
    fy, fx = (y - y0).astype(grid.dtype), (x - x0).astype(grid.dtype)
    if grid.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    top = grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx
    bottom = grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _box(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    return np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the shape's edge, in object radii (negative inside)."""
    if shape == "disc":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return _box(u, v, 0.8, 0.8)
    if shape == "bar":
        return _box(u, v, 1.0, 0.35)
    if shape == "cross":
        return np.minimum(_box(u, v, 1.0, 0.3), _box(u, v, 0.3, 1.0))
    if shape == "triangle":  # equilateral, circumradius 1, pointing up before rotation
        edges = [u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, math.pi * 7 / 6, -math.pi / 6)]
        return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.5
    if shape == "sector":  # a disc with a 90-degree bite: no rotational symmetry at all
        inside_bite = (u - np.abs(v)) * 0.7071  # > 0 within 45 degrees of +u
        return np.maximum(np.hypot(u, v) - 1.0, inside_bite)
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class _Look:
    shape: str
    texture: str
    colour: np.ndarray  # (3,) float32, 0..255
    colour2: np.ndarray  # second colour of the texture
    frequency: float  # texture cycles per object radius
    stripe_angle: float
    noise_grid: np.ndarray  # (8, 8) in [0, 1], for the "noise" texture

    def mix(self, u: np.ndarray, v: np.ndarray) -> np.ndarray | None:
        """Weight of colour2 over colour at object coordinates u, v; None for a solid object."""
        if self.texture == "solid":
            return None
        if self.texture == "stripes":
            across = u * math.cos(self.stripe_angle) + v * math.sin(self.stripe_angle)
            wave = np.sin(math.pi * self.frequency * across)
        elif self.texture == "checker":
            wave = np.sin(math.pi * self.frequency * u) * np.sin(math.pi * self.frequency * v)
        else:
            cells = self.noise_grid.shape[0] - 1
            wave = 2 * _bilinear(self.noise_grid, (v + 1) * (cells / 2), (u + 1) * (cells / 2)) - 1
        # soft edges keep textures from aliasing at 64 px and from costing the encoder a fortune
        return np.clip(0.5 + 1.5 * wave, 0.0, 1.0)


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray, candidates: int = 8) -> np.ndarray:
    options = rng.uniform(0, 255, size=(candidates, 3)).astype(np.float32)
    return options[np.argmax(np.linalg.norm(options - against, axis=1))]


def _draw_look(rng: np.random.Generator, shapes: Sequence[str], against: np.ndarray,
               textures: Sequence[str] = TEXTURES) -> _Look:
    colour = _contrasting_colour(rng, against)
    return _Look(
        shape=str(rng.choice(shapes)),
        texture=str(rng.choice(textures)),
        colour=colour,
        colour2=_contrasting_colour(rng, colour),
        frequency=float(rng.uniform(1.5, 3.0)),
        stripe_angle=float(rng.uniform(0, np.pi)),
        noise_grid=rng.uniform(0, 1, size=(8, 8)).astype(np.float32),
    )


def _draw_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static planar float32 (3, H, W) background: base colour, a linear gradient and low-frequency colour noise.

    Frames are composed channel-planar because numpy broadcasts over a trailing axis of 3 several times slower."""
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 60)
    ys = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xs = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    gradient = strength * (np.cos(angle) * xs + np.sin(angle) * ys)
    cells = int(rng.integers(3, 7))
    blobs = rng.uniform(-1, 1, size=(cells + 1, cells + 1, 3)).astype(np.float32) * rng.uniform(0, 40)
    grid_y = np.arange(height, dtype=np.float32)[:, None] * (cells / max(height - 1, 1))
    grid_x = np.arange(width, dtype=np.float32)[None, :] * (cells / max(width - 1, 1))
    grid_y, grid_x = np.broadcast_arrays(grid_y, grid_x)
    background = base + gradient[..., None] + _bilinear(blobs, grid_y, grid_x)
    return np.ascontiguousarray(background.transpose(2, 0, 1), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# trajectories: one forward generator per pair; per frame centre (y, x) px, radius px, angle rad, opacity


@dataclass(frozen=True)
class _Track:
    cy: np.ndarray
    cx: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    alpha: np.ndarray


def _progress(rng: np.random.Generator, frames: int) -> np.ndarray:
    """0 -> 1 over the clip with a random ease, so speed varies within and across videos."""
    return np.linspace(0.0, 1.0, frames) ** rng.uniform(0.75, 1.33)


def _track(frames: int, cy, cx, radius, angle=0.0, alpha=1.0) -> _Track:
    full = [np.broadcast_to(np.asarray(value, dtype=np.float64), (frames,)) for value in (cy, cx, radius, angle, alpha)]
    return _Track(*full)


def _slide(rng, frames, along: int, size: tuple[int, int]) -> _Track:
    """Left to right (along=1) or top to bottom (along=0), over at least 30% of that side."""
    short = min(size)
    radius = rng.uniform(0.14, 0.22) * short
    start = rng.uniform(radius, 0.35 * size[along])
    end = rng.uniform(0.65 * size[along], size[along] - radius)
    drift = rng.uniform(-0.05, 0.05) * short * np.linspace(-1, 1, frames)
    across = rng.uniform(radius, size[1 - along] - radius) + drift
    main = start + (end - start) * _progress(rng, frames)
    cy, cx = (main, across) if along == 0 else (across, main)
    return _track(frames, cy, cx, radius, rng.uniform(0, 2 * np.pi))


def _centre(rng, size: tuple[int, int], margin: float) -> tuple[float, float]:
    return rng.uniform(margin, size[0] - margin), rng.uniform(margin, size[1] - margin)


def _grow(rng, frames, size) -> _Track:
    largest = rng.uniform(0.25, 0.4) * min(size)
    smallest = largest * rng.uniform(0.3, 0.5)
    cy, cx = _centre(rng, size, largest)
    return _track(frames, cy, cx, smallest + (largest - smallest) * _progress(rng, frames), rng.uniform(0, 2 * np.pi))


def _spin(rng, frames, size) -> _Track:
    # at most 200 degrees: 8 frames sampled from the clip turn < 40 degrees each, below half of any SPIN_SHAPES period
    radius = rng.uniform(0.25, 0.38) * min(size)
    cy, cx = _centre(rng, size, radius)
    start = rng.uniform(0, 2 * np.pi)
    return _track(frames, cy, cx, radius, start + np.radians(rng.uniform(100, 200)) * _progress(rng, frames))


def _fade(rng, frames, size) -> _Track:
    radius = rng.uniform(0.18, 0.3) * min(size)
    cy, cx = _centre(rng, size, radius)
    low = rng.uniform(0.0, 0.1)
    return _track(frames, cy, cx, radius, rng.uniform(0, 2 * np.pi), low + (1 - low) * _progress(rng, frames))


def _orbit(rng, frames, size) -> _Track:
    short = min(size)
    radius, orbit = rng.uniform(0.12, 0.16) * short, rng.uniform(0.18, 0.25) * short
    cy, cx = _centre(rng, size, radius + orbit)
    theta = rng.uniform(0, 2 * np.pi) + np.radians(rng.uniform(180, 300)) * _progress(rng, frames)
    # image y points down, so a growing angle turns clockwise on screen
    return _track(frames, cy + orbit * np.sin(theta), cx + orbit * np.cos(theta), radius, rng.uniform(0, 2 * np.pi))


_FORWARD = {
    "horizontal": lambda rng, frames, size: _slide(rng, frames, 1, size),
    "vertical": lambda rng, frames, size: _slide(rng, frames, 0, size),
    "scale": _grow,
    "spin": _spin,
    "fade": _fade,
    "orbit": _orbit,
}


# ----------------------------------------------------------------------------------------------------------------
# one sample


class Sample:
    """All random draws of one video; frame(t) renders forward frame t on demand."""

    def __init__(self, pair: str, rng: np.random.Generator, frames: int, size: tuple[int, int],
                 shapes: Sequence[str] | None = None, textures: Sequence[str] = TEXTURES):
        self.size = size
        self.background = _draw_background(rng, *size)
        shapes = shapes or (SPIN_SHAPES if pair == "spin" else SHAPES)
        self.look = _draw_look(rng, shapes, self.background.mean(axis=(1, 2)), textures)
        self.track = _FORWARD[pair](rng, frames, size)
        self.noise_sigma = float(rng.uniform(0, 5)) if rng.uniform() < 0.7 else 0.0
        # per-frame noise is keyed by the forward frame index, so reversal stays exact
        self.noise_seed = int(rng.integers(2**63))

    def frame(self, t: int) -> np.ndarray:
        height, width = self.size
        image = self.background.copy()
        if self.noise_sigma:
            noise = np.random.default_rng((self.noise_seed, t)).standard_normal((height, width), dtype=np.float32)
            image += self.noise_sigma * noise
        track = self.track
        # python floats keep the pixel maths in float32 (numpy float64 scalars would promote it)
        cy, cx, radius, angle = (float(value[t]) for value in (track.cy, track.cx, track.radius, track.angle))
        reach = radius * 1.5 + 1  # every shape lies within 1.42 radii of its centre
        y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
        x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
        if y0 < y1 and x0 < x1:
            dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None] / radius
            dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :] / radius
            cos, sin = math.cos(angle), math.sin(angle)
            u, v = cos * dx + sin * dy, cos * dy - sin * dx  # rotate the pixel grid by -angle into object space
            coverage = np.clip(0.5 - radius * _shape_distance(self.look.shape, u, v), 0, 1) * float(track.alpha[t])
            self._paint(image[:, y0:y1, x0:x1], coverage, self.look.mix(u, v))
        return np.ascontiguousarray(np.rint(np.clip(image, 0, 255)).astype(np.uint8).transpose(1, 2, 0))

    def _paint(self, patch: np.ndarray, coverage: np.ndarray, mix: np.ndarray | None) -> None:
        for channel, (first, second) in enumerate(zip(self.look.colour.tolist(), self.look.colour2.tolist())):
            colour = first if mix is None else first + (second - first) * mix
            patch[channel] += coverage * (colour - patch[channel])


def iter_frames(class_index: int | str, rng: np.random.Generator, frames: int, size) -> Iterator[np.ndarray]:
    """Yield the frames of one sample of a class one at a time (uint8 (H, W, 3)); bounded memory for long clips.

    class_index indexes CLASS_NAMES (or is a class name); class 2k+1 is class 2k's sample played backwards."""
    index, frames, size = _class_index(class_index), _check_frames(frames), check_size(size)
    sample = Sample(list(PAIRS)[index // 2], rng, frames, size)
    order = range(frames - 1, -1, -1) if index % 2 else range(frames)
    return (sample.frame(t) for t in order)


def render(class_index: int | str, rng: np.random.Generator, frames: int, size) -> np.ndarray:
    """One sample of a class as a uint8 array (T, H, W, 3)."""
    return np.stack(list(iter_frames(class_index, rng, frames, size)))


# ----------------------------------------------------------------------------------------------------------------
# encoding


def encode_video(path, frames_iter: Iterable[np.ndarray], fps=12, codec: str = "h264", *, crf: int | None = None,
                 gop: int | None = None, threads: int = 1) -> int:
    """Encode uint8 RGB frames (H, W, 3) to an .mp4 (libx264) or .webm (libvpx-vp9) file, yuv420p; returns the count.

    One encoder thread (the default), bitexact muxing and no x264 macroblock-tree keep the output byte-identical
    from run to run. gop=None keeps the encoder's keyframe interval; crf=None uses the codec's default in CODECS.
    A failed encode leaves no file behind."""
    encoder, _, container_format, _ = _check_codec(codec)
    options = _encoder_options(codec, crf, gop)
    rate = _check_fps(fps)
    frames = iter(frames_iter)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"no frames to encode into {path}")
    first = np.asarray(first)
    if first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"frames must be uint8 arrays (H, W, 3), got {first.dtype} {first.shape}")
    _check_codec(codec, first.shape[:2])
    try:
        return _mux(str(path), itertools.chain([first], frames), first.shape, container_format, encoder, rate,
                    options, threads)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


def _encoder_options(codec: str, crf: int | None, gop: int | None) -> dict[str, str]:
    top = 51 if codec == "h264" else 63
    if crf is not None and not (isinstance(crf, (int, np.integer)) and 0 <= crf <= top):
        raise ValueError(f"crf must be an integer from 0 to {top} for {codec}, got {crf!r}")
    options = {"crf": str(CODECS[codec][3] if crf is None else int(crf))}
    if codec == "h264":
        # the macroblock tree reads uninitialised memory at the end of short clips: output then varies with the
        # process's heap (measured here); without it x264 is bit-exact, at a few percent of size
        options.update({"preset": "veryfast", "x264-params": "mbtree=0"})
    else:  # constant quality needs a zero target bitrate; cpu-used 5 trades a little size for ~5x speed
        options.update({"b": "0", "deadline": "good", "cpu-used": "5"})
    if gop is not None:
        if not isinstance(gop, (int, np.integer)) or gop < 1:
            raise ValueError(f"gop must be a positive number of frames, got {gop!r}")
        options["g"] = str(int(gop))
    return options


def _mux(path: str, frames: Iterable, shape: tuple, container_format: str, encoder: str, rate: Fraction,
         options: dict[str, str], threads: int) -> int:
    import av

    count = 0
    with av.open(path, "w", format=container_format, options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        stream.height, stream.width = shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = threads
        for frame in frames:
            frame = np.ascontiguousarray(frame)
            if frame.shape != shape or frame.dtype != np.uint8:
                raise ValueError(f"frame {count} is {frame.dtype} {frame.shape}, expected uint8 {shape}")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            count += 1
        container.mux(stream.encode())
    return count


# ----------------------------------------------------------------------------------------------------------------
# the dataset


@dataclass(frozen=True)
class _Job:
    root: str
    relpath: str
    class_index: int  # into CLASS_NAMES
    seed: tuple[int, int, int]
    frames: int
    size: tuple[int, int]
    fps: Fraction
    codec: str
    crf: int | None
    gop: int | None


def _make_video(job: _Job) -> str:
    target = Path(job.root) / job.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    rng = np.random.default_rng(job.seed)
    encode_video(partial, iter_frames(job.class_index, rng, job.frames, job.size), job.fps, job.codec,
                 crf=job.crf, gop=job.gop)
    os.replace(partial, target)  # a crash never leaves a truncated video under its final name
    return job.relpath


def _check_counts(videos, classes: int, val_fraction, workers) -> int:
    if not isinstance(videos, (int, np.integer)) or videos < classes or videos % classes:
        raise ValueError(f"videos must be a positive multiple of the number of classes ({classes}), got {videos!r}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    return videos // classes


def _val_count(per_class: int, val_fraction: float) -> int:
    if val_fraction == 0 or per_class < 2:
        return 0
    return min(max(round(per_class * val_fraction), 1), per_class - 1)


def _drain(results: Iterable, total: int, progress: bool) -> None:
    if progress:
        from tqdm import tqdm

        results = tqdm(results, total=total, desc="synthetic videos", unit="video")
    for _ in results:
        pass


def _run(jobs: list[_Job], workers: int, progress: bool) -> None:
    if workers == 1:
        _drain(map(_make_video, jobs), len(jobs), progress)
        return
    # spawn: safe even when the parent already runs threads, CUDA or DALI
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        chunk = max(1, len(jobs) // (8 * workers))
        _drain(pool.imap_unordered(_make_video, jobs, chunksize=chunk), len(jobs), progress)


def generate(root, videos: int = 200, frames: int = 32, size=64, fps=12, codec: str = "h264", seed: int = 0,
             val_fraction: float = 0.2, workers: int = 1, progress: bool = True, *,
             classes: int | Sequence[str] | None = None, crf: int | None = None, gop: int | None = None) -> dict:
    """Write a balanced synthetic dataset of encoded videos plus train/val/classes lists under root.

    videos is the total (a multiple of the number of classes); each class's last round(n * val_fraction) videos go
    to val (videos are independent draws, so this split is unbiased). Video k of class c is drawn from
    default_rng((seed, c, k)) with c the index into CLASS_NAMES, so results do not depend on workers, and a class's
    videos do not change when other classes are added. Returns {"train", "val", "classes", "videos"}."""
    names = pick_classes(classes)
    frames, size = _check_frames(frames), check_size(size)
    suffix = _check_codec(codec, size)[1]
    fps = _check_fps(fps)
    _encoder_options(codec, crf, gop)  # fail here, not in a worker
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    per_class = _check_counts(videos, len(names), val_fraction, workers)
    n_val = _val_count(per_class, val_fraction)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs, lines = [], {"train": [], "val": []}
    for name in names:
        catalogue_index = CLASS_NAMES.index(name)
        for k in range(per_class):
            relpath = f"videos/{name}/{name}_{k:05d}{suffix}"
            jobs.append(_Job(str(root), relpath, catalogue_index, (int(seed), catalogue_index, k), frames, size,
                             fps, codec, crf, gop))
            lines["val" if k >= per_class - n_val else "train"].append(f"{relpath} {name}\n")
    _run(jobs, min(workers, len(jobs)), progress)
    for split, split_lines in lines.items():
        write_text(root / f"{split}.txt", "".join(split_lines))
    write_text(root / "classes.txt", "".join(f"{name}\n" for name in names))
    return {"train": str(root / "train.txt"), "val": str(root / "val.txt"), "classes": names,
            "videos": len(jobs)}
