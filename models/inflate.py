"""2D -> 3D inflation of image-ResNet weights (timm or torchvision key names) into models/resnet3d.py.

Each 2D kernel k x k becomes t x k x k for the target's temporal size t:
* "mean" (I3D): repeated over time and divided by t, so on a clip of identical frames every
  frame away from the clip's ends (where zero temporal padding cuts the kernel) reproduces the 2D
  activations;
* "center": the 2D kernel in the centre slice, zeros elsewhere, which reproduces the 2D network
  on every frame of a still clip.

Only plain convolutions inflate. The factorised (2+1)D convolutions and the depthwise ones of CSN
have no exact 2D counterpart, so their weights raise a ValueError naming the key instead of
loading partially; pass a 3D state dict of the same architecture for those (it loads directly).

3D weights named as a 2D ResNet (IBM's I3D-ResNet: `conv1`, `layer1.0.bn1`, ... with 5D kernels) get
the same renaming and then load directly.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .weights import head_keys, load_state_dict_checked

INFLATE_MODES = ("mean", "center")

# 2D ResNet (timm / torchvision) or IBM I3D-ResNet name -> torchvision video-ResNet name
_KEY_RULES = (
    (re.compile(r"^conv1\.weight$"), "stem.0.weight"),
    (re.compile(r"^bn1\.(.+)$"), r"stem.1.\1"),
    (re.compile(r"^(layer\d\.\d+)\.conv(\d)\.weight$"), r"\1.conv\2.0.weight"),
    (re.compile(r"^(layer\d\.\d+)\.bn(\d)\.(.+)$"), r"\1.conv\2.1.\3"),
)


def is_2d_resnet_state_dict(state_dict: dict) -> bool:
    stem = state_dict.get("conv1.weight")
    return stem is not None and stem.ndim == 4


def to_video_resnet_keys(state_dict: dict) -> dict[str, torch.Tensor]:
    """Rename ResNet keys (2D, or IBM's I3D) to the 3D model's (downsample.* and fc.* are shared); keys
    already in torchvision's video-ResNet names match no rule and stay as they are."""
    mapped = {}
    for key, value in state_dict.items():
        for pattern, replacement in _KEY_RULES:
            if pattern.match(key):
                key = pattern.sub(replacement, key)
                break
        mapped[key] = value
    return mapped


def inflate_kernel(weight: torch.Tensor, time: int, mode: str = "mean") -> torch.Tensor:
    """A 2D kernel (O, I, kh, kw) as a 3D kernel (O, I, time, kh, kw)."""
    if mode not in INFLATE_MODES:
        raise ValueError(f"inflate mode must be one of {INFLATE_MODES}, got {mode!r}")
    if mode == "mean":
        return weight.unsqueeze(2).repeat(1, 1, time, 1, 1) / time
    inflated = weight.new_zeros(weight.shape[:2] + (time,) + weight.shape[2:])
    inflated[:, :, time // 2] = weight
    return inflated


def inflate_state_dict(state_dict: dict, model: nn.Module, mode: str = "mean") -> dict[str, torch.Tensor]:
    """The 3D state dict for `model` from a 2D ResNet state dict; raises on anything that does not
    map onto a plain convolution of matching channels and spatial size."""
    own = model.state_dict()
    heads = head_keys(model)
    inflated = {}
    for key, value in to_video_resnet_keys(state_dict).items():
        if value.ndim == 4:
            target = own.get(key)
            if target is None or target.ndim != 5:
                raise ValueError(f"cannot inflate 2D weight for {key}: {type(model).__name__} has no plain 3D "
                                 "convolution there ((2+1)D factorised convolutions have no 2D counterpart)")
            if target.shape[:2] != value.shape[:2] or target.shape[3:] != value.shape[2:]:
                raise ValueError(f"cannot inflate {key}: 2D shape {tuple(value.shape)} does not match 3D shape "
                                 f"{tuple(target.shape)} (a (2+1)D, depthwise or differently sized convolution)")
            value = inflate_kernel(value, target.shape[2], mode)
        inflated[key] = value
    # old torchvision files predate num_batches_tracked; it only matters with momentum=None
    for key, target in own.items():
        if key.endswith("num_batches_tracked") and key not in inflated and key not in heads:
            inflated[key] = torch.zeros_like(target, device="cpu")
    return inflated


def load_inflated(model: nn.Module, state_dict: dict, mode: str = "mean") -> None:
    """Load 3D weights directly, or inflate 2D ResNet weights; never a silent partial load."""
    if is_2d_resnet_state_dict(state_dict):
        load_state_dict_checked(model, inflate_state_dict(state_dict, model, mode), source="inflated 2D ResNet")
    else:
        load_state_dict_checked(model, to_video_resnet_keys(state_dict), source="3D weights")
