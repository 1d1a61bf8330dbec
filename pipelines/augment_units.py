"""The augmentation units: each one its config fields, their check, its random draw, its named run of the per-clip
parameter vector and its DALI operator, in one class (mmaction2's transforms are the model: a small unit that
holds its parameters and checks them when it is built).

A unit is a frozen dataclass whose fields are `augment.*` config keys; `augment.AugmentConfig` is their union (it
inherits every unit) and builds the units from its own values. What the loops over units in `augment` rely on:

  slot                the name of the unit's run of the training parameter vector (`ParamLayout`)
  width()             how many floats it draws per clip
  check()             its fields' validation (run when the unit is built), one ValueError naming the key
  needs_crop_size()   its draw needs the model's crop size
  draw(rng, w, h, c)  its values for one clip of a w x h frame and crop side c, from the clip's own generator;
                      it draws nothing when it is off, so turning a unit on leaves the other units' draws alone
  pixels(...)         its DALI operator on the uint8 clip (before normalisation), or the clip unchanged
  normalised(...)     its DALI operator on the normalised clip, or the clip unchanged

Every DALI operator reads its own slot through `Values`, which indexes the vector exactly as the graph always has
(`params[5]`, `params[0:2]`): the graph is the same operator for operator.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

# DALI's RandAugment suite (nvidia.dali.auto_aug.rand_augment.get_rand_augment_suite): translate x/y, shear x/y,
# rotate, brightness, contrast, color, sharpness, posterize, solarize, equalize, auto_contrast, identity
RAND_AUGMENT_OPS = 14
TRAIN_CROPS = ("multiscale", "resized", "center", "random")
ERASE_MODES = ("pixel", "const")
EVAL_CROP_SIDES = ("contract", "full")
_IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)


# --------------------------------------------------------------------------------------------- the parameter vector


@dataclass(frozen=True)
class Slot:
    """A named run of the parameter vector: `width` floats from `start`."""
    name: str
    start: int
    width: int


class Values:
    """One slot of one parameter vector (a numpy array or a DALI node): `at(i)` is its i-th value, `span(lo, hi)`
    its values lo..hi-1, both indexing the whole vector by absolute position."""

    def __init__(self, params, slot: Slot):
        self.params, self.slot = params, slot

    def at(self, i: int = 0):
        return self.params[self.slot.start + i]

    def span(self, lo: int = 0, hi: int | None = None):
        hi = self.slot.width if hi is None else hi
        return self.params[self.slot.start + lo: self.slot.start + hi]


class ParamLayout:
    """Slots in vector order, from (name, width) pairs; `size`: the vector's length (zero-padded past the slots)."""

    def __init__(self, widths: list[tuple[str, int]], size: int | None = None):
        self.slots, start = {}, 0
        for name, width in widths:
            self.slots[name] = Slot(name, start, width)
            start += width
        self.size = start if size is None else size
        if self.size < start:
            raise ValueError(f"a parameter vector of {self.size} floats cannot hold slots of {start}")

    def __getitem__(self, name: str) -> Slot:
        return self.slots[name]

    def values(self, params, name: str) -> Values:
        return Values(params, self.slots[name])

    def pack(self, values: dict) -> np.ndarray:
        """The float32 vector of {slot name: its values}; a slot's values must be exactly its width."""
        out = np.zeros(self.size, np.float64)
        for name, slot in self.slots.items():
            part = np.asarray(values[name], np.float64).reshape(-1)
            if part.size != slot.width:
                raise ValueError(f"slot {name!r} holds {slot.width} values, got {part.size}")
            out[slot.start: slot.start + slot.width] = part
        return out.astype(np.float32)


@dataclass(frozen=True)
class GraphContext:
    """What the units' DALI operators need from the graph: the model's crop side; whether the CPU decoder already
    cut the crop box (`cropped`) and whether windows go through fn.resize alone (`exact_resize`); the output dtype
    and layout of the normalised clip (random erasing's noise)."""
    crop_size: int
    cropped: bool = False
    exact_resize: bool = False
    dali_dtype: object = None
    layout: str = ""


class AugmentUnit:
    """The defaults of a unit that has no DALI operator at a stage, needs no crop size and no conditionals.
    (No annotations here: `typing.get_type_hints(AugmentConfig)` must list the config keys only.)"""
    slot = ""

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        pass

    def width(self) -> int:
        return 0

    def needs_crop_size(self) -> bool:
        return False

    def needs_conditionals(self) -> bool:
        """Its operator branches per sample (DALI's enable_conditionals)."""
        return False

    def draw(self, rng: np.random.Generator, width: int, height: int, crop_size: int) -> np.ndarray:
        return np.zeros(0)

    def pixels(self, clip, values: Values, graph: GraphContext):
        return clip

    def normalised(self, clip, values: Values, graph: GraphContext):
        return clip


# --------------------------------------------------------------------------------------------- crop


@dataclass(frozen=True)
class TrainCrop(AugmentUnit):
    """The training crop box (x0, y0, x1, y1 relative to the frame), resized to the model's crop side."""
    slot = "box"
    # TSN multi-scale crop | "resized" (random resized crop) | "center" | "random": a crop_size square anywhere
    # (PySlowFast's random crop), of the frame rescaled to a short side drawn from scale_jitter if it is set
    train_crop: str = "multiscale"
    # [min, max] short side the frame is (virtually) rescaled to before a "random" or "center" crop (PySlowFast's
    # TRAIN_JITTER_SCALES, mmaction's RandomRescale); () = off. The box is crop_size / side of the short side.
    scale_jitter: tuple = ()
    scales: tuple = (1.0, 0.875, 0.75, 0.66)  # multi-scale crop sides, relative to the short side
    max_distort: int = 1  # the width and height scales may differ by at most this many steps
    fix_crop: bool = True  # crop at fixed corner/centre offsets (TSN) instead of anywhere
    more_fix_crop: bool = True  # also the edge midpoints and quarter points (TSN's default)
    area: tuple = (0.08, 1.0)  # random resized crop: fraction of the frame's area
    ratio: tuple = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range

    def check(self) -> None:
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}, got {self.train_crop!r}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")
        if not 0 < self.area[0] <= self.area[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"bad random resized crop ranges: area {self.area}, ratio {self.ratio}")
        if self.scale_jitter and (len(self.scale_jitter) != 2 or not 0 < self.scale_jitter[0] <= self.scale_jitter[1]
                                  or self.train_crop not in ("random", "center")):
            raise ValueError(f"scale_jitter must be [min, max] sides > 0, with train_crop random or center (the "
                             f"other boxes are relative to the frame: rescaling changes nothing), got "
                             f"{self.scale_jitter} with {self.train_crop!r}")

    def width(self) -> int:
        return 4

    def needs_crop_size(self) -> bool:
        return self.train_crop == "random" or bool(self.scale_jitter)

    def draw(self, rng, width, height, crop_size):
        if self.train_crop == "random" or (self.train_crop == "center" and self.scale_jitter):
            return random_box(rng, width, height, self, crop_size, centred=self.train_crop == "center")
        if self.train_crop == "center":
            return center_box(width, height)
        return _BOXES[self.train_crop](rng, width, height, self)

    def pixels(self, clip, values, graph):
        """The box resized to crop x crop (`resize_window` when the decoder cut it out already)."""
        from nvidia.dali import fn

        if graph.cropped:
            return resize_window(clip, graph.crop_size, graph.exact_resize)
        return fn.resize(clip, size=(graph.crop_size, graph.crop_size), roi_start=fn.stack(values.at(1), values.at(0)),
                         roi_end=fn.stack(values.at(3), values.at(2)), roi_relative=True, antialias=True)


def multi_scale_box(rng: np.random.Generator, width: int, height: int, cfg: TrainCrop) -> np.ndarray:
    """TSN's multi-scale crop: sides from cfg.scales x the short side (the two scales at most max_distort
    steps apart), at a fixed corner/centre offset or anywhere. Returns (x0, y0, x1, y1) relative to the frame."""
    base = min(width, height)
    sides = [max(1, int(base * s)) for s in cfg.scales]
    pairs = [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= cfg.max_distort]
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    if cfg.fix_crop:
        offsets = _fixed_offsets(width - crop_w, height - crop_h, cfg.more_fix_crop)
        x, y = offsets[rng.integers(len(offsets))]
    else:
        x, y = rng.integers(width - crop_w + 1), rng.integers(height - crop_h + 1)
    return np.array([x / width, y / height, (x + crop_w) / width, (y + crop_h) / height])


def _fixed_offsets(free_w: int, free_h: int, more: bool) -> list[tuple[int, int]]:
    sw, sh = free_w // 4, free_h // 4
    quarters = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if more:
        quarters += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(qx * sw, qy * sh) for qx, qy in quarters]


def random_resized_box(rng: np.random.Generator, width: int, height: int, cfg: TrainCrop) -> np.ndarray:
    """torchvision's RandomResizedCrop box (10 tries, then the largest centred box within the ratio range)."""
    area = width * height
    log_ratio = np.log(cfg.ratio)
    for _ in range(10):
        target = area * rng.uniform(*cfg.area)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.integers(width - w + 1), rng.integers(height - h + 1)
            return np.array([x / width, y / height, (x + w) / width, (y + h) / height])
    aspect = width / height
    w, h = (width, round(width / cfg.ratio[0])) if aspect < cfg.ratio[0] else (
        (round(height * cfg.ratio[1]), height) if aspect > cfg.ratio[1] else (width, height))
    x, y = (width - w) // 2, (height - h) // 2
    return np.array([x / width, y / height, (x + w) / width, (y + h) / height])


def center_box(width: int, height: int) -> np.ndarray:
    """The centred square of the short side."""
    side = min(width, height)
    x, y = (width - side) / 2, (height - side) / 2
    return np.array([x / width, y / height, (x + side) / width, (y + side) / height])


def random_box(rng: np.random.Generator, width: int, height: int, cfg: TrainCrop, crop_size: int,
               centred: bool = False) -> np.ndarray:
    """A crop_size square of the frame rescaled to a short side drawn from cfg.scale_jitter (the stored short
    side when off), anywhere or `centred`. The crop is resized to crop_size anyway, so the rescale is only a box
    of crop_size / side of the short side (the whole short side when the rescaled frame is smaller)."""
    short = min(width, height)
    side = rng.integers(cfg.scale_jitter[0], cfg.scale_jitter[1] + 1) if cfg.scale_jitter else short
    box = min(short, crop_size * short / side)
    x, y = ((width - box) / 2, (height - box) / 2) if centred else \
        (rng.uniform(0, width - box), rng.uniform(0, height - box))
    return np.array([x / width, y / height, (x + box) / width, (y + box) / height])


_BOXES = {"multiscale": multi_scale_box, "resized": random_resized_box}

# Down to this scale (crop side / window side), OpenCV's bilinear warp without antialiasing stays within
# interpolation noise of fn.resize's antialiased filter. Measured on 454x256 frames of a photograph, mean absolute
# difference per frame: 0.06/255 when upscaled, 0 at 1, 0.41/255 at 0.93, 0.72/255 at 0.875 (a 256 window to 224,
# TSN's largest), and with the width shrunk further than the height's 0.875, 1.0/255 at 0.75 and 1.3/255 at 0.62.
# Windows shrunk further go to fn.resize, as do all windows with exact_resize.
WARP_MIN_SCALE = 0.85


def resize_window(window, crop_size: int, exact: bool = False):
    """A decoded crop window, HWC uint8 on the CPU -> crop_size x crop_size. Windows shrunk by at most
    WARP_MIN_SCALE (every window of TSN's multi-scale crop of a 256 short side to 224) take
    fn.experimental.warp_perspective, a bilinear warp by OpenCV's SIMD code: over 2x faster here than fn.resize,
    whose separable CPU filter was half the training pipeline's time (bench.stages, docs/benchmarks.md). The warp
    is a pure scale in DALI's pixel-corner convention, so pixel centres map as fn.resize maps them, and the border
    replicates as fn.resize clamps. The branch is per sample (every frame of a clip has the same window); it needs
    enable_conditionals."""
    from nvidia.dali import fn, types

    if exact:
        return fn.resize(window, size=(crop_size, crop_size), antialias=True)
    shape = window.shape(dtype=types.FLOAT)  # H, W, C
    limit = crop_size / WARP_MIN_SCALE
    if (shape[0] <= limit) & (shape[1] <= limit):
        window = fn.experimental.warp_perspective(window, matrix=_scale_matrix(shape, crop_size),
                                                  size=(crop_size, crop_size), interp_type=types.INTERP_LINEAR,
                                                  border_mode="replicate")
    else:
        window = fn.resize(window, size=(crop_size, crop_size), antialias=True)
    return window


def _scale_matrix(shape, crop_size: int):
    """The warp's destination -> source map, diag(window width / crop, window height / crop, 1), as a single
    arithmetic operator on the window's (H, W, C) shape."""
    from nvidia.dali import types

    per_width, per_height, one = (types.Constant(np.diag(d).astype(np.float32))
                                  for d in ([1 / crop_size, 0, 0], [0, 1 / crop_size, 0], [0, 0, 1]))
    return shape[1] * per_width + shape[0] * per_height + one


# --------------------------------------------------------------------------------------------- flip


@dataclass(frozen=True)
class Flip(AugmentUnit):
    """A mirrored clip (1.0) or not (0.0). Its DALI operator is crop_mirror_normalize's `mirror` flag, which the
    evaluation views carry in the same slot (`augment.mirror_flag`); a mirrored training clip's label swaps by
    flip_label_map in the source."""
    slot = "mirror"
    # off by default: flipping changes the label of Something-Something and the synthetic set (left/right)
    flip: bool = False
    # label swap of a flipped clip: {class: class, ...} (both ways needed) or "ssv2": SSv2's classes whose names
    # differ only by left <-> right (mmaction's Flip(flip_label_map))
    flip_label_map: dict | str | None = None

    def check(self) -> None:
        if self.flip_label_map not in (None, "ssv2") and not _class_pairs(self.flip_label_map):
            raise ValueError(f"flip_label_map must be {{class: class}} or 'ssv2', got {self.flip_label_map!r}")
        if self.flip_label_map is not None and not self.flip:
            raise ValueError("flip_label_map needs flip: true")

    def width(self) -> int:
        return 1

    def draw(self, rng, width, height, crop_size):
        return np.array([float(self.flip and rng.random() < 0.5)])


def _class_pairs(value) -> bool:
    """A {class index: class index} mapping (YAML or the command line may give the indices as text)."""
    try:
        return isinstance(value, dict) and all(int(k) >= 0 and int(v) >= 0 for k, v in value.items())
    except (TypeError, ValueError):
        return False


def flip_label_pairs(spec, classes: list[str]) -> dict[int, int]:
    """The label of a mirrored clip, {class: class}: `spec` as given (int keys, e.g. from YAML) or "ssv2": every
    class whose name with "left" and "right" swapped is another class (SSv2's "from left to right" pairs)."""
    if spec is None:
        return {}
    if spec != "ssv2":
        return {int(k): int(v) for k, v in spec.items()}
    index = {name.lower(): i for i, name in enumerate(classes)}
    swap = {"left": "right", "right": "left"}
    pairs = {}
    for i, name in enumerate(classes):
        other = re.sub(r"\b(left|right)\b", lambda m: swap[m.group(1)], name.lower())
        if other != name.lower() and other in index:
            pairs[i] = index[other]
    return pairs


# --------------------------------------------------------------------------------------------- colour


@dataclass(frozen=True)
class ColourJitter(AugmentUnit):
    """Brightness, contrast and saturation factors and a hue shift in degrees (identity when not drawn). Random
    grayscale is a saturation factor of 0: color_twist's luma is torchvision's 0.299/0.587/0.114."""
    slot = "colour"
    jitter: tuple = (0.0, 0.0, 0.0, 0.0)  # colour jitter: brightness, contrast, saturation, hue (0 = off)
    jitter_prob: float = 0.8
    grayscale: float = 0.0  # probability of a grayscale clip (torchvision's RandomGrayscale, drawn per clip)

    def check(self) -> None:
        if len(self.jitter) != 4 or any(j < 0 for j in self.jitter) or self.jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 values >= 0 (hue <= 0.5), got {self.jitter}")
        if not 0 <= self.grayscale <= 1:
            raise ValueError(f"grayscale is a probability in [0, 1], got {self.grayscale}")

    def width(self) -> int:
        return 4

    def draw(self, rng, width, height, crop_size):
        colour = list(jitter_factors(rng, self))
        if self.grayscale and rng.random() < self.grayscale:
            colour[2] = 0.0  # saturation 0: color_twist leaves the luma, torchvision's rgb_to_grayscale weights
        return np.array(colour)

    def pixels(self, clip, values, graph):
        from nvidia.dali import fn

        if not (any(self.jitter) or self.grayscale):
            return clip
        return fn.color_twist(clip, brightness=values.at(0), contrast=values.at(1), saturation=values.at(2),
                              hue=values.at(3))


def jitter_factors(rng: np.random.Generator, cfg: ColourJitter) -> tuple:
    """Brightness, contrast and saturation factors and a hue shift in degrees (identity when not applied)."""
    if not any(cfg.jitter) or rng.random() >= cfg.jitter_prob:
        return _IDENTITY_JITTER
    b, c, s, h = cfg.jitter
    factors = [rng.uniform(max(0.0, 1 - x), 1 + x) for x in (b, c, s)]
    return (*factors, rng.uniform(-h, h) * 360.0)


# --------------------------------------------------------------------------------------------- random erasing


@dataclass(frozen=True)
class RandomErase(AugmentUnit):
    """timm's RandomErasing, one box per clip (ex0, ey0, ex1, ey1 relative to the output crop, all 0 when not
    erased), after normalisation: the noise is in normalised units."""
    slot = "erase"
    # probability, area fraction and aspect ratio ranges of the box, fill "pixel" (per-pixel standard normal noise)
    # or "const" (zeros)
    erase: float = 0.0
    erase_area: tuple = (0.02, 1 / 3)
    erase_ratio: tuple = (0.3, 1 / 0.3)
    erase_mode: str = "pixel"

    def check(self) -> None:
        if not 0 <= self.erase <= 1:
            raise ValueError(f"erase is a probability in [0, 1], got {self.erase}")
        if not 0 < self.erase_area[0] <= self.erase_area[1] <= 1 or not 0 < self.erase_ratio[0] <= self.erase_ratio[1] \
                or self.erase_mode not in ERASE_MODES:
            raise ValueError(f"bad random erasing: area {self.erase_area}, ratio {self.erase_ratio}, mode "
                             f"{self.erase_mode!r} (one of {ERASE_MODES})")

    def width(self) -> int:
        return 4

    def needs_crop_size(self) -> bool:
        return bool(self.erase)

    def draw(self, rng, width, height, crop_size):
        return erase_box(rng, crop_size, self) if self.erase and rng.random() < self.erase else np.zeros(4)

    def normalised(self, clip, values, graph):
        """The box filled with per-pixel standard normal noise ("pixel") or zeros ("const"), alike in every frame."""
        from nvidia.dali import fn, types

        if not self.erase:
            return clip
        box = {"anchor": fn.stack(values.at(1), values.at(0)),
               "shape": fn.stack(values.at(3) - values.at(1), values.at(2) - values.at(0)),
               "normalized_anchor": True, "normalized_shape": True, "axis_names": "HW"}
        erased = fn.erase(clip, fill_value=0.0, **box)
        if self.erase_mode == "const":
            return erased
        # in float32: DALI's normal and its CPU arithmetic have no half; laid out so that erase finds H and W by name
        noise = fn.reshape(fn.random.normal(clip), layout=graph.layout)
        inside = noise - fn.erase(noise, fill_value=0.0, **box)
        return fn.cast(fn.cast(erased, dtype=types.FLOAT) + inside, dtype=graph.dali_dtype)


def erase_box(rng: np.random.Generator, side: int, cfg: RandomErase) -> np.ndarray:
    """timm's RandomErasing box in a side x side crop (10 tries, else none), relative (x0, y0, x1, y1)."""
    log_ratio = np.log(cfg.erase_ratio)
    for _ in range(10):
        area = side * side * rng.uniform(*cfg.erase_area)
        aspect = math.exp(rng.uniform(*log_ratio))
        h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
        if 0 < w < side and 0 < h < side:
            y, x = rng.integers(side - h + 1), rng.integers(side - w + 1)
            return np.array([x, y, x + w, y + h]) / side
    return np.zeros(4)


# --------------------------------------------------------------------------------------------- RandAugment


@dataclass(frozen=True)
class RandAugment(AugmentUnit):
    """n operation indices into DALI's RandAugment suite, then n magnitude signs (0: +, 1: -). Last in the vector
    and drawn last, so the other units' values do not depend on whether it is on."""
    slot = "rand_augment"
    rand_augment: int = 0  # RandAugment: operations per clip (0 = off)
    rand_augment_m: int = 9  # RandAugment magnitude, 0..30

    def check(self) -> None:
        if self.rand_augment < 0 or not 0 <= self.rand_augment_m <= 30:
            raise ValueError(f"rand_augment must be >= 0 and rand_augment_m in 0..30, got "
                             f"{self.rand_augment}, {self.rand_augment_m}")

    def width(self) -> int:
        return 2 * self.rand_augment

    def needs_conditionals(self) -> bool:
        return self.rand_augment > 0  # nvidia.dali.auto_aug's select

    def draw(self, rng, width, height, crop_size):
        return rand_augment_choices(rng, self.rand_augment)

    def pixels(self, clip, values, graph):
        """DALI's RandAugment (its default suite and magnitudes, as `rand_augment.rand_augment(clip, n, m)`), with
        the operations and signs the source drew instead of DALI's per-sample random draws: the frames of a clip
        are separate samples on the frame path and must share them."""
        from nvidia.dali import fn, types
        from nvidia.dali.auto_aug.core import select, signed_bin

        n = self.rand_augment
        if not n:
            return clip
        suite = rand_augment_suite()
        if len(suite) != RAND_AUGMENT_OPS:
            raise RuntimeError(f"this DALI's RandAugment suite has {len(suite)} operations, not {RAND_AUGMENT_OPS}")
        ops = fn.cast(values.span(0, n), dtype=types.INT32)
        signs = fn.cast(values.span(n, 2 * n), dtype=types.INT32)
        magnitudes = signed_bin(self.rand_augment_m, random_sign=signs)
        for level in range(n):
            clip = select(suite, ops[level], data=clip, magnitude_bin=magnitudes[level], num_magnitude_bins=31,
                          fill_value=128, interp_type=None)
        return clip


def rand_augment_suite() -> list:
    """DALI's RandAugment suite (`get_rand_augment_suite()`), with its sharpness and equalize calling `fn.filter`
    and `fn.equalize`: DALI 2.4's suite still calls their deprecated `fn.experimental` aliases, and DALI prints
    that deprecation to stderr each time a pipeline is built, whatever the warning filters say. The same
    operators with the same parameters: the pixels are identical (tests/test_warning_hygiene.py)."""
    from nvidia.dali import fn
    from nvidia.dali.auto_aug.core import augmentation
    from nvidia.dali.auto_aug.rand_augment import get_rand_augment_suite

    def sharpness(data, kernel):
        return fn.filter(data, kernel)

    def equalize(data, _):
        return fn.equalize(data)

    current = {"sharpness": sharpness, "equalize": equalize}
    return [augmentation(current[aug.name], mag_range=aug.mag_range, randomly_negate=aug.randomly_negate,
                         mag_to_param=aug.mag_to_param, param_device=aug.param_device, name=aug.name)
            if aug.name in current else aug for aug in get_rand_augment_suite()]


def rand_augment_choices(rng: np.random.Generator, n: int) -> np.ndarray:
    """n operation indices into DALI's RandAugment suite, then n magnitude signs, uniform as DALI draws them."""
    if not n:
        return np.zeros(0)
    return np.concatenate([rng.integers(RAND_AUGMENT_OPS, size=n), rng.integers(2, size=n)])


# --------------------------------------------------------------------------------------------- evaluation view


@dataclass(frozen=True)
class EvalView:
    """The evaluation views' size keys. A view's values are what the test protocol computed
    (pipelines/protocols.py), in integer pixels of the resized frame, used as they are: `augment.view_params`
    packs them and `augment.eval_transform` applies them."""
    eval_scale: float = 256 / 224  # evaluation: short side resized to round(crop_size * eval_scale)
    # evaluation crop side: the model's crop size, or "full": the whole resized short side (the test crops of
    # mmaction's ThreeCrop at the Resize scale and of IBM's --disable_scaleup, which AIM, ILA and STS report)
    eval_crop: str = "contract"

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        if self.eval_scale < 1:
            raise ValueError(f"eval_scale must be >= 1 (the crop must fit), got {self.eval_scale}")
        if self.eval_crop not in EVAL_CROP_SIDES:
            raise ValueError(f"eval_crop must be one of {EVAL_CROP_SIDES}, got {self.eval_crop!r}")

    def eval_short_side(self, crop_size: int) -> int:
        return int(round(crop_size * self.eval_scale))

    def eval_crop_side(self, crop_size: int) -> int:
        """The side of the square evaluation crops for a model whose contract crop is `crop_size`."""
        return self.eval_short_side(crop_size) if self.eval_crop == "full" else crop_size
