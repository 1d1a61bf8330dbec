"""timm-style registry: variants register by import, `create_model` builds them by name.

Every model carries an `InputContract` saying what clips it expects, so the data pipeline
configures itself from the model and never the other way round.
"""
from __future__ import annotations

import fnmatch
import inspect
import typing
from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision's video models
KINETICS_STD = (0.22803, 0.22145, 0.216989)

LAYOUTS = ("NCTHW", "NTCHW")
SAMPLINGS = ("tsn", "dense", "frame_uniform")  # frame_uniform: mmaction's (pipelines/protocols.py)


@dataclass(frozen=True)
class InputContract:
    """What a model's forward accepts: one view of one clip per batch element."""

    layout: str  # "NCTHW" (3D models) or "NTCHW" (2D and adapter models)
    num_frames: int
    crop_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    sampling: str = "tsn"  # "tsn": one frame per segment; "dense": num_frames * frame_stride
    frame_stride: int = 1  # used by dense sampling

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")

    def input_shape(self, batch: int = 1) -> tuple:
        t, s = self.num_frames, self.crop_size
        return (batch, 3, t, s, s) if self.layout == "NCTHW" else (batch, t, 3, s, s)

    def example_input(self, batch: int = 1, **tensor_kwargs) -> torch.Tensor:
        return torch.randn(self.input_shape(batch), **tensor_kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "InputContract":
        return replace(self, **changes)


_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_aliases: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _entrypoints:
        raise ValueError(f"model {name!r} registered twice")
    _entrypoints[name] = fn
    return fn


def register_alias(alias: str, name: str) -> None:
    _aliases[alias] = name


def list_models(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    names = list(_entrypoints) + (list(_aliases) if include_aliases else [])
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _entrypoints or name in _aliases


def resolve_name(name: str) -> str:
    name = _aliases.get(name, name)
    if name not in _entrypoints:
        close = [n for n in list_models() if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r} (`python -m models list` shows all){hint}")
    return name


def builder_arg_types(name: str) -> dict:
    """{argument: annotation} of what a model's builder takes by keyword: its own annotated parameters and, where it
    passes **kwargs on to the class its return annotation names, that class's. For checking `model_args` before
    anything is built; an annotation that does not resolve is left out (the builder checks its own)."""
    fn = _entrypoints[resolve_name(name)]
    targets = [fn]
    returned = _hints(fn).get("return")
    takes_more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    if takes_more and isinstance(returned, type):
        targets.append(returned.__init__)
    found = {}
    for target in targets:
        hints = _hints(target)
        for pname, param in inspect.signature(target).parameters.items():
            if pname in hints and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                found.setdefault(pname, hints[pname])
    return found


def _hints(fn) -> dict:
    try:
        return typing.get_type_hints(fn)
    except Exception:  # a name only a type checker sees: nothing to check by
        return {}


def create_model(
    name: str,
    num_classes: int = 400,
    num_frames: int | None = None,
    pretrained: str | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model. `pretrained` is a local file (timm, torchvision or CLIP state dict).

    The model's `input_contract` attribute states its input; `num_frames` overrides the default.
    """
    fn = _entrypoints[resolve_name(name)]
    kwargs = dict(overrides, num_classes=num_classes)
    if num_frames is not None:
        kwargs["num_frames"] = num_frames
    model = fn(**kwargs)
    if not isinstance(getattr(model, "input_contract", None), InputContract):
        raise TypeError(f"model {name!r} does not declare an InputContract")
    model.model_name = resolve_name(name)
    model.num_classes = num_classes
    model.build_args = dict(overrides)  # the variant's arguments, for checking files loaded into it
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, pretrained)
    return model
