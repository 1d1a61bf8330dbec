"""timm-style registry of names and contracts: variants register by import (`@register_model`), and
models/factory.py's `create_model` builds them by name.

Every model carries an `InputContract` saying what clips it expects, so the data pipeline
configures itself from the model and never the other way round.

The registry also knows, without importing anything, which module registers which name: it reads the
package's sources (`source_index`) for module-level `@register_model` functions and `register_alias(...)`
calls. So listing names costs no torch and no family, and a family is imported when one of its models is
built (`builder`). The registrations themselves stay the one source of truth: the names an import
registers must equal the names the sources show (tests/test_models_startup.py).
"""
from __future__ import annotations

import ast
import fnmatch
import importlib
import inspect
import typing
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported by what builds or runs a model, not by naming one
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
        import torch

        return torch.randn(self.input_shape(batch), **tensor_kwargs)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "InputContract":
        return replace(self, **changes)


_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_aliases: dict[str, str] = {}
# decorators by which a module-level function registers itself on import (models, or checkpoint origins)
REGISTERING_DECORATORS = ("register_model", "register_origin")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _entrypoints:
        raise ValueError(f"model {name!r} registered twice")
    _entrypoints[name] = fn
    return fn


def register_alias(alias: str, name: str) -> None:
    _aliases[alias] = name


# ------------------------------------------------------------------------------ what the sources register


@dataclass(frozen=True)
class SourceIndex:
    """What the package's modules register when imported, read from their source."""

    models: dict  # model name -> module (the file's stem)
    aliases: dict  # alias -> model name
    registering: tuple  # every module that registers a model or a checkpoint origin


@lru_cache(maxsize=None)
def source_index() -> SourceIndex:
    models, aliases, registering = {}, {}, []
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "@register_" not in text and "register_alias(" not in text:
            continue  # most modules register nothing: no need to parse them
        found = _registrations(ast.parse(text, filename=str(path)))
        for name in found["models"]:
            if name in models:
                raise ValueError(f"model {name!r} registered twice ({models[name]}.py and {path.stem}.py)")
            models[name] = path.stem
        aliases.update(found["aliases"])
        if found["registers"]:
            registering.append(path.stem)
    return SourceIndex(models, aliases, tuple(registering))


def _registrations(tree: ast.Module) -> dict:
    """Module-level registrations in one parsed module: decorated functions and literal register_alias calls."""
    found = {"models": [], "aliases": {}, "registers": False}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            decorators = {_called_name(d) for d in node.decorator_list}
            if "register_model" in decorators:
                found["models"].append(node.name)
            found["registers"] |= bool(decorators & set(REGISTERING_DECORATORS))
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
              and _called_name(node.value.func) == "register_alias"):
            alias, name = (ast.literal_eval(arg) for arg in node.value.args)
            found["aliases"][alias] = name
            found["registers"] = True
    return found


def _called_name(node: ast.expr) -> str:
    """`register_model` for `@register_model`, `@registry.register_model` or `register_model(...)`."""
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def import_families() -> None:
    """Import every module that registers models or checkpoint origins (what recognising a file needs)."""
    for module in source_index().registering:
        importlib.import_module(f"{__package__}.{module}")


def builder(name: str) -> Callable[..., nn.Module]:
    """The registered function that builds `name` (or its alias's model), importing its family if need be."""
    name = resolve_name(name)
    if name not in _entrypoints:
        importlib.import_module(f"{__package__}.{source_index().models[name]}")
    if name not in _entrypoints:
        raise RuntimeError(f"models/{source_index().models[name]}.py defines {name!r} but did not register it")
    return _entrypoints[name]


# ------------------------------------------------------------------------------------------------- names


def _all_aliases() -> dict[str, str]:
    return {**source_index().aliases, **_aliases}


def list_models(pattern: str = "*", include_aliases: bool = False) -> list[str]:
    names = set(_entrypoints) | set(source_index().models)
    if include_aliases:
        names |= set(_all_aliases())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    return name in _entrypoints or name in source_index().models or name in _all_aliases()


def resolve_name(name: str) -> str:
    name = _all_aliases().get(name, name)
    if name not in _entrypoints and name not in source_index().models:
        close = [n for n in list_models() if name.split("_")[0] in n][:8]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown model {name!r} (`python -m models list` shows all){hint}")
    return name


def builder_arg_types(name: str) -> dict:
    """{argument: annotation} of what a model's builder takes by keyword: its own annotated parameters and, where it
    passes **kwargs on to the class its return annotation names, that class's. For checking `model_args` before
    anything is built; an annotation that does not resolve is left out (the builder checks its own)."""
    fn = builder(name)
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
