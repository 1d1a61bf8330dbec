"""Parameter and FLOP counts, measured the same way for every model in the zoo.

GFLOPs are multiply-accumulates per view (one clip, one crop), the convention of the video papers:
torch's `FlopCounterMode` counts 2 FLOPs per MAC, so the total is halved. Counting runs on the `meta`
device, where no memory is allocated and no arithmetic happens, so full-size models cost nothing.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .factory import create_model
from .registry import resolve_name


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gflops(model: nn.Module, input_shape_or_tensor) -> float:
    """Multiply-accumulates (in G) of one forward pass; a shape is turned into an input on the model's device."""
    x = input_shape_or_tensor
    if not isinstance(x, torch.Tensor):
        ref = next(model.parameters(), None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else ("cpu", torch.float32)
        x = torch.zeros(tuple(x), device=device, dtype=dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9


def describe(name: str, num_classes: int = 400, frames: int | None = None, size: int | None = None,
             **overrides) -> dict:
    """Build `name` on the meta device and report its size and cost for one view of its input contract."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, num_frames=frames, **overrides)
    model.eval()
    contract = model.input_contract
    if size is not None and size != contract.crop_size:
        contract = contract.replace(crop_size=size)
    try:
        flops = gflops(model, contract.input_shape(1))
    except (RuntimeError, ValueError, AssertionError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{name}: cannot run on input {contract.input_shape(1)}: {first_line}") from err
    return dict(
        name=resolve_name(name),
        params=count_params(model),
        trainable_params=count_trainable(model),
        gflops=flops,
        contract=contract.to_dict(),
    )


def to_channels_last(model: nn.Module) -> nn.Module:
    """channels_last for 4D weights, channels_last_3d for 5D ones (`Module.to` refuses a model with both)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.dim() in (4, 5):
            fmt = torch.channels_last if tensor.dim() == 4 else torch.channels_last_3d
            tensor.data = tensor.data.contiguous(memory_format=fmt)
    return model


def has_convs(model: nn.Module) -> bool:
    """Convolutions beyond a single patch embedding, i.e. a CNN that benefits from channels_last."""
    return sum(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in model.modules()) > 1
