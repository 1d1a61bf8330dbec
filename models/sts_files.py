"""The STS authors' released files that span several families: their mmaction fine-tuning files of the ResNet3d
family (ir-CSN, SlowOnly, R(2+1)D) and of SlowFast, and their timm image pre-training files (V3D wrappers of
those backbones and of X3D). The recognisers sit above the families they choose between; each family's own key
mapping stays with it (models/resnet3d.py, slowfast.py, x3d.py).
"""
from __future__ import annotations

import re

import torch

from .checkpoints import Checkpoint, CheckpointError, Recognized, register_origin
from .factory import create_model
from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract
from .resnet3d import mmaction_single_path, mmaction_single_path_state
from .slowfast import mmaction_slowfast
from .x3d import convert_mmaction_x3d, mmaction_block_counts, mmaction_x3d_args, mmaction_x3d_model

# ------------------------------------------------------------------ mmaction files (the STS paper's)
# Which convs are STS is not in the weights: the meta's config text or experiment name says it (their configs
# are all named *_STS_*). A file without STS is read as mmaction2's own (the STS code is its fork; only
# ResNet3dCSN's default time stride differs).

MMACTION_STEMS = ("backbone.conv1.conv.weight", "backbone.conv1.conv.conv_s.weight",
                  "backbone.slow_path.conv1.conv.weight")

def _mmaction_meta(ckpt: Checkpoint) -> dict:
    meta = ckpt.field("meta")
    return meta if isinstance(meta, dict) else {}


def mmaction_uses_sts(ckpt: Checkpoint, overrides: dict) -> bool:
    """Whether the file's convs are STS: its meta's config text, else its experiment name, else the
    caller's `sts`; a file that cannot tell and no `sts` given is refused."""
    meta = _mmaction_meta(ckpt)
    config = meta.get("config")
    names = [n for n in (meta.get("exp_name"), meta.get("config_name")) if isinstance(n, str)]
    if isinstance(config, str):
        return bool(re.search(r"reshape_s?t\s*=\s*True|Conv2plus1d_reshape", config))
    if names:
        return any("STS" in n for n in names)
    if "sts" not in overrides:
        raise CheckpointError("an mmaction ResNet3d-family file whose meta does not say whether it uses STS "
                              "convolutions; pass sts=True or sts=False")
    return bool(overrides["sts"])


@register_origin
def mmaction_resnet3d(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """The STS paper's mmaction files of the ResNet family: ir-CSN, SlowOnly, R(2+1)D and SlowFast."""
    sd = ckpt.state_dict
    stem = next((k for k in MMACTION_STEMS if k in sd), None)
    if stem is None or sd[stem].ndim != 5 or "cls_head.fc_cls.weight" not in sd:
        return None  # AIM's mmaction ViT, X3D and 2D mmaction nets name their stems otherwise
    try:
        sts = mmaction_uses_sts(ckpt, overrides)
        if stem.startswith("backbone.slow_path."):
            name, args, state = mmaction_slowfast(sd, _mmaction_meta(ckpt))
        else:
            name, args = mmaction_single_path(sd, sts)
            state = mmaction_single_path_state(sd)
    except CheckpointError as err:
        raise CheckpointError(f"{ckpt.path}: {err}") from None
    label = _mmaction_meta(ckpt).get("exp_name") or _mmaction_meta(ckpt).get("config_name") or name
    return Recognized(origin=f"mmaction {label} (STS paper)", model=name,
                      model_args=dict(num_classes=sd["cls_head.fc_cls.weight"].shape[0], sts=sts, **args),
                      state_dict=state)


# ------------------------------------------------------------------ timm files of the STS image pre-training
# Image_Pre_Training/timm/models/v3d.py: each v3d_* model wraps the same mmaction-fork backbones as the
# fine-tuning code in `V3D`, the backbone as `get_feature`, the head a 1000-way Linear `classifier` (X3D:
# Linear `fc1`, ReLU, `classifier`). Every one builds its backbone without STS (reshape_t=reshape_st=False;
# R(2+1)D with Conv2plus1d; its X3D has no STS code), so the files load with sts=False unless the caller asks
# for STS (the paper fine-tunes these weights with it). timm's train.py records `--model` as `arch`; the images
# were 224 x 224 (v3d.py's _cfg input_size; the scripts set no --img-size), evaluation's `image_size`.
STS_IMAGE_SIZE = 224
STS_IMAGE_ARCHS = {"v3d_csn50_ir_224": "ircsn_50", "v3d_r2plus1d34_224": "r2plus1d_34",
                   "v3d_slowfast50_4x16_224": "slowfast_50_4x16", "v3d_slowfast50_8x8_224": "slowfast_50_8x8",
                   "v3d_slowonly50_224": "slowonly_50", "v3d_x3d_s_224": "x3d_s"}


def sts_image_as_mmaction(sd: dict) -> dict:
    """V3D keys -> the Recognizer3D keys of the fine-tuning files: `backbone.*`, and `cls_head.fc_cls` (X3D:
    `cls_head.fc1` / `cls_head.fc2`, as mmaction's X3DHead)."""
    heads = {"fc1.": "cls_head.fc1.", "classifier.": "cls_head.fc2." if "fc1.weight" in sd else "cls_head.fc_cls.",
             "get_feature.": "backbone."}
    out = {}
    for key, value in sd.items():
        prefix = next((p for p in heads if key.startswith(p)), None)
        if prefix is None:
            raise CheckpointError(f"a V3D file with a key outside get_feature / fc1 / classifier: {key}")
        out[heads[prefix] + key[len(prefix):]] = value
    return out


def _sts_image_network(sd: dict, arch: str) -> tuple[str, dict, dict]:
    """(registered name, arguments, state dict) of a V3D state dict in mmaction keys."""
    if "backbone.conv1_s.conv.weight" in sd:
        if "cls_head.fc2.weight" not in sd:  # V3D builds fc1 for model_name 'x3d' (v3d.py:89-94)
            raise CheckpointError("an X3D backbone without V3D's fc1 before its classifier")
        args = mmaction_x3d_args("V3D", sd, "STS image X3D")
        return mmaction_x3d_model({}, mmaction_block_counts(sd)), args, convert_mmaction_x3d(sd)
    num_classes = sd["cls_head.fc_cls.weight"].shape[0]
    if "backbone.slow_path.conv1.conv.weight" in sd:
        name, args, state = mmaction_slowfast(sd, {"exp_name": arch})
        # V3D.forward pools and concatenates the backbone's (x_slow, x_fast) in that order
        return name, dict(args, feature_order="slow_fast", num_classes=num_classes), state
    # the fork's ir-CSN and the v3d_r2plus1d34 config stride no time (what sts=True selects for mmaction files)
    name, args = mmaction_single_path(sd, sts=True)
    return name, dict(args, num_classes=num_classes), mmaction_single_path_state(sd)


def sts_image_contract(name: str, args: dict) -> InputContract:
    """What the files were trained on: the model's contract at V3D's ImageNet statistics and 224 x 224 images
    (v3d.py's _cfg), whatever the video variant's defaults (R(2+1)D's Kinetics statistics, X3D-S's 160)."""
    with torch.device("meta"):
        contract = create_model(name, **args).input_contract
    return contract.replace(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_size=STS_IMAGE_SIZE)


@register_origin
def sts_image_pretraining(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """timm checkpoints of the STS paper's ImageNet pre-training (Image_Pre_Training/train.py)."""
    sd = ckpt.state_dict
    if "classifier.weight" not in sd or not any(k.startswith("get_feature.") for k in sd):
        return None
    arch = getattr(ckpt.field("args"), "model", None) or ckpt.field("arch")
    arch = arch if isinstance(arch, str) else ""
    try:
        name, args, state = _sts_image_network(sts_image_as_mmaction(sd), arch)
    except CheckpointError as err:
        raise CheckpointError(f"{ckpt.path}: STS image pre-training file: {err}") from None
    if arch and STS_IMAGE_ARCHS.get(arch, name) != name:
        raise CheckpointError(f"{ckpt.path}: its --model {arch} is {STS_IMAGE_ARCHS[arch]}, but its weights "
                              f"are {name}'s")
    args["sts"] = overrides.get("sts", False)
    return Recognized(origin=f"STS image pre-training ({arch or name})", model=name, model_args=args,
                      state_dict=state, contract=sts_image_contract(name, args).to_dict(),
                      config={"task": "image", "image_size": STS_IMAGE_SIZE}, caller_may_change=("sts",),
                      notes=[] if args["sts"] else ["trained without STS convolutions (V3D's reshape_t=False)"])
