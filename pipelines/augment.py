"""Clip augmentation: one set of random parameters per clip, applied alike to every frame.

The augmentations are units (`augment_units`): each holds its config fields and their check, its random draw, its
named slot of the per-clip parameter vector and its DALI operator. `AugmentConfig` is their fields together (the
`augment.*` config keys); the packing of the vector and the graph below are loops over `TRAIN_UNITS`.

Two halves. The parameters are drawn with numpy in the external-source callback from the sample's own generator
(`sampling.sample_rng`), unit by unit in `TRAIN_UNITS` order, so a sample's augmentation depends only on (seed,
epoch, video, view), never on worker count or read order, and the boxes are unit-testable. The DALI functions
apply them to an HWC frame or an FHWC clip alike: the frame path gives every frame of a clip its own sample carrying
the clip's parameters, the video path one FHWC sample per clip (DALI's resize / color_twist / crop_mirror_normalize
treat F as a sequence axis and use one argument per sample). Either way every frame of a clip gets the same
transform.

Parameter vector (float32, `param_count(cfg)` long), slots in order (`train_layout(cfg)`, `EVAL_LAYOUT`):
  training:   box 4 (x0, y0, x1, y1 relative crop box), mirror 1, colour 4 (brightness, contrast, saturation, hue
              in degrees), erase 4 (relative random-erasing box of the output crop, all 0 when not erased), then
              with RandAugment rand_augment 2n (n operation indices and n signs)
  evaluation: resize 2 (width, height), corner 2 (crop x0, y0 in integer pixels of the resized frame), mirror 1,
              then zeros (PARAMS long): what the test protocol computed (pipelines/protocols.py), used as it is
Both have a mirror slot, which the graph reads in one place (`mirror_flag`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np

from .augment_units import (EVAL_CROP_SIDES, RAND_AUGMENT_OPS, TRAIN_CROPS, WARP_MIN_SCALE, ColourJitter, EvalView,
                            Flip, GraphContext, ParamLayout, RandAugment, RandomErase, TrainCrop, center_box,
                            erase_box, flip_label_pairs, jitter_factors, multi_scale_box, rand_augment_choices,
                            random_box, random_resized_box, resize_window)

__all__ = ["AugmentConfig", "TRAIN_UNITS", "PARAMS", "EVAL_LAYOUT", "EVAL_CROPS", "EVAL_CROP_SIDES", "TRAIN_CROPS",
           "RAND_AUGMENT_OPS", "WARP_MIN_SCALE", "train_layout", "param_count", "train_params", "view_params",
           "train_transform", "normalised_transform", "eval_transform", "mirror_flag", "output_layout", "normalize",
           "center_box", "multi_scale_box", "random_resized_box", "random_box", "erase_box", "flip_label_pairs",
           "jitter_factors", "rand_augment_choices", "resize_window"]

# the training units in vector, draw and application order
TRAIN_UNITS = (TrainCrop, Flip, ColourJitter, RandomErase, RandAugment)
EVAL_CROPS = (1, 3, 5, 10)
# an evaluation view: the protocol's resize (w, h) and crop corner, and the mirror flag; as long as a training vector
# without RandAugment, so both kinds of vector have one shape in a loader without it
EVAL_LAYOUT = ParamLayout([("resize", 2), ("corner", 2), ("mirror", 1)],
                          size=sum(unit().width() for unit in TRAIN_UNITS))
PARAMS = EVAL_LAYOUT.size  # the training vector without RandAugment's 2n, and every evaluation vector


# dataclasses take the fields of the last base first: these list the keys as TRAIN_UNITS, then EvalView's
@dataclass(frozen=True)
class AugmentConfig(EvalView, RandAugment, RandomErase, ColourJitter, Flip, TrainCrop):
    """The `augment` config: every unit's fields, one flat set of keys (`augment.flip`, `augment.erase`, ...). It
    inherits the units for their fields only: their checks, draws and operators are called on `units`, the units
    built from this config's values, never on the config itself."""

    def __post_init__(self):
        _ = self.units  # building the units runs each one's check of its own keys, in TRAIN_UNITS order
        EvalView.check(self)

    @cached_property
    def units(self) -> tuple:
        """The training units with this config's values, in TRAIN_UNITS order."""
        return tuple(unit(**{f.name: getattr(self, f.name) for f in fields(unit)}) for unit in TRAIN_UNITS)

    @cached_property
    def layout(self) -> ParamLayout:
        return train_layout(self)

    def unit(self, kind: type):
        """This config's unit of class `kind`."""
        return next(u for u in self.units if isinstance(u, kind))


def train_layout(cfg: AugmentConfig) -> ParamLayout:
    return ParamLayout([(unit.slot, unit.width()) for unit in cfg.units])


def param_count(cfg: AugmentConfig, training: bool = True) -> int:
    return cfg.layout.size if training else PARAMS


def train_params(rng: np.random.Generator, width: int, height: int, cfg: AugmentConfig,
                 crop_size: int = 0) -> np.ndarray:
    """The parameter vector of one training clip (see the module docstring): each unit's draw in turn. `crop_size`,
    the model's, is needed by the "random" crop, scale jitter and random erasing."""
    if crop_size < 1 and any(unit.needs_crop_size() for unit in cfg.units):
        raise ValueError("the random crop, scale_jitter and erase need the model's crop_size")
    return cfg.layout.pack({unit.slot: unit.draw(rng, width, height, crop_size) for unit in cfg.units})


def view_params(resize: tuple, box: tuple, flip: bool) -> np.ndarray:
    """The parameter vector of one evaluation view: a protocols.Box's resize (w, h), box corner and mirror."""
    return EVAL_LAYOUT.pack({"resize": resize, "corner": box[:2], "mirror": [float(flip)]})


# --------------------------------------------------------------------------------------------- DALI side


def mirror_flag(params, layout: ParamLayout):
    """The mirror flag of a training or evaluation vector, for crop_mirror_normalize (Flip's operator)."""
    from nvidia.dali import fn, types

    return fn.cast(layout.values(params, "mirror").at(), dtype=types.INT32)


def train_transform(clip, params, crop_size: int, cfg: AugmentConfig, cropped: bool = False,
                    exact_resize: bool = False):
    """HWC frame or FHWC clip, uint8 -> (crop_size x crop_size uint8 frame or clip, mirror flag): each unit's
    operator on the pixels in TRAIN_UNITS order (crop box and resize, colour, RandAugment). `cropped`: the decoder
    cut the box already (`resize_window`, which needs enable_conditionals unless `exact_resize`)."""
    graph = GraphContext(crop_size, cropped, exact_resize)
    for unit in cfg.units:
        clip = unit.pixels(clip, cfg.layout.values(params, unit.slot), graph)
    return clip, mirror_flag(params, cfg.layout)


def needs_conditionals(cfg: AugmentConfig) -> bool:
    """Whether a unit's operator branches per sample (DALI's enable_conditionals)."""
    return any(unit.needs_conditionals() for unit in cfg.units)


def normalised_transform(clip, params, cfg: AugmentConfig, dali_dtype, layout: str):
    """The normalised training frame or clip through each unit's operator on normalised values (random erasing)."""
    graph = GraphContext(0, dali_dtype=dali_dtype, layout=layout)
    for unit in cfg.units:
        clip = unit.normalised(clip, cfg.layout.values(params, unit.slot), graph)
    return clip


def eval_transform(clip, params, crop: int):
    """HWC frame or FHWC clip, uint8 -> the view's crop x crop window of the frame resized to the view's size, and
    its mirror flag. Sizes and corners come computed from the source (integer pixels, the protocol's rounding):
    nothing is rounded here."""
    from nvidia.dali import fn, types

    resize, corner = EVAL_LAYOUT.values(params, "resize"), EVAL_LAYOUT.values(params, "corner")
    clip = fn.resize(clip, resize_x=resize.at(0), resize_y=resize.at(1), antialias=True)
    start = fn.cast(fn.stack(corner.at(0), corner.at(1)), dtype=types.INT32)
    clip = fn.slice(clip, start=start, shape=[crop, crop], axis_names="WH")
    return clip, mirror_flag(params, EVAL_LAYOUT)


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
