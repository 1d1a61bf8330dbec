"""X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020).

Follows PySlowFast / pytorchvideo `create_x3d`: (2+1)D stem, four stages of inverted bottlenecks
whose 3x3x3 convolution is channel-wise, squeeze-excitation on every other block, Swish inside
the bottleneck, and a head that projects, pools, projects again to 2048 and classifies.
No temporal downsampling anywhere: the clip keeps all its frames until the global pool.

Sizes XS, S, M and L share the builder: XS, S and M are one network fed different clips
(4x12 at 160, 13x6 at 160, 16x5 at 224 pixels), L is 5x deeper (16x5 at 312).

`sts=True` swaps the stages' channel-wise 3x3x3 convolutions for the STS convolution of
"In Defense of Image Pre-Training for Spatiotemporal Recognition" (models/sts.py, same weights);
the stem stays plain, as in the paper, and clips are normalised with ImageNet statistics, as the
paper fine-tunes from image pre-training.

mmaction's X3D (the STS authors' `Spatiotemporal_Finetuning` and mmaction2's converted files) is
the same network under other names: `conv1_s`/`conv1_t` stem, `layerN.i.conv1/2/3` blocks, the 1x1x1
`conv5` in the backbone, and an `X3DHead` whose `fc1` is a Linear; `mmaction_x3d` below recognises
those files and maps them onto this model.
"""
from __future__ import annotations

import math
import re

import torch
from timm.layers import DropPath, make_divisible
from torch import nn
from torchvision.ops.misc import Conv3dNormActivation

from .checkpoints import Checkpoint, CheckpointError, Recognized, register_origin
from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract, register_model
from .sts import convert_to_sts, sts_mode
from .tuning import checkpoint_seq, drop_path_rates

X3D_MEAN = (0.45, 0.45, 0.45)  # PySlowFast's DATA.MEAN / DATA.STD
X3D_STD = (0.225, 0.225, 0.225)
X3D_STAGE_DEPTHS = (1, 2, 5, 3)  # X3D paper, Table 1, before the depth factor


class SqueezeExcite3d(nn.Module):
    """Channel gating from the clip-wide mean (1x1x1 convs with bias, as in PySlowFast)."""

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        reduced = make_divisible(channels * ratio)
        self.fc1 = nn.Conv3d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3, 4), keepdim=True))))
        return x * scale.sigmoid()


class X3DBlock(nn.Module):
    """1x1x1 expand -> channel-wise 3x3x3 (+SE, Swish) -> 1x1x1 project, plus shortcut; `drop_path`: the
    probability of dropping the residual branch of a sample (stochastic depth, PySlowFast's drop-connect)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, spatial_stride: int, se_ratio: float,
                 drop_path: float = 0.0):
        super().__init__()
        stride = (1, spatial_stride, spatial_stride)
        self.conv_a = Conv3dNormActivation(dim_in, dim_inner, kernel_size=1, bias=False)
        self.conv_b = nn.Conv3d(dim_inner, dim_inner, 3, stride=stride, padding=1, groups=dim_inner, bias=False)
        self.bn_b = nn.BatchNorm3d(dim_inner)
        self.se = SqueezeExcite3d(dim_inner, se_ratio) if se_ratio > 0 else nn.Identity()
        self.act_b = nn.SiLU(inplace=True)
        self.conv_c = Conv3dNormActivation(dim_inner, dim_out, kernel_size=1, bias=False, activation_layer=None)
        nn.init.zeros_(self.conv_c[1].weight)  # PySlowFast ZERO_INIT_FINAL_BN: each block starts as identity
        self.shortcut = nn.Identity()
        if dim_in != dim_out or spatial_stride != 1:
            self.shortcut = Conv3dNormActivation(
                dim_in, dim_out, kernel_size=1, stride=stride, padding=0, bias=False, activation_layer=None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act_b(self.se(self.bn_b(self.conv_b(self.conv_a(x)))))
        return self.act(self.shortcut(x) + self.drop_path(self.conv_c(y)))


class X3DHead(nn.Module):
    """Project to the bottleneck width, pool over the clip, project to `head_width`, classify."""

    def __init__(self, dim_in: int, dim_inner: int, head_width: int, num_classes: int, dropout: float,
                 bias: bool = False):
        super().__init__()
        self.conv_5 = Conv3dNormActivation(dim_in, dim_inner, kernel_size=1, bias=False)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.lin_5 = nn.Conv3d(dim_inner, head_width, 1, bias=bias)  # mmaction's fc1 (fc1_bias=False)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head_width, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`pre_logits`: the (N, head_width) clip embedding after lin_5's ReLU, which the classifier takes."""
        x = self.drop(self.act(self.lin_5(self.pool(self.conv_5(x)))).flatten(1))
        return x if pre_logits else self.fc(x)


class X3D(nn.Module):
    """X3D built from width / depth / bottleneck expansion factors (pytorchvideo's parameters). `drop_path_rate`:
    stochastic depth rising linearly over the blocks from 0 to the rate (timm's rule; PySlowFast's X3D raises
    it per stage instead, and its ResBlock never applies it: its drop_path call leaves training=False)."""

    def __init__(
        self,
        num_classes: int = 400,
        width_factor: float = 2.0,
        depth_factor: float = 2.2,
        bottleneck_factor: float = 2.25,
        stem_width: int = 12,
        stage_depths: tuple = X3D_STAGE_DEPTHS,
        head_width: int = 2048,
        se_ratio: float = 0.0625,
        dropout: float = 0.5,
        head_bias: bool = False,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        dim = make_divisible(stem_width * width_factor)
        self.stem = nn.Sequential(
            nn.Conv3d(3, dim, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(dim, dim, (5, 1, 1), padding=(2, 0, 0), groups=dim, bias=False),
            nn.BatchNorm3d(dim),
            nn.ReLU(inplace=True),
        )
        depths = [math.ceil(depth * depth_factor) for depth in stage_depths]
        drop_paths = iter(drop_path_rates(drop_path_rate, sum(depths)))
        stages, base_width = [], stem_width
        for i, depth in enumerate(depths):
            if i > 0:
                base_width = make_divisible(base_width * 2)  # unscaled widths double per stage
            dim_out = make_divisible(base_width * width_factor)
            dim_inner = int(bottleneck_factor * dim_out)
            blocks = [
                X3DBlock(dim if j == 0 else dim_out, dim_inner, dim_out, 2 if j == 0 else 1,
                         se_ratio if j % 2 == 0 else 0.0, next(drop_paths))
                for j in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            dim = dim_out
        self.stages = nn.Sequential(*stages)
        self.head = X3DHead(dim, dim_inner, head_width, num_classes, dropout, head_bias)
        self.num_classes = num_classes
        self.num_features = head_width
        self.head_names = ("head.fc.",)
        self.grad_checkpointing = False

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's description of the stages (layer_decay; frozen_stages counts its stem and coarse groups): the
        stem, then each stage (`coarse`) or block; the head (conv_5 included) matches nothing (timm: the head)."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing:
            return checkpoint_seq([block for stage in self.stages for block in stage], x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_x3d(num_classes: int, num_frames: int, crop_size: int, frame_stride: int, sts: bool | str = False,
                **kwargs) -> X3D:
    """`sts`: True for the authors' STS computation (their released files), "2d" for its 2-D variant."""
    model = X3D(num_classes=num_classes, **kwargs)
    mean, std = X3D_MEAN, X3D_STD
    mode = sts_mode(sts)
    if mode:  # stages only: the stem stays plain, as in the paper (their X3D has reshape_st only)
        convert_to_sts(model.stages, mode=mode, reshape_t=False)
        mean, std = IMAGENET_MEAN, IMAGENET_STD  # the STS configs fine-tune from ImageNet weights
    model.input_contract = InputContract(
        layout="NCTHW", num_frames=num_frames, crop_size=crop_size,
        mean=mean, std=std, sampling="dense", frame_stride=frame_stride,
    )
    return model


# ------------------------------------------------------------------------------ mmaction X3D files

# mmaction block names -> ours (mmcv ConvModule keeps conv and BN as `.conv` / `.bn`)
_MMACTION_BLOCK = {
    "conv1.conv": "conv_a.0", "conv1.bn": "conv_a.1", "conv2.conv": "conv_b", "conv2.bn": "bn_b",
    "conv3.conv": "conv_c.0", "conv3.bn": "conv_c.1", "downsample.conv": "shortcut.0",
    "downsample.bn": "shortcut.1", "se_module": "se",
}
_MMACTION_OTHER = {
    "backbone.conv1_s.conv.": "stem.0.", "backbone.conv1_t.conv.": "stem.1.", "backbone.conv1_t.bn.": "stem.2.",
    "backbone.conv5.conv.": "head.conv_5.0.", "backbone.conv5.bn.": "head.conv_5.1.",
    "cls_head.fc1.": "head.lin_5.", "cls_head.fc2.": "head.fc.",
}
_MMACTION_LAYER = re.compile(r"backbone\.layer(\d+)\.(\d+)\.(conv\d\.conv|conv\d\.bn|downsample\.conv|"
                             r"downsample\.bn|se_module)\.(.+)")


def mmaction_x3d_key(key: str) -> str:
    """Our name for an mmaction X3D Recognizer3D key (unknown keys unchanged, so a strict load names them)."""
    m = _MMACTION_LAYER.fullmatch(key)
    if m:
        stage, block, part, rest = m.groups()
        return f"stages.{int(stage) - 1}.{block}.{_MMACTION_BLOCK[part]}.{rest}"
    for theirs, ours in _MMACTION_OTHER.items():
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def convert_mmaction_x3d(state_dict: dict) -> dict:
    out = {mmaction_x3d_key(k): v for k, v in state_dict.items()}
    if out.get("head.lin_5.weight") is not None and out["head.lin_5.weight"].dim() == 2:
        out["head.lin_5.weight"] = out["head.lin_5.weight"][:, :, None, None, None]  # Linear -> 1x1x1 conv
    return out


def mmaction_block_counts(sd: dict) -> tuple:
    counts = []
    for stage in range(1, 5):
        n = 0
        while f"backbone.layer{stage}.{n}.conv1.conv.weight" in sd:
            n += 1
        counts.append(n)
    return tuple(counts)


def mmaction_x3d_args(path: str, sd: dict, origin: str) -> dict:
    """Our X3D arguments for the network in an mmaction X3D file (widths and depths from the shapes)."""
    counts = mmaction_block_counts(sd)
    if 0 in counts:
        raise CheckpointError(f"{path}: {origin} with block counts {counts}: four stages are needed")
    se = [f"backbone.layer{s}.{i}.se_module.fc1.weight" in sd for s in range(1, 5) for i in range(counts[s - 1])]
    expected_se = [i % 2 == 0 for s in range(4) for i in range(counts[s])]
    if se != expected_se:
        raise CheckpointError(f"{path}: {origin} has squeeze-excitation on other blocks than every other one "
                              "(se_style='half'); only that layout is supported")
    width = sd["backbone.conv1_s.conv.weight"].shape[0]
    args = {"num_classes": sd["cls_head.fc2.weight"].shape[0]}
    if width != 24:  # mmaction's base width 24 is our stem_width 12 x width_factor 2
        args.update(stem_width=width, width_factor=1.0)
    bottleneck = sd["backbone.layer1.0.conv1.conv.weight"].shape[0] / width
    if bottleneck != 2.25:
        args["bottleneck_factor"] = bottleneck
    if sd["cls_head.fc1.weight"].shape[0] != 2048:
        args["head_width"] = sd["cls_head.fc1.weight"].shape[0]
    if "cls_head.fc1.bias" in sd:
        args["head_bias"] = True
    if counts not in (_depths(2.2), _depths(5.0)):
        args.update(stage_depths=counts, depth_factor=1.0)
    return args


def _depths(depth_factor: float) -> tuple:
    return tuple(math.ceil(d * depth_factor) for d in X3D_STAGE_DEPTHS)


def _mmaction_config_names(meta) -> list:
    """The config file names mmaction records in a checkpoint's meta (train.py's config_name, exp_name)."""
    if not isinstance(meta, dict):
        return []
    return [meta[k] for k in ("config_name", "exp_name") if isinstance(meta.get(k), str)]


def mmaction_sts(meta) -> bool | None:
    """Whether an mmaction checkpoint was trained with STS convolutions, from its meta (the weights cannot
    tell: STS re-uses the 3D kernels); None when the file does not say."""
    config = meta.get("config") if isinstance(meta, dict) else None
    if isinstance(config, str) and re.search(r"reshape_s?t\s*=", config):  # the config text train.py saves
        return re.search(r"reshape_s?t\s*=\s*True", config) is not None
    names = _mmaction_config_names(meta)
    if not names:
        return None
    # the authors name their STS configs *_STS_* (x3d_s_13x6_STS_k400_video.py)
    return any("sts" in re.split(r"[_.\-]", name.lower()) for name in names)


def mmaction_x3d_model(meta, counts: tuple) -> str:
    """XS, S and M have the same weights: the config name tells which clips the file was trained on."""
    if counts == _depths(5.0):
        return "x3d_l"
    if counts == _depths(2.2):
        for size in ("xs", "m"):
            if any(name.lower().startswith(f"x3d_{size}_") for name in _mmaction_config_names(meta)):
                return f"x3d_{size}"
    return "x3d_s"


@register_origin
def mmaction_x3d(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """mmaction Recognizer3D files with an X3D backbone (its factorised stem `conv1_s`/`conv1_t` is X3D's alone)."""
    sd = ckpt.state_dict
    if "backbone.conv1_s.conv.weight" not in sd or "backbone.conv1_t.conv.weight" not in sd:
        return None
    meta = ckpt.field("meta")
    sts = mmaction_sts(meta)
    origin = "mmaction X3D" + (" + STS" if sts else "")
    if "cls_head.fc1.weight" not in sd or "cls_head.fc2.weight" not in sd:
        heads = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("cls_head.")}) or ["none"]
        raise CheckpointError(f"{ckpt.path}: {origin} file without an X3DHead (cls_head.fc1/fc2; found "
                              f"{', '.join(heads)}); only X3DHead files are supported")
    args = mmaction_x3d_args(ckpt.path, sd, origin)
    if sts is not None:  # a file that does not say leaves the choice to the caller
        args["sts"] = sts
    name = mmaction_x3d_model(meta, mmaction_block_counts(sd))
    return Recognized(origin=origin, model=name, model_args=args, state_dict=convert_mmaction_x3d(sd))


# ---------------------------------------------------------------------------------------- variants


@register_model
def x3d_xs(num_classes: int = 400, num_frames: int = 4, **kwargs) -> X3D:
    return _create_x3d(num_classes, num_frames, crop_size=160, frame_stride=12, **kwargs)


@register_model
def x3d_s(num_classes: int = 400, num_frames: int = 13, **kwargs) -> X3D:
    return _create_x3d(num_classes, num_frames, crop_size=160, frame_stride=6, **kwargs)


@register_model
def x3d_m(num_classes: int = 400, num_frames: int = 16, **kwargs) -> X3D:
    return _create_x3d(num_classes, num_frames, crop_size=224, frame_stride=5, **kwargs)


@register_model
def x3d_l(num_classes: int = 400, num_frames: int = 16, **kwargs) -> X3D:
    return _create_x3d(num_classes, num_frames, crop_size=312, frame_stride=5, **{"depth_factor": 5.0, **kwargs})


@register_model
def x3d_tiny(num_classes: int = 400, num_frames: int = 8, **kwargs) -> X3D:
    tiny = dict(width_factor=1.0, depth_factor=1.0, stem_width=8, stage_depths=(1, 1, 1, 1), head_width=64)
    return _create_x3d(num_classes, num_frames, crop_size=32, frame_stride=2, **{**tiny, **kwargs})
