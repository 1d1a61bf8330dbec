"""Checkpoint files of any supported origin -> the right registered model, loaded exactly.

`recognize_file(path, **overrides)` reads a file (never running code from it) and asks every registered
*origin recogniser* whether it knows the file; models/factory.py's `from_checkpoint` then builds the model
the file describes and loads it strictly.
Origins: this toolkit's own checkpoints (here), and the released files of the five source projects,
whose recognisers live beside their models (timm's `checkpoint_filter_fn` convention) and register on
import with `@register_origin`:

    @register_origin
    def ibm_action_recognition(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
        ...  # None: not this origin's file; raise CheckpointError: this origin's, but unusable

A recogniser identifies the variant from the file itself (container fields such as IBM's `arch`
string or SIFAR's `args`, key names, shapes) and returns the registered model name, the model
arguments that variant needs, and the state dict converted to the toolkit model's keys. What the file
cannot tell (usually the number of frames) comes from `overrides`; an override that contradicts the
file is refused with one line, so nothing loads into the wrong variant.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch

from .registry import import_families

log = logging.getLogger(__name__)

# The only non-plain types a supported file may hold: SIFAR's files keep their argparse.Namespace; ILA's keep
# their yacs config (a dict subclass), read as the OrderedDict of its items without importing yacs.
SAFE_GLOBALS = (argparse.Namespace, (OrderedDict, "yacs.config.CfgNode"))
# Where the tensors sit in the containers of the supported origins, in order of preference.
STATE_DICT_KEYS = ("state_dict", "model", "module", "model_state")
# Arguments every recogniser accepts from the caller as they are (the file cannot know them).
CALLER_ARGS = ("num_frames",)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or placed; the message is one line for the user."""


@dataclass
class Checkpoint:
    """A file as read from disk: the container as saved and the tensors found in it."""

    path: str
    container: object  # the object the saving code passed to torch.save
    state_dict: dict[str, torch.Tensor]  # the model's tensors, 'module.' prefixes removed
    prefer_ema: bool = True  # toolkit checkpoints: the EMA weights rather than the raw ones

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def field(self, key: str, default=None):
        return self.container.get(key, default) if isinstance(self.container, dict) else default


@dataclass
class Recognized:
    """What a recogniser found: build `model` with `model_args` and load `state_dict` into it."""

    origin: str  # for messages: "IBM action-recognition (arch '...')"
    model: str  # a registered model name
    model_args: dict = field(default_factory=dict)  # num_classes and the variant's arguments
    state_dict: dict = field(default_factory=dict)  # in the toolkit model's own keys
    contract: dict | None = None  # an InputContract's fields, when the file records one (toolkit files)
    classes: list | None = None  # class names, when the file records them
    config: dict | None = None  # the training configuration, when the file records it (toolkit files)
    needs: tuple = ()  # overrides the caller must give (e.g. "class_names" for a text classifier)
    # explicit model arguments may differ from the file's: True any (own checkpoints), or a tuple of names
    caller_may_change: bool | tuple = False
    notes: list = field(default_factory=list)  # said once at INFO when the model is built


Recognizer = Callable[[Checkpoint, dict], "Recognized | None"]
_recognizers: list[Recognizer] = []


def register_origin(fn: Recognizer) -> Recognizer:
    _recognizers.append(fn)
    return fn


# ----------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str) -> Checkpoint:
    """Read a .pth/.pt/.tar (weights only: no pickled code runs) or .safetensors file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except Exception as err:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None
        return Checkpoint(path, tensors, dict(tensors))
    container = _torch_load(path)
    return Checkpoint(path, container, _find_state_dict(container, path))


def _torch_load(path: str):
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    if _is_torchscript(path):  # OpenAI CLIP ships TorchScript archives; loading them runs no Python pickle code
        return load_torchscript(path).state_dict()
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)), warnings.catch_warnings():
            # torch's note on a file pickled with a protocol other than 2, asking to file an issue with torch: such a
            # file fails with the one line below (torch 2.14 reads none); the note is not the user's to act on
            warnings.filterwarnings("ignore", r"Detected pickle protocol \d+ in the checkpoint", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused: the file holds Python objects other than tensors and plain data, "
                              f"which could run code when loaded ({_unsafe_global(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or damaged "
                              f"({_first_line(err)})") from None


def load_torchscript(path: str, **kwargs) -> torch.jit.ScriptModule:
    """`torch.jit.load` on the CPU, without torch's note that TorchScript is deprecated (a FutureWarning on every
    load): reading CLIP's archives and checking `models export`'s TorchScript files is what the user asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
        return torch.jit.load(path, map_location="cpu", **kwargs)


def _is_torchscript(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _unsafe_global(err: Exception) -> str:
    text = str(err)
    for line in text.splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.strip().removeprefix("WeightsUnpickler error: ").split(" was not an allowed")[0]
    return _first_line(err)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _find_state_dict(container, path: str) -> dict[str, torch.Tensor]:
    sd = container
    for key in STATE_DICT_KEYS:
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {_keys(container)})")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _keys(obj) -> str:
    return ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__


# ------------------------------------------------------------------------------------------- recognising


def recognize(ckpt: Checkpoint, overrides: dict | None = None, required: bool = True) -> Recognized | None:
    """The one origin that knows `ckpt`; None (or, with `required`, a CheckpointError) when none does."""
    import_families()
    overrides = dict(overrides or {})
    found = [r for r in (fn(ckpt, overrides) for fn in _recognizers) if r is not None]
    if len(found) > 1:
        raise CheckpointError(f"{ckpt.path}: matches several origins: {', '.join(r.origin for r in found)}")
    if not found:
        if required:
            raise CheckpointError(f"{ckpt.path}: not a checkpoint of a supported origin (top-level keys: "
                                  f"{_keys(ckpt.container)}; first tensors: {_keys(ckpt.state_dict)})")
        return None
    return found[0]


# `model_args: {class_names: dataset}`: a text classifier (ILA's K400 head) over the training set's own class names,
# which only the trainer knows; our checkpoints record them ("classes"), so the file rebuilds the same head
DATASET_CLASS_NAMES = "dataset"


def with_class_names(model_args: dict, classes) -> dict:
    """`model_args` with `class_names: dataset` replaced by `classes` (unchanged otherwise)."""
    if model_args.get("class_names") != DATASET_CLASS_NAMES:
        return dict(model_args)
    if not classes:
        raise CheckpointError("model_args class_names: dataset, but the dataset has no class names")
    return dict(model_args, class_names=list(classes))


@register_origin
def vidkit_checkpoint(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """A checkpoint written by `python -m train` (last.pt / best.pt): the EMA weights when it has them."""
    c = ckpt.container
    if not (isinstance(c, dict) and "model_name" in c and isinstance(c.get("model"), dict)):
        return None
    weights = c["ema"] if ckpt.prefer_ema and isinstance(c.get("ema"), dict) and c["ema"] else c["model"]
    config = c.get("config") or {}
    args = with_class_names(config.get("model_args") or {}, c.get("classes"))
    if "num_classes" in c:
        args["num_classes"] = c["num_classes"]
    if c.get("contract"):
        args["num_frames"] = c["contract"]["num_frames"]
    return Recognized(origin=f"vidkit ({c['model_name']})", model=c["model_name"], model_args=args,
                      state_dict=dict(weights), contract=c.get("contract"), classes=c.get("classes"),
                      config=config, notes=["EMA weights"] if weights is c.get("ema") else [],
                      caller_may_change=True)


# ------------------------------------------------------------------------------------------------ files


def recognize_file(path: str, use_ema: bool = True, **overrides) -> Recognized:
    """What `path` is, by the origin that knows it (models/factory.py builds and loads it)."""
    ckpt = read_checkpoint(path)
    ckpt.prefer_ema = use_ema
    return recognize(ckpt, overrides)
