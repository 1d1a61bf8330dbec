"""Loading local weight files: never a silent partial load.

A model may define `load_pretrained(state_dict)` to map foreign keys (2D->3D inflation, CLIP
names, window resizing); otherwise the file must match the model exactly, except the classifier,
which is re-initialised when its shape differs (the usual fine-tuning case) and said so.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, read without running code from it (see models/checkpoints.py)."""
    from .checkpoints import read_checkpoint

    return read_checkpoint(path).state_dict


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
    """Weights for `model` from a file: a checkpoint of a known origin (this toolkit's, the source projects'
    released files) must describe the same variant; any other file goes through the model's own
    `load_pretrained` (2D->3D inflation, CLIP or timm image weights) or loads exactly."""
    from .checkpoints import check_same_architecture, load_recognized, read_checkpoint, recognize

    ckpt = read_checkpoint(path)
    # the classes the model was built for: an origin that can adapt its head to them does (ILA's SSv2 files)
    wanted = {"num_classes": model.num_classes} if getattr(model, "num_classes", None) else {}
    recognized = recognize(ckpt, wanted, required=False)
    if recognized is not None:
        check_same_architecture(model, recognized, path)
        load_recognized(model, recognized, path, reset_head=True)
        model.pretrained_classes = recognized.classes  # for the caller to check its data's order (None: unknown)
        log.info("loaded %s weights from %s", recognized.origin, path)
        return
    sd = ckpt.state_dict
    custom = getattr(model, "load_pretrained", None)
    if callable(custom):
        custom(sd)
    else:
        load_state_dict_checked(model, sd, source=path)
    log.info("loaded pretrained weights from %s", path)
