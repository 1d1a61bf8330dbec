"""Loading local weight files: never a silent partial load.

A model may define `load_pretrained(state_dict)` to map foreign keys (2D->3D inflation, CLIP
names, window resizing); otherwise the file must match the model exactly, except the classifier,
which is re-initialised when its shape differs (the usual fine-tuning case) and said so.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

log = logging.getLogger(__name__)

_NESTED_KEYS = ("state_dict", "model", "module", "model_state", "ema")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(sd, nn.Module):  # a whole pickled model (e.g. a CLIP jit/eager model)
            sd = sd.state_dict()
    if isinstance(sd, dict) and isinstance(sd.get("ema"), dict) and isinstance(sd.get("model"), dict):
        # a `python -m train` checkpoint with an EMA: its best.pt was chosen by the EMA's validation score
        log.info("%s: using the EMA weights", path)
        sd = sd["ema"]
    for key in _NESTED_KEYS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict (got {type(sd).__name__})")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def head_keys(model: nn.Module) -> set[str]:
    """Parameter names of the classifier, taken from `model.head_names` (a tuple of prefixes)."""
    prefixes = tuple(getattr(model, "head_names", ("head.", "fc.", "classifier.")))
    return {k for k in model.state_dict() if k.startswith(prefixes)}


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "") -> None:
    """Strict load that names every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    heads = head_keys(model)
    mismatched = [k for k in sd if k in own and own[k].shape != sd[k].shape]
    skip_heads = [k for k in mismatched if k in heads]
    bad_shape = [k for k in mismatched if k not in heads]
    # BatchNorm counters are absent from older files (torchvision resnet50-19c8e357.pth); torch tolerates that too
    missing = [k for k in own if k not in sd and k not in heads and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own and not _is_foreign_head(k)]
    problems = []
    if bad_shape:
        problems.append("shape mismatch: " + ", ".join(
            f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape[:10]))
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:10])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:10])}")
    if problems:
        raise ValueError(f"cannot load {source or 'weights'} into {type(model).__name__}: " + "; ".join(problems))
    load = {k: v for k, v in sd.items() if k in own and k not in skip_heads}
    model.load_state_dict(load, strict=False)
    reinit = sorted(set(heads) - set(load))
    if reinit:
        log.info("classifier re-initialised (not in %s or other shape): %s", source, ", ".join(reinit))


def _is_foreign_head(key: str) -> bool:
    return key.split(".")[0] in ("fc", "head", "classifier", "proj", "logit_scale")


def load_pretrained(model: nn.Module, path: str) -> None:
    sd = read_state_dict(path)
    custom = getattr(model, "load_pretrained", None)
    if callable(custom):
        custom(sd)
    else:
        load_state_dict_checked(model, sd, source=path)
    log.info("loaded pretrained weights from %s", path)
