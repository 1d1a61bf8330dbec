"""Clip augmentation: one set of random parameters per clip, applied alike to every frame.

Two halves. The parameters (crop box, flip, colour factors, RandAugment's operations and signs, evaluation crop
position) are drawn with numpy in the external-source callback from the sample's own generator
(`sampling.sample_rng`), so a sample's augmentation depends only on (seed, epoch, video, view), never on worker
count or read order, and the boxes are unit-testable. The DALI functions below apply them to an HWC frame or an
FHWC clip alike: the frame path gives every frame of a clip its own sample carrying the clip's parameters, the
video path one FHWC sample per clip (DALI's resize / color_twist / crop_mirror_normalize treat F as a sequence
axis and use one argument per sample). Either way every frame of a clip gets the same transform.

Parameter vector (float32, `param_count(cfg)` long):
  training:   x0, y0, x1, y1 (relative crop box), mirror, brightness, contrast, saturation, hue (degrees),
              ex0, ey0, ex1, ey1 (relative random-erasing box of the output crop, all 0 when not erased),
              then with RandAugment n operation indices and n signs (0: +, 1: -)
              (random grayscale is a saturation factor of 0: color_twist's luma is torchvision's 0.299/0.587/0.114)
  evaluation: resize width, resize height, crop x0, y0 (integer pixels of the resized frame), mirror, then zeros
              (PARAMS long): what the test protocol computed (pipelines/protocols.py), used as it is
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

PARAMS = 13
# DALI's RandAugment suite (nvidia.dali.auto_aug.rand_augment.get_rand_augment_suite): translate x/y, shear x/y,
# rotate, brightness, contrast, color, sharpness, posterize, solarize, equalize, auto_contrast, identity
RAND_AUGMENT_OPS = 14
TRAIN_CROPS = ("multiscale", "resized", "center", "random")
ERASE_MODES = ("pixel", "const")
EVAL_CROPS = (1, 3, 5, 10)
EVAL_CROP_SIDES = ("contract", "full")
_IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)


@dataclass(frozen=True)
class AugmentConfig:
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
    # off by default: flipping changes the label of Something-Something and the synthetic set (left/right)
    flip: bool = False
    jitter: tuple = (0.0, 0.0, 0.0, 0.0)  # colour jitter: brightness, contrast, saturation, hue (0 = off)
    jitter_prob: float = 0.8
    grayscale: float = 0.0  # probability of a grayscale clip (torchvision's RandomGrayscale, drawn per clip)
    # random erasing (timm's RandomErasing, one box per clip, after normalisation): probability, area fraction and
    # aspect ratio ranges of the box, fill "pixel" (per-pixel standard normal noise) or "const" (zeros)
    erase: float = 0.0
    erase_area: tuple = (0.02, 1 / 3)
    erase_ratio: tuple = (0.3, 1 / 0.3)
    erase_mode: str = "pixel"
    # label swap of a flipped clip: {class: class, ...} (both ways needed) or "ssv2": SSv2's classes whose names
    # differ only by left <-> right (mmaction's Flip(flip_label_map))
    flip_label_map: dict | str | None = None
    rand_augment: int = 0  # RandAugment: operations per clip (0 = off)
    rand_augment_m: int = 9  # RandAugment magnitude, 0..30
    eval_scale: float = 256 / 224  # evaluation: short side resized to round(crop_size * eval_scale)
    # evaluation crop side: the model's crop size, or "full": the whole resized short side (the test crops of
    # mmaction's ThreeCrop at the Resize scale and of IBM's --disable_scaleup, which AIM, ILA and STS report)
    eval_crop: str = "contract"

    def __post_init__(self):
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}, got {self.train_crop!r}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be in (0, 1], got {self.scales}")
        if not 0 < self.area[0] <= self.area[1] <= 1 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"bad random resized crop ranges: area {self.area}, ratio {self.ratio}")
        if len(self.jitter) != 4 or any(j < 0 for j in self.jitter) or self.jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 values >= 0 (hue <= 0.5), got {self.jitter}")
        if self.rand_augment < 0 or not 0 <= self.rand_augment_m <= 30:
            raise ValueError(f"rand_augment must be >= 0 and rand_augment_m in 0..30, got "
                             f"{self.rand_augment}, {self.rand_augment_m}")
        self._check_recipe_options()
        if self.eval_scale < 1:
            raise ValueError(f"eval_scale must be >= 1 (the crop must fit), got {self.eval_scale}")
        if self.eval_crop not in EVAL_CROP_SIDES:
            raise ValueError(f"eval_crop must be one of {EVAL_CROP_SIDES}, got {self.eval_crop!r}")

    def _check_recipe_options(self):
        """scale_jitter, grayscale, erase and flip_label_map."""
        if self.scale_jitter and (len(self.scale_jitter) != 2 or not 0 < self.scale_jitter[0] <= self.scale_jitter[1]
                                  or self.train_crop not in ("random", "center")):
            raise ValueError(f"scale_jitter must be [min, max] sides > 0, with train_crop random or center (the "
                             f"other boxes are relative to the frame: rescaling changes nothing), got "
                             f"{self.scale_jitter} with {self.train_crop!r}")
        for key in ("grayscale", "erase"):
            if not 0 <= getattr(self, key) <= 1:
                raise ValueError(f"{key} is a probability in [0, 1], got {getattr(self, key)}")
        if not 0 < self.erase_area[0] <= self.erase_area[1] <= 1 or not 0 < self.erase_ratio[0] <= self.erase_ratio[1] \
                or self.erase_mode not in ERASE_MODES:
            raise ValueError(f"bad random erasing: area {self.erase_area}, ratio {self.erase_ratio}, mode "
                             f"{self.erase_mode!r} (one of {ERASE_MODES})")
        if self.flip_label_map not in (None, "ssv2") and not _class_pairs(self.flip_label_map):
            raise ValueError(f"flip_label_map must be {{class: class}} or 'ssv2', got {self.flip_label_map!r}")
        if self.flip_label_map is not None and not self.flip:
            raise ValueError("flip_label_map needs flip: true")

    def eval_short_side(self, crop_size: int) -> int:
        return int(round(crop_size * self.eval_scale))

    def eval_crop_side(self, crop_size: int) -> int:
        """The side of the square evaluation crops for a model whose contract crop is `crop_size`."""
        return self.eval_short_side(crop_size) if self.eval_crop == "full" else crop_size


def _class_pairs(value) -> bool:
    """A {class index: class index} mapping (YAML or the command line may give the indices as text)."""
    try:
        return isinstance(value, dict) and all(int(k) >= 0 and int(v) >= 0 for k, v in value.items())
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------------- crop boxes


def multi_scale_box(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig) -> np.ndarray:
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


def random_resized_box(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig) -> np.ndarray:
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


def random_box(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig, crop_size: int,
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


def param_count(cfg: AugmentConfig, training: bool = True) -> int:
    return PARAMS + 2 * cfg.rand_augment if training else PARAMS


def train_params(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig,
                 crop_size: int = 0) -> np.ndarray:
    """The parameter vector of one training clip (see the module docstring). `crop_size`, the model's, is needed
    by the "random" crop, scale jitter and random erasing. A draw is made only for what is on, so turning one
    augmentation on leaves the others' draws as they were."""
    if (cfg.train_crop == "random" or cfg.scale_jitter or cfg.erase) and crop_size < 1:
        raise ValueError("the random crop, scale_jitter and erase need the model's crop_size")
    if cfg.train_crop == "random" or (cfg.train_crop == "center" and cfg.scale_jitter):
        box = random_box(rng, width, height, cfg, crop_size, centred=cfg.train_crop == "center")
    else:
        box = center_box(width, height) if cfg.train_crop == "center" else \
            _BOXES[cfg.train_crop](rng, width, height, cfg)
    mirror = float(cfg.flip and rng.random() < 0.5)
    colour = list(jitter_factors(rng, cfg))
    if cfg.grayscale and rng.random() < cfg.grayscale:
        colour[2] = 0.0  # saturation 0: color_twist leaves the luma, torchvision's rgb_to_grayscale weights
    erase = erase_box(rng, crop_size, cfg) if cfg.erase and rng.random() < cfg.erase else np.zeros(4)
    # drawn last, so the other parameters do not depend on whether RandAugment is on
    ops = rand_augment_choices(rng, cfg.rand_augment)
    return np.concatenate([box, [mirror], colour, erase, ops]).astype(np.float32)


def erase_box(rng: np.random.Generator, side: int, cfg: AugmentConfig) -> np.ndarray:
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


def rand_augment_choices(rng: np.random.Generator, n: int) -> np.ndarray:
    """n operation indices into DALI's RandAugment suite, then n magnitude signs, uniform as DALI draws them."""
    if not n:
        return np.zeros(0)
    return np.concatenate([rng.integers(RAND_AUGMENT_OPS, size=n), rng.integers(2, size=n)])


def jitter_factors(rng: np.random.Generator, cfg: AugmentConfig) -> tuple:
    """Brightness, contrast and saturation factors and a hue shift in degrees (identity when not applied)."""
    if not any(cfg.jitter) or rng.random() >= cfg.jitter_prob:
        return _IDENTITY_JITTER
    b, c, s, h = cfg.jitter
    factors = [rng.uniform(max(0.0, 1 - x), 1 + x) for x in (b, c, s)]
    return (*factors, rng.uniform(-h, h) * 360.0)


def view_params(resize: tuple, box: tuple, flip: bool) -> np.ndarray:
    """The parameter vector of one evaluation view: a protocols.Box's resize (w, h), box corner and mirror."""
    out = np.zeros(PARAMS, np.float32)
    out[:5] = (*resize, box[0], box[1], float(flip))
    return out


# --------------------------------------------------------------------------------------------- DALI side


def train_transform(clip, params, crop_size: int, cfg: AugmentConfig, cropped: bool = False,
                    exact_resize: bool = False):
    """HWC frame or FHWC clip, uint8 -> (crop_size x crop_size uint8 frame or clip, mirror flag): crop box and
    resize (`resize_window` when the decoder `cropped` the box already: it needs enable_conditionals unless
    `exact_resize`), colour, RandAugment."""
    from nvidia.dali import fn, types

    if cropped:
        clip = resize_window(clip, crop_size, exact_resize)
    else:
        clip = fn.resize(clip, size=(crop_size, crop_size), roi_start=fn.stack(params[1], params[0]),
                         roi_end=fn.stack(params[3], params[2]), roi_relative=True, antialias=True)
    if any(cfg.jitter) or cfg.grayscale:
        clip = fn.color_twist(clip, brightness=params[5], contrast=params[6], saturation=params[7], hue=params[8])
    if cfg.rand_augment:
        clip = rand_augment(clip, params, cfg)
    return clip, fn.cast(params[4], dtype=types.INT32)


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


def rand_augment(clip, params, cfg: AugmentConfig):
    """DALI's RandAugment (its default suite and magnitudes, as `rand_augment.rand_augment(clip, n, m)`), with the
    operations and signs the source drew (`rand_augment_choices`) instead of DALI's per-sample random draws: the
    frames of a clip are separate samples on the frame path and must share them. Needs enable_conditionals."""
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug.core import select, signed_bin
    from nvidia.dali.auto_aug.rand_augment import get_rand_augment_suite

    suite = get_rand_augment_suite()
    if len(suite) != RAND_AUGMENT_OPS:
        raise RuntimeError(f"this DALI's RandAugment suite has {len(suite)} operations, not {RAND_AUGMENT_OPS}")
    n = cfg.rand_augment
    ops = fn.cast(params[PARAMS: PARAMS + n], dtype=types.INT32)
    signs = fn.cast(params[PARAMS + n: PARAMS + 2 * n], dtype=types.INT32)
    magnitudes = signed_bin(cfg.rand_augment_m, random_sign=signs)
    for level in range(n):
        clip = select(suite, ops[level], data=clip, magnitude_bin=magnitudes[level], num_magnitude_bins=31,
                      fill_value=128, interp_type=None)
    return clip


def random_erase(clip, params, cfg: AugmentConfig, dali_dtype, layout: str):
    """The normalised frame or clip with the source's erasing box (params 9..12, empty when not erased) filled
    with per-pixel standard normal noise ("pixel") or zeros ("const"), the same box in every frame."""
    from nvidia.dali import fn, types

    box = {"anchor": fn.stack(params[10], params[9]),
           "shape": fn.stack(params[12] - params[10], params[11] - params[9]),
           "normalized_anchor": True, "normalized_shape": True, "axis_names": "HW"}
    erased = fn.erase(clip, fill_value=0.0, **box)
    if cfg.erase_mode == "const":
        return erased
    # in float32: DALI's normal and its CPU arithmetic have no half; laid out so that erase finds H and W by name
    noise = fn.reshape(fn.random.normal(clip), layout=layout)
    inside = noise - fn.erase(noise, fill_value=0.0, **box)
    return fn.cast(fn.cast(erased, dtype=types.FLOAT) + inside, dtype=dali_dtype)


def eval_transform(clip, params, crop: int):
    """HWC frame or FHWC clip, uint8 -> the view's crop x crop window of the frame resized to the view's size, and
    its mirror flag. Sizes and corners come computed from the source (integer pixels, the protocol's rounding):
    nothing is rounded here."""
    from nvidia.dali import fn, types

    clip = fn.resize(clip, resize_x=params[0], resize_y=params[1], antialias=True)
    corner = fn.cast(fn.stack(params[2], params[3]), dtype=types.INT32)
    clip = fn.slice(clip, start=corner, shape=[crop, crop], axis_names="WH")
    return clip, fn.cast(params[4], dtype=types.INT32)


def output_layout(layout: str, per_frame: bool) -> str:
    """The layout crop_mirror_normalize writes for a model's "NCTHW" | "NTCHW" contract. Channels stay last for
    NCTHW: the loader's (B, T, H, W, C) batch permuted to NCTHW is then channels_last_3d, what 3D convolutions
    run fastest on, with no copy. NTCHW frames are CHW, so (B * T, C, H, W) is (B, T, C, H, W) as it is."""
    if layout not in ("NCTHW", "NTCHW"):
        raise ValueError(f"layout must be NCTHW or NTCHW, got {layout!r}")
    return ("" if per_frame else "F") + ("HWC" if layout == "NCTHW" else "CHW")


def normalize(clip, mean, std, layout: str, dali_dtype, mirror, **crop):
    """(x - mean * 255) / (std * 255), optional mirror and crop, written in `layout` (a DALI layout such as
    "CFHW", "FHWC", "CHW"; see `output_layout`)."""
    from nvidia.dali import fn

    return fn.crop_mirror_normalize(clip, mean=[255.0 * m for m in mean], std=[255.0 * s for s in std],
                                    mirror=mirror, output_layout=layout, dtype=dali_dtype, **crop)
