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
  bottleneck 3x3 inflated to 3x3x3, temporal stride 2 in res3-res5 (their default "-ts" model).
* r3d_* / r2plus1d_*: torchvision's R3D-18 and R(2+1)D-18 exactly; the 34-layer R(2+1)D of
  VMZ / CSN (Caffe2 mid-planes: every (2+1)D conv sized from its own in/out channels).
* ircsn_50: interaction-reduced CSN: the bottleneck's 3x3x3 is depthwise.
* slowonly_50: PySlowFast SlowOnly-R50: 1x7x7 stem, no temporal stride, 3x1x1 first bottleneck
  conv in res4-res5 only.
`sts=True` turns the temporal convolutions of the residual stages into STS convolutions
(models/sts.py), keeping the parameters and state-dict keys.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn
from torchvision.models.video.resnet import (
    BasicBlock,
    Bottleneck,
    Conv2Plus1D,
    Conv3DNoTemporal,
    Conv3DSimple,
)

from .registry import IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, InputContract
from .registry import register_alias, register_model
from .sts import convert_to_sts

TINY_WIDTHS = (8, 16, 32, 64)


def r2plus1d_midplanes(in_planes: int, out_planes: int) -> int:
    """Mid-planes that give a (2+1)D conv the parameters of a 3x3x3 conv (R(2+1)D paper)."""
    return (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)


class Stem3d(nn.Sequential):
    """conv-BN-ReLU stem (+ 1x3x3 max-pool). `factorized` gives R(2+1)D's 1x7x7 then tx1x1 stem.

    Module indices match torchvision's BasicStem / R2Plus1dStem, so their weights load."""

    def __init__(self, width: int = 64, temporal_kernel: int = 3, pool: bool = False,
                 factorized: bool = False, in_chans: int = 3):
        kt = temporal_kernel
        if factorized:  # torchvision hard-codes 45 mid channels for its 64-wide stem
            mid = max(1, width * 45 // 64)
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


def make_res_stage(block, conv_maker, inplanes: int, planes: int, num_blocks: int,
                   stride: int = 1) -> nn.Sequential:
    """One residual stage, as torchvision's VideoResNet._make_layer but with explicit in-planes
    (SlowFast's slow pathway receives extra lateral channels)."""
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        downsample = nn.Sequential(
            nn.Conv3d(inplanes, out_planes, 1, stride=conv_maker.get_downsample_stride(stride), bias=False),
            nn.BatchNorm3d(out_planes),
        )
    blocks = [block(inplanes, planes, conv_maker, stride, downsample)]
    blocks += [block(out_planes, planes, conv_maker) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


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


class ResNet3d(nn.Module):
    """Generic 3D ResNet: `block` and `conv_makers` may be one value or one per stage."""

    head_names = ("fc.",)

    def __init__(self, block, conv_makers, layers: Sequence[int], stem: nn.Module,
                 widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 400,
                 drop_rate: float = 0.0, inflate_mode: str = "mean"):
        super().__init__()
        blocks, makers = _per_stage(block, "block"), _per_stage(conv_makers, "conv_makers")
        layers, widths = _per_stage(layers, "layers"), _per_stage(widths, "widths")
        self.inflate_mode = inflate_mode
        self.stem = stem
        inplanes = stem.out_channels
        for i in range(4):
            stage = make_res_stage(blocks[i], makers[i], inplanes, widths[i], layers[i], 1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
            inplanes = widths[i] * blocks[i].expansion
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(inplanes, num_classes)
        init_weights_(self)

    def res_stages(self) -> tuple[nn.Module, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def forward_features(self, x):
        x = self.stem(x)
        for stage in self.res_stages():
            x = stage(x)
        return x

    def forward_head(self, x):
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))

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

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
SLOWONLY_BLOCKS = (Bottleneck, Bottleneck, TemporalBottleneck, TemporalBottleneck)


def create_resnet3d(block, conv_maker, layers, stem: nn.Module, contract: InputContract,
                    num_classes: int = 400, num_frames: int | None = None, sts: bool = False,
                    widths=(64, 128, 256, 512), **kwargs) -> ResNet3d:
    """Build, optionally switch the stages' temporal convs to STS, and attach the contract."""
    model = ResNet3d(block, conv_maker, layers, stem, widths, num_classes, **kwargs)
    if sts:
        convert_to_sts(*model.res_stages())
    model.input_contract = contract.replace(num_frames=num_frames or contract.num_frames)
    return model


def _tiny(contract: InputContract, frames: int = 8) -> InputContract:
    return contract.replace(num_frames=frames, crop_size=TINY_CROP)


def _i3d(depth: int, width=64, widths=(64, 128, 256, 512), layers=None, **kwargs):
    block = Bottleneck if depth >= 50 else BasicBlock
    kwargs.setdefault("drop_rate", 0.5)
    return create_resnet3d(block, Conv3DSimple, layers or DEPTHS[depth],
                           Stem3d(width, 3, pool=True), widths=widths, **kwargs)


def _r3d(depth: int, factorized: bool, width=64, widths=(64, 128, 256, 512), layers=None, **kwargs):
    if factorized:  # torchvision's 18 keeps its block-level mid-planes; deeper ones use Caffe2's
        block = BasicBlock if depth == 18 else CaffeBasicBlock if depth < 50 else CaffeBottleneck
    else:
        block = BasicBlock if depth < 50 else Bottleneck
    maker = Conv2Plus1D if factorized else Conv3DSimple
    return create_resnet3d(block, maker, layers or DEPTHS[depth], Stem3d(width, 3, factorized=factorized),
                           widths=widths, **kwargs)


def _ircsn(width=64, widths=(64, 128, 256, 512), layers=(3, 4, 6, 3), **kwargs):
    return create_resnet3d(Bottleneck, DepthwiseConv3d, layers, Stem3d(width, 3, pool=True),
                           widths=widths, **kwargs)


def _slowonly(width=64, widths=(64, 128, 256, 512), layers=(3, 4, 6, 3), **kwargs):
    kwargs.setdefault("drop_rate", 0.5)
    return create_resnet3d(SLOWONLY_BLOCKS, Conv3DNoTemporal, layers, Stem3d(width, 1, pool=True),
                           widths=widths, **kwargs)


@register_model
def i3d_resnet50(num_classes=400, num_frames=8, **kwargs):
    return _i3d(50, contract=I3D_CONTRACT, num_classes=num_classes, num_frames=num_frames, **kwargs)


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
