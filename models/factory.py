"""Building models (timm's `_factory`): by name (`create_model`, `pretrained=` a local file) or from a checkpoint
file of any supported origin (`from_checkpoint`).

The layers, one way: models/registry.py (names, contracts) <- models/checkpoints.py and models/weights.py (reading
files; each family's recognisers) <- this module. A family is imported by the registry when one of its models is
built, and every family when a file is recognised, so nothing below imports this module.

A file may hold the weights of the model being built only if it describes the same variant: a checkpoint of a known
origin (this toolkit's, the source projects' released files) must; any other file goes through the model's own
`load_pretrained` (2D->3D inflation, CLIP or timm image weights) or loads exactly.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .checkpoints import CALLER_ARGS, CheckpointError, Recognized, read_checkpoint, recognize, recognize_file
from .registry import InputContract, builder, resolve_name
from .weights import current_names, head_keys, load_state_dict_checked

log = logging.getLogger(__name__)


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
    fn = builder(name)
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
        load_pretrained(model, pretrained)
    return model


def load_pretrained(model: nn.Module, path: str) -> None:
    """Weights for `model` from a file (see the module's docstring for which files fit)."""
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


def from_checkpoint(path: str, reset_head: bool = False, use_ema: bool = True, **overrides) -> nn.Module:
    """Build the registered model a checkpoint file describes and load it strictly.

    `overrides` supply what the file cannot tell (`num_frames`, `class_names`, ...) and may not
    contradict what it does. `num_classes` other than the file's needs `reset_head=True` (a new,
    randomly initialised classifier for fine-tuning) unless the origin knows how to adapt its head.
    `use_ema`: a toolkit checkpoint's EMA weights when it kept an EMA (they chose its best.pt).
    """
    return build_recognized(recognize_file(path, use_ema, **overrides), path, reset_head, **overrides)


def build_recognized(rec: Recognized, path: str, reset_head: bool = False, **overrides) -> nn.Module:
    missing = [k for k in rec.needs if k not in overrides]
    if missing:
        raise CheckpointError(f"{path}: {rec.origin} needs {', '.join(missing)} from the caller "
                              "(e.g. the dataset's class names for a text classifier)")
    args = _merge_args(path, rec, overrides, reset_head)
    model = create_model(rec.model, **args)
    load_recognized(model, rec, path, reset_head=reset_head)
    if rec.contract:  # as trained (sampling overrides too), at the caller's clip length if given
        contract = InputContract(**rec.contract)
        model.input_contract = contract.replace(num_frames=overrides.get("num_frames", contract.num_frames))
    model.checkpoint_classes = rec.classes
    for note in rec.notes:
        log.info("%s: %s", os.path.basename(path), note)
    return model


def _merge_args(path: str, rec: Recognized, overrides: dict, reset_head: bool) -> dict:
    args = dict(rec.model_args)
    for key, value in overrides.items():
        if key in args and args[key] != value and key not in CALLER_ARGS:
            if key == "num_classes" and reset_head:
                pass
            elif key == "num_classes":
                # no hint of another command's option here: eval, models info and train each read this line
                raise CheckpointError(f"{path}: its classifier has {args[key]} classes, not the {value} asked for "
                                      "(it scores only the classes it was trained on)")
            else:
                raise CheckpointError(f"{path}: {rec.origin} has {key}={args[key]!r}, which contradicts the "
                                      f"requested {key}={value!r}")
        args[key] = value
    return args


def load_recognized(model: nn.Module, rec: Recognized, source: str, reset_head: bool = False) -> None:
    """Strict load of a recognised file; a classifier of another size is re-initialised only on request. A model
    whose parameter names changed renames an older file's (its `upgrade_state_dict`, as fairseq's models do)."""
    own = model.state_dict()
    sd = current_names(model, rec.state_dict)
    bad_head = [k for k in head_keys(model) if k in sd and sd[k].shape != own[k].shape]
    if bad_head and not reset_head:
        raise CheckpointError(f"{source}: classifier shape differs ({bad_head[0]} "
                              f"{tuple(sd[bad_head[0]].shape)} vs {tuple(own[bad_head[0]].shape)})")
    load_state_dict_checked(model, sd, source=f"{rec.origin} file {os.path.basename(source)}")


def check_same_architecture(model: nn.Module, rec: Recognized, source: str) -> None:
    """Refuse to load a file into a model of another variant, even when no parameter shows it
    (temporal strides, pooling, norm eps): compares module hyper-parameters with the variant the file
    describes, built on the meta device at the model's own classes and frames."""
    args = dict(rec.model_args, num_classes=_num_classes(model, rec))
    args["num_frames"] = model.input_contract.num_frames
    built = getattr(model, "build_args", {})
    # in a toolkit checkpoint an argument the caller gives explicitly is a choice (its STS pre-training
    # fine-tuned with sts=False shares every weight); an authors' file must get the variant it was trained as
    may = rec.caller_may_change
    chosen = {k: v for k, v in built.items() if args.get(k, v) != v and (may is True or k in (may or ()))}
    for key, value in built.items():
        if key in chosen or key not in args:
            args[key] = value
    if chosen:
        log.info("%s: %s given explicitly where the file has %s", source, _args_text(chosen),
                 _args_text({k: rec.model_args[k] for k in chosen if k in rec.model_args}))
    with torch.device("meta"):
        reference = create_model(rec.model, **args)
    ours, theirs = _structure(model), _structure(reference)
    if type(model) is not type(reference) or ours != theirs:
        differing = ((a, b) for a, b in zip(ours, theirs) if a != b)
        where = next((f"{a[0] or 'the model'}: {a[2] or a[1]} vs {b[2] or b[1]}" for a, b in differing),
                     f"{len(ours)} vs {len(theirs)} modules")
        raise CheckpointError(f"{source} is {rec.origin} -> {rec.model} {_args_text(rec.model_args)}; the model "
                              f"being loaded is another variant ({where}); build it with those arguments, or "
                              "use models.from_checkpoint")


def _num_classes(model: nn.Module, rec: Recognized) -> int:
    return getattr(model, "num_classes", None) or rec.model_args.get("num_classes", 400)


_IGNORED = (nn.Dropout, nn.Identity)


def _structure(model: nn.Module) -> list[tuple[str, str, str]]:
    """(name, type, hyper-parameters) of every module that computes something; dropout and drop-path
    rates and classifier sizes are training or task choices, not architecture."""
    heads = {k.rsplit(".", 1)[0] for k in head_keys(model)}
    rows = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, _IGNORED) or "DropPath" in kind:
            continue
        rows.append((name, kind, "" if name in heads else module.extra_repr()))
    return rows


def _args_text(args: dict) -> str:
    shown = {k: v for k, v in args.items() if k not in ("class_names",)}
    return "(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
