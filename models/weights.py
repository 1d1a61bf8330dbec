"""Loading state dicts into models: never a silent partial load.

The classifier is re-initialised when its shape differs (the usual fine-tuning case) and said so;
every other missing, unexpected or mis-shaped key is an error. models/factory.py's `load_pretrained`
uses this for plain weight files, and the families for the files they convert.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .checkpoints import read_checkpoint

log = logging.getLogger(__name__)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read without running code from it (see models/checkpoints.py)."""
    return read_checkpoint(path).state_dict


def head_keys(model: nn.Module) -> set[str]:
    """Parameter names of the classifier, taken from `model.head_names` (a tuple of prefixes)."""
    prefixes = tuple(getattr(model, "head_names", ("head.", "fc.", "classifier.")))
    return {k for k in model.state_dict() if k.startswith(prefixes)}


def current_names(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` under the model's current parameter names: a model whose names changed renames an older file's (its
    `upgrade_state_dict`, as fairseq's models do); any other model takes it as it is. Every load of a toolkit file
    goes through here: factory.load_recognized (eval, --pretrained) and a training resume alike."""
    upgrade = getattr(model, "upgrade_state_dict", None)
    return upgrade(sd) if callable(upgrade) else sd


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
