"""3D ResNets from one composable builder: I3D-ResNet, R3D, R(2+1)D, ir-CSN and SlowOnly.

`ResNet3d(block, conv_makers, layers, stem, widths)` follows torchvision's
`VideoResNet(block, conv_makers, layers, stem)` and reuses its blocks and conv makers
(BasicBlock, Bottleneck, Conv3DSimple, Conv2Plus1D, Conv3DNoTemporal); what torchvision lacks is
added here as small subclasses: any width (for the tiny variants), stems with max-pooling,
depthwise (channel-separated) convolutions, SlowOnly's 3x1x1 first bottleneck conv, and the
Caffe2/VMZ sizing of (2+1)D mid-planes. State-dict keys are torchvision's, so torchvision's video
weights load directly and 2D ResNet weights inflate by a plain key mapping (models/inflate.py).

Networks:
* i3d_resnet50: I3D-ResNet-50 of IBM's study (Chen et al., "Deep Analysis of CNN-based
  Spatio-temporal Representations for Action Recognition"): 3x7x7 stem + max-pool, every
  bottleneck 3x3 inflated to 3x3x3, temporal stride 2 in res3-res5 (their default "-ts" model;
  `temporal_stride=False` is their --without_t_stride, as all of their released files). Depths 18-152.
* r3d_* / r2plus1d_*: torchvision's R3D-18 and R(2+1)D-18 exactly; the 34-layer R(2+1)D of
  VMZ / CSN (Caffe2 mid-planes: every (2+1)D conv sized from its own in/out channels).
  `factorize_all=True, stem_pool=True, bn_eps=1e-3` is mmaction's ResNet2Plus1d.
* ircsn_50/101/152: interaction-reduced CSN: the bottleneck's 3x3x3 is depthwise.
* slowonly_50: PySlowFast SlowOnly-R50: 1x7x7 stem, no temporal stride, 3x1x1 first bottleneck
  conv in res4-res5 only.
`sts=True` turns the temporal convolutions of the residual stages (and of R(2+1)D's factorised stem)
into STS convolutions computed as the authors do (`sts="2d"`: with true 2-D filters; models/sts.py),
keeping the parameters and state-dict keys. `temporal_strides`, `bn_eps` and `drop_path_rate` (stochastic
depth) are options of every network.

The STS paper's released mmaction files (ir-CSN, SlowOnly, R(2+1)D; SlowFast in models/slowfast.py)
are recognised by `mmaction_resnet3d` in models/sts_files.py, with this file's key mapping (the end of
this file): with the paper's settings they are
`ircsn_50(sts=True, bn_eps=1e-3, temporal_strides=1)`, `slowonly_50(sts=True)` and
`r2plus1d_34(sts=True, bn_eps=1e-3, temporal_strides=1, stem_pool=True, factorize_all=True)`.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from timm.layers import DropPath
from torch import nn
from torchvision.models.video.resnet import (
    BasicBlock,
    Bottleneck,
    Conv2Plus1D,
    Conv3DNoTemporal,
    Conv3DSimple,
)

from .checkpoints import CheckpointError
from .registry import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, InputContract
from .registry import is_model, register_alias, register_model
from .sts import convert_to_sts, sts_mode
from .tuning import checkpoint_seq, drop_path_rates

TINY_WIDTHS = (8, 16, 32, 64)


def r2plus1d_midplanes(in_planes: int, out_planes: int, spatial_kernel: int = 3) -> int:
    """Mid-planes that give a (2+1)D conv the parameters of a 3 x k x k conv (R(2+1)D paper); mmaction
    keeps t = 3 in the formula for every kernel, its 3x7x7 stem (83) and 1x1x1 shortcuts included."""
    k2 = spatial_kernel * spatial_kernel
    return (3 * k2 * in_planes * out_planes) // (k2 * in_planes + 3 * out_planes)


class Stem3d(nn.Sequential):
    """conv-BN-ReLU stem (+ 1x3x3 max-pool). `factorized` gives R(2+1)D's 1x7x7 then tx1x1 stem,
    with `midplanes` between them (default torchvision's 45 for 64 wide).

    Module indices match torchvision's BasicStem / R2Plus1dStem, so their weights load."""

    def __init__(self, width: int = 64, temporal_kernel: int = 3, pool: bool = False,
                 factorized: bool = False, in_chans: int = 3, midplanes: int | None = None):
        kt = temporal_kernel
        if factorized:  # torchvision hard-codes 45 mid channels for its 64-wide stem
            mid = midplanes or max(1, width * 45 // 64)
            layers = [nn.Conv3d(in_chans, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                      nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
                      nn.Conv3d(mid, width, (kt, 1, 1), 1, (kt // 2, 0, 0), bias=False)]
        else:
            layers = [nn.Conv3d(in_chans, width, (kt, 7, 7), (1, 2, 2), (kt // 2, 3, 3), bias=False)]
        layers += [nn.BatchNorm3d(width), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        super().__init__(*layers)
        self.out_channels = width
        self.factorized = factorized


class DepthwiseConv3d(nn.Conv3d):
    """Conv maker of ir-CSN: a 3x3x3 depthwise conv (channel-separated), strided in time too."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int | None = None,
                 stride: int = 1, padding: int = 1):
        if in_planes != out_planes:
            raise ValueError(f"depthwise conv needs in_planes == out_planes, got {in_planes} -> {out_planes}")
        super().__init__(in_planes, out_planes, 3, stride, padding, groups=in_planes, bias=False)

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


class CaffeBasicBlock(BasicBlock):
    """BasicBlock whose second (2+1)D conv sizes its mid-planes from its own channels, as in
    Caffe2 / VMZ R(2+1)D-34; torchvision re-uses the first conv's (pytorch/vision#1265)."""

    def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
        super().__init__(inplanes, planes, conv_builder, stride, downsample)
        if inplanes != planes:
            self.conv2[0] = conv_builder(planes, planes, r2plus1d_midplanes(planes, planes))


class CaffeBottleneck(Bottleneck):
    """Bottleneck whose (2+1)D conv (planes -> planes) is sized from its own channels."""

    def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
        super().__init__(inplanes, planes, conv_builder, stride, downsample)
        if inplanes != planes:
            self.conv2[0] = conv_builder(planes, planes, r2plus1d_midplanes(planes, planes), stride)


class TemporalBottleneck(Bottleneck):
    """Bottleneck with a 3x1x1 first conv ("conv a"): SlowOnly / SlowFast's temporal blocks."""

    def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
        super().__init__(inplanes, planes, conv_builder, stride, downsample)
        self.conv1[0] = nn.Conv3d(inplanes, planes, (3, 1, 1), padding=(1, 0, 0), bias=False)


class FactorizedConv3d(nn.Sequential):
    """Conv maker of R(2+1)D: torchvision's Conv2Plus1D ((1, k, k) conv, BN, ReLU, (k, 1, 1) conv,
    same indices) taking a (t, h, w) stride as well as an int, and any k: k = 1 gives mmaction's
    factorised 1x1x1 shortcuts."""

    def __init__(self, in_planes: int, out_planes: int, midplanes: int, stride=1, padding: int = 1,
                 kernel: int = 3):
        t, s = (stride[0], stride[1]) if isinstance(stride, tuple) else (stride, stride)
        super().__init__(
            nn.Conv3d(in_planes, midplanes, (1, kernel, kernel), (1, s, s), (0, padding, padding), bias=False),
            nn.BatchNorm3d(midplanes), nn.ReLU(inplace=True),
            nn.Conv3d(midplanes, out_planes, (kernel, 1, 1), (t, 1, 1), (padding, 0, 0), bias=False))

    @staticmethod
    def get_downsample_stride(stride: int) -> tuple[int, int, int]:
        return stride, stride, stride


def _shortcut(inplanes: int, out_planes: int, stride, factorized: bool) -> nn.Sequential:
    """1x1x1 conv + BN; `factorized`: the conv as a (2+1)D pair (mmaction's ResNet2Plus1d)."""
    if factorized:
        conv = FactorizedConv3d(inplanes, out_planes, r2plus1d_midplanes(inplanes, out_planes, 1), stride, 0, 1)
    else:
        conv = nn.Conv3d(inplanes, out_planes, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm3d(out_planes))


def make_res_stage(block, conv_maker, inplanes: int, planes: int, num_blocks: int,
                   stride: int | tuple[int, int, int] = 1, factorized_downsample: bool = False) -> nn.Sequential:
    """One residual stage, as torchvision's VideoResNet._make_layer but with explicit in-planes
    (SlowFast's slow pathway receives extra lateral channels). An int `stride` is spread over the axes
    the conv maker strides; a (t, h, w) one is used as it is (see `temporal_strides`)."""
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        down_stride = stride if isinstance(stride, tuple) else conv_maker.get_downsample_stride(stride)
        downsample = _shortcut(inplanes, out_planes, down_stride, factorized_downsample)
    blocks = [block(inplanes, planes, conv_maker, stride, downsample)]
    blocks += [block(out_planes, planes, conv_maker) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def add_drop_path(stages, rate: float) -> None:
    """Stochastic depth on every block's residual branch, the rate rising linearly from 0 at the first block
    to `rate` at the last (timm's rule). The DropPath ends the branch's last conv-BN Sequential, so the
    state-dict keys stay those of the plain network."""
    blocks = [block for stage in stages for block in stage]
    for block, p in zip(blocks, drop_path_rates(rate, len(blocks))):
        if p > 0:
            (block.conv3 if isinstance(block, Bottleneck) else block.conv2).append(DropPath(p))


def init_weights_(module: nn.Module) -> None:
    """torchvision's video-ResNet initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _per_stage(value, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 4
    if len(values) != 4:
        raise ValueError(f"{name} needs one entry per stage (4), got {len(values)}")
    return values


# conv makers that take a (t, h, w) stride as it is (the others build it from one int)
_TIME_STRIDED_MAKERS = (Conv3DSimple, DepthwiseConv3d, FactorizedConv3d)


def _stage_strides(makers: list, temporal_strides) -> list:
    """Each stage's stride: 2 in space from res3 on; in time as the conv maker strides, unless
    `temporal_strides` (one per stage) says otherwise."""
    strides = [1, 2, 2, 2]
    if temporal_strides is None:
        return strides
    unfit = [m.__name__ for m in makers if not issubclass(m, _TIME_STRIDED_MAKERS)]
    if unfit:
        fit = ", ".join(m.__name__ for m in _TIME_STRIDED_MAKERS)
        raise ValueError(f"temporal_strides needs full 3D convolutions ({fit}), not {unfit[0]}")
    times = _per_stage(temporal_strides, "temporal_strides")
    return [s if t == s == 1 else (t, s, s) for t, s in zip(times, strides)]


def set_bn_eps(model: nn.Module, eps: float) -> None:
    """Every BatchNorm's eps, except the norms inside a (2+1)D factorisation (between its spatial and
    temporal conv): mmaction's ResNet2Plus1d keeps torch's default there whatever its norm_cfg."""
    inner = {id(m[1]) for m in model.modules()
             if isinstance(m, (Conv2Plus1D, FactorizedConv3d)) or getattr(m, "factorized", False) is True}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d) and id(m) not in inner:
            m.eps = eps


class ResNet3d(nn.Module):
    """Generic 3D ResNet: `block` and `conv_makers` may be one value or one per stage; `temporal_strides`
    (one per stage, full 3D convs only) sets the time stride of each stage's first block, e.g. (1, 1, 1, 1)
    for IBM's I3D without temporal stride. `bn_eps` (mmaction's CSN and R(2+1)D use 1e-3) and
    `factorized_downsample` (1x1x1 shortcuts as (2+1)D pairs, mmaction's R(2+1)D) are their options;
    `drop_path_rate` adds stochastic depth on the residual branches (`add_drop_path`)."""

    head_names = ("fc.",)

    def __init__(self, block, conv_makers, layers: Sequence[int], stem: nn.Module,
                 widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 400,
                 drop_rate: float = 0.0, inflate_mode: str = "mean", temporal_strides=None,
                 bn_eps: float = 1e-5, factorized_downsample: bool = False, drop_path_rate: float = 0.0):
        super().__init__()
        blocks, makers = _per_stage(block, "block"), _per_stage(conv_makers, "conv_makers")
        layers, widths = _per_stage(layers, "layers"), _per_stage(widths, "widths")
        self.inflate_mode = inflate_mode
        self.stem = stem
        inplanes = stem.out_channels
        strides = _stage_strides(makers, temporal_strides)
        for i in range(4):
            stage = make_res_stage(blocks[i], makers[i], inplanes, widths[i], layers[i], strides[i],
                                   factorized_downsample)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = widths[i] * blocks[i].expansion
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights_(self)
        set_bn_eps(self, bn_eps)
        add_drop_path(self.res_stages(), drop_path_rate)
        self.grad_checkpointing = False

    def res_stages(self) -> tuple[nn.Module, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's description of the stages (layer_decay; frozen_stages counts its stem and coarse groups): the
        stem, then each residual stage (`coarse`) or block; the classifier matches nothing (timm: the head)."""
        return dict(stem=r"^stem", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x):
        x = self.stem(x)
        for stage in self.res_stages():
            x = checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        """Pool and classify; `pre_logits`: the (N, num_features) pooled clip embedding the classifier takes."""
        x = self.dropout(self.avgpool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, state_dict: dict) -> None:
        """3D weights of this architecture load directly; 2D ResNet weights are inflated."""
        from .inflate import load_inflated

        load_inflated(self, state_dict, mode=self.inflate_mode)


# contracts: what each family was trained on
I3D_CONTRACT = InputContract("NCTHW", 8, 224, IMAGENET_MEAN, IMAGENET_STD, "tsn")  # IBM: uniform sampling
VIDEO_RESNET_CONTRACT = InputContract(  # torchvision: 16 frames re-sampled to 15 fps (~ stride 2 at 30 fps)
    "NCTHW", 16, 112, KINETICS_MEAN, KINETICS_STD, "dense", frame_stride=2)
CSN_CONTRACT = InputContract("NCTHW", 32, 224, IMAGENET_MEAN, IMAGENET_STD, "dense", frame_stride=2)
SLOWONLY_CONTRACT = InputContract("NCTHW", 8, 224, IMAGENET_MEAN, IMAGENET_STD, "dense", frame_stride=8)
TINY_CROP = 64

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
SLOWONLY_BLOCKS = (Bottleneck, Bottleneck, TemporalBottleneck, TemporalBottleneck)


def create_resnet3d(block, conv_maker, layers, stem: nn.Module, contract: InputContract,
                    num_classes: int = 400, num_frames: int | None = None, sts: bool | str = False,
                    widths=(64, 128, 256, 512), **kwargs) -> ResNet3d:
    """Build, optionally switch the temporal convs to STS (`sts`: True = the authors' computation,
    or a mode of models/sts.py), and attach the contract."""
    model = ResNet3d(block, conv_maker, layers, stem, widths, num_classes, **kwargs)
    mode = sts_mode(sts)
    if mode:  # a factorised stem's temporal conv is one of R(2+1)D's (2+1)D convs, STS there too
        convert_to_sts(*((stem,) if getattr(stem, "factorized", False) else ()), *model.res_stages(), mode=mode)
        contract = contract.replace(mean=IMAGENET_MEAN, std=IMAGENET_STD)  # STS fine-tunes ImageNet weights
    model.input_contract = contract.replace(num_frames=num_frames or contract.num_frames)
    return model


def _tiny(contract: InputContract, frames: int = 8) -> InputContract:
    return contract.replace(num_frames=frames, crop_size=TINY_CROP)


def _i3d(depth: int, width=64, widths=(64, 128, 256, 512), layers=None, temporal_stride: bool = True, **kwargs):
    """IBM's I3D-ResNet; temporal_stride=False is their --without_t_stride, as every file they released."""
    block = Bottleneck if depth >= 50 else BasicBlock
    kwargs.setdefault("drop_rate", 0.5)
    if not temporal_stride:
        kwargs["temporal_strides"] = (1, 1, 1, 1)
    return create_resnet3d(block, Conv3DSimple, layers or DEPTHS[depth],
                           Stem3d(width, 3, pool=True), widths=widths, **kwargs)


def _r3d(depth: int, factorized: bool, width=64, widths=(64, 128, 256, 512), layers=None,
         stem_pool: bool = False, factorize_all: bool = False, **kwargs):
    """R3D / R(2+1)D. `factorize_all`: every conv a (2+1)D pair sized by its own channels, the stem
    (83 mid-planes for 64 wide, not torchvision's 45) and the 1x1x1 shortcuts included, as mmaction's
    ResNet2Plus1d; `stem_pool`: a 1x3x3 max-pool after the stem (mmaction's too)."""
    if factorize_all and not factorized:
        raise ValueError("factorize_all is an option of the (2+1)D networks (r2plus1d_*)")
    if factorized:  # torchvision's 18 keeps its block-level mid-planes; deeper ones (and mmaction's) Caffe2's
        block = BasicBlock if depth == 18 and not factorize_all else CaffeBasicBlock if depth < 50 else CaffeBottleneck
    else:
        block = BasicBlock if depth < 50 else Bottleneck
    maker = FactorizedConv3d if factorized else Conv3DSimple
    stem_mid = r2plus1d_midplanes(3, width, 7) if factorize_all else None
    stem = Stem3d(width, 3, pool=stem_pool, factorized=factorized, midplanes=stem_mid)
    return create_resnet3d(block, maker, layers or DEPTHS[depth], stem, widths=widths,
                           factorized_downsample=factorize_all, **kwargs)


def _ircsn(width=64, widths=(64, 128, 256, 512), layers=(3, 4, 6, 3), **kwargs):
    return create_resnet3d(Bottleneck, DepthwiseConv3d, layers, Stem3d(width, 3, pool=True),
                           widths=widths, **kwargs)


def _slowonly(width=64, widths=(64, 128, 256, 512), layers=(3, 4, 6, 3), **kwargs):
    kwargs.setdefault("drop_rate", 0.5)
    return create_resnet3d(SLOWONLY_BLOCKS, Conv3DNoTemporal, layers, Stem3d(width, 1, pool=True),
                           widths=widths, **kwargs)


@register_model
def i3d_resnet18(num_classes=400, num_frames=8, **kwargs):
    return _i3d(18, contract=I3D_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def i3d_resnet34(num_classes=400, num_frames=8, **kwargs):
    return _i3d(34, contract=I3D_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def i3d_resnet50(num_classes=400, num_frames=8, **kwargs):
    """I3D-ResNet-50; temporal_stride=False for IBM's released K400/SSv2 files."""
    return _i3d(50, contract=I3D_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def i3d_resnet101(num_classes=400, num_frames=8, **kwargs):
    """I3D-ResNet-101; temporal_stride=False for IBM's released K400/SSv2 files."""
    return _i3d(101, contract=I3D_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def i3d_resnet152(num_classes=400, num_frames=8, **kwargs):
    return _i3d(152, contract=I3D_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def i3d_tiny(num_classes=400, num_frames=8, **kwargs):
    return _i3d(50, 8, TINY_WIDTHS, (1, 1, 1, 1), contract=_tiny(I3D_CONTRACT), num_classes=num_classes,
                num_frames=num_frames, **kwargs)


@register_model
def r3d_18(num_classes=400, num_frames=16, **kwargs):
    return _r3d(18, False, contract=VIDEO_RESNET_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def r3d_34(num_classes=400, num_frames=16, **kwargs):
    return _r3d(34, False, contract=VIDEO_RESNET_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def r3d_50(num_classes=400, num_frames=16, **kwargs):
    return _r3d(50, False, contract=VIDEO_RESNET_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def r3d_tiny(num_classes=400, num_frames=8, **kwargs):
    return _r3d(18, False, 8, TINY_WIDTHS, (1, 1, 1, 1), contract=_tiny(VIDEO_RESNET_CONTRACT),
                num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def r2plus1d_18(num_classes=400, num_frames=16, **kwargs):
    return _r3d(18, True, contract=VIDEO_RESNET_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def r2plus1d_34(num_classes=400, num_frames=16, **kwargs):
    return _r3d(34, True, contract=VIDEO_RESNET_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def r2plus1d_50(num_classes=400, num_frames=16, **kwargs):
    return _r3d(50, True, contract=VIDEO_RESNET_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def r2plus1d_tiny(num_classes=400, num_frames=8, **kwargs):
    return _r3d(18, True, 8, TINY_WIDTHS, (1, 1, 1, 1), contract=_tiny(VIDEO_RESNET_CONTRACT),
                num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def ircsn_50(num_classes=400, num_frames=32, **kwargs):
    return _ircsn(contract=CSN_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def ircsn_101(num_classes=400, num_frames=32, **kwargs):
    return _ircsn(layers=DEPTHS[101], contract=CSN_CONTRACT, num_classes=num_classes, num_frames=num_frames,
                  **kwargs)


@register_model
def ircsn_152(num_classes=400, num_frames=32, **kwargs):
    return _ircsn(layers=DEPTHS[152], contract=CSN_CONTRACT, num_classes=num_classes, num_frames=num_frames,
                  **kwargs)


@register_model
def ircsn_tiny(num_classes=400, num_frames=8, **kwargs):
    return _ircsn(8, TINY_WIDTHS, (1, 1, 1, 1), contract=_tiny(CSN_CONTRACT), num_classes=num_classes,
                  num_frames=num_frames, **kwargs)


@register_model
def slowonly_50(num_classes=400, num_frames=8, **kwargs):
    return _slowonly(contract=SLOWONLY_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


@register_model
def slowonly_tiny(num_classes=400, num_frames=8, **kwargs):
    return _slowonly(8, TINY_WIDTHS, (1, 1, 1, 1), contract=_tiny(SLOWONLY_CONTRACT), num_classes=num_classes,
                     num_frames=num_frames, **kwargs)


register_alias("i3d_resnet", "i3d_resnet50")


# ------------------------------------------------------------------ mmaction files (the STS paper's)
# Recognizer3D state dicts: `backbone.*` in mmcv ConvModule names (`convN.conv` / `convN.bn`), R(2+1)D's
# factorised `conv.conv_s` / `conv.bn_s` / `conv.conv_t`, ir-CSN's `conv2` wrapped in a Sequential,
# and an I3DHead / SlowFastHead `cls_head.fc_cls`. The recogniser, which also chooses SlowFast, is
# models/sts_files.py's `mmaction_resnet3d`.

_MMACTION_RULES = (  # first match wins; a pathway's key without its "backbone." prefix
    (r"^conv1\.conv\.conv_s\.", "stem.0."), (r"^conv1\.conv\.bn_s\.", "stem.1."),
    (r"^conv1\.conv\.conv_t\.", "stem.3."), (r"^conv1\.conv\.", "stem.0."),
    (r"\.conv2\.0\.conv\.", ".conv2.0."), (r"\.conv2\.0\.bn\.", ".conv2.1."),
    (r"\.conv\.conv_s\.", ".0.0."), (r"\.conv\.bn_s\.", ".0.1."), (r"\.conv\.conv_t\.", ".0.3."),
    (r"\.conv\.", ".0."), (r"\.bn\.", ".1."),
)


def mmaction_pathway_key(key: str, factorized_stem: bool) -> str:
    """One mmaction ResNet3d pathway key (`conv1.*`, `layerN.*`) -> this ResNet3d's key."""
    if key.startswith("conv1.bn."):  # after the factorised stem's conv_s, bn_s, ReLU, conv_t
        return ("stem.4." if factorized_stem else "stem.1.") + key[len("conv1.bn."):]
    for pattern, replacement in _MMACTION_RULES:
        new, found = re.subn(pattern, replacement, key, count=1)
        if found:
            return new
    return key


def mmaction_layers(sd: dict, prefix: str) -> tuple[int, ...]:
    """Blocks per stage of the pathway whose keys start with `prefix`."""
    return tuple(len({k[len(prefix):].split(".")[1] for k in sd if k.startswith(f"{prefix}layer{i}.")})
                 for i in range(1, 5))


def _mmaction_depth(layers: tuple, bottleneck: bool) -> int | None:
    return next((d for d, blocks in DEPTHS.items() if blocks == layers and (d >= 50) == bottleneck), None)


def _kernel_t(sd: dict, key: str) -> int | None:
    weight = sd.get(key)
    return weight.shape[2] if weight is not None and weight.ndim == 5 else None


def mmaction_single_path(sd: dict, sts: bool) -> tuple[str, dict]:
    """(registered name, arguments) of an ir-CSN, SlowOnly or R(2+1)D backbone, from keys and shapes."""
    blocks = mmaction_layers(sd, "backbone.")
    bottleneck = "backbone.layer1.0.conv3.conv.weight" in sd
    depth = _mmaction_depth(blocks, bottleneck)
    csn_conv = sd.get("backbone.layer1.0.conv2.0.conv.weight")
    stem_t = _kernel_t(sd, "backbone.conv1.conv.weight")
    conv1_t = [_kernel_t(sd, f"backbone.layer{i}.0.conv1.conv.weight") for i in range(1, 5)]
    # Time strides are not in the weights either: the STS configs (and the STS fork's ResNet3dCSN default)
    # have none; mmaction2's own R(2+1)D and ir-CSN stride time in res3-res5, as ours do by default.
    no_time_stride = 1 if sts else None
    if "backbone.conv1.conv.conv_s.weight" in sd and not bottleneck:  # (their Bottleneck3d is not R(2+1)D's)
        name = f"r2plus1d_{depth}"
        args = dict(bn_eps=1e-3, stem_pool=True, factorize_all=True, temporal_strides=no_time_stride)
    elif csn_conv is not None and csn_conv.shape[1] == 1 and bottleneck:
        name, args = f"ircsn_{depth}", dict(bn_eps=1e-3, temporal_strides=no_time_stride)
    elif stem_t == 1 and bottleneck and conv1_t == [1, 1, 3, 3]:
        name, args = f"slowonly_{depth}", {}
    else:
        raise CheckpointError("an mmaction ResNet3d backbone other than ir-CSN, SlowOnly, R(2+1)D or SlowFast "
                              f"(stem kernel {stem_t}, first convs {conv1_t}, blocks {blocks})")
    if depth is None or not is_model(name):
        raise CheckpointError(f"mmaction {name.split('_')[0]} with blocks {blocks} has no registered model")
    return name, {k: v for k, v in args.items() if v is not None}


def mmaction_single_path_state(sd: dict) -> dict:
    """An mmaction ir-CSN / SlowOnly / R(2+1)D state dict in this ResNet3d's keys."""
    factorized = "backbone.conv1.conv.conv_s.weight" in sd
    return {("fc." + k[len("cls_head.fc_cls."):] if k.startswith("cls_head.fc_cls.")
             else mmaction_pathway_key(k[len("backbone."):], factorized)): v for k, v in sd.items()}
