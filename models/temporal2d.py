"""2D CNNs for video on a timm ResNet: TSN, and TSN with a temporal module in each residual block.

* TSN (Wang et al., ECCV 2016): every one of T frames (one per segment) goes through the 2D network on
  its own, the per-frame logits are averaged (average consensus).
* TSM (Lin et al., ICCV 2019): a temporal shift of 1/8 of the channels forward and 1/8 backward in time,
  on the residual branch of every block before conv1 ("residual shift"); no parameters.
* TAM (bLVNet-TAM, Fan et al., NeurIPS 2019, as in IBM's action-recognition-pytorch): a depthwise
  temporal convolution of kernel 3 blending each frame with its neighbours, followed by a ReLU, at the
  same place; 3 parameters per input channel.

All three are one model, `TemporalSegmentResNet`, a timm `ResNet` whose state dict keys are those of
timm's and torchvision's ResNets, so ImageNet weights load as they are; TSM and TAM only pass a
`temporal_layer` to the blocks. `temporal_pool="max"|"avg"` adds IBM's temporal pooling (kernel 3,
stride 2 over time after res2, res3 and res4: their default, the "-ts" models); without it (the default
here) the network keeps every frame, as IBM's `--without_t_stride` and all of their released files.

The released files of IBM's study (Chen et al., CVPR 2021) load with `models.from_checkpoint`: the
recogniser at the end of this file reads their `arch` string, for the 2D ResNets and for I3D-ResNet.
"""
from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from .checkpoints import Checkpoint, CheckpointError, Recognized, register_origin
from .inflate import to_video_resnet_keys
from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract, is_model, register_model
from .tuning import checkpoint_seq
from .weights import load_state_dict_checked

TAM_BLENDINGS = ("sum", "max")
TEMPORAL_POOLS = ("max", "avg")


class TemporalShift(nn.Module):
    """Shift `1/fold_div` of the channels one frame back and as many one frame forward, zero-filled."""

    def __init__(self, channels: int, num_frames: int, fold_div: int = 8):
        super().__init__()
        self.num_frames = num_frames
        self.fold = channels // fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N*T, C, H, W)
        clips = x.unflatten(0, (-1, self.num_frames))
        f = self.fold
        # built by concatenation, not by writing into slices: an exported graph (ONNX) then keeps the batch
        # size dynamic, where slice assignment bakes in the traced one
        back, fwd = clips[:, :, :f], clips[:, :, f:2 * f]
        back = F.pad(back[:, 1:], (0, 0, 0, 0, 0, 0, 0, 1))  # frame t sees frame t+1, the last sees zeros
        fwd = F.pad(fwd[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0))  # frame t sees frame t-1, the first sees zeros
        return torch.cat([back, fwd, clips[:, :, 2 * f:]], 2).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, fold={self.fold}"


class TemporalAggregation(nn.Module):
    """TAM: out[t] = relu(blend_k w_k * x[t + k - K // 2]) over the K blended frames, zero beyond the clip.

    IBM's code applies one 1x1 convolution per blended frame (depthwise unless `--no_dw_conv`) and shifts
    their outputs; with `blending="sum"` that is one temporal convolution of kernel K with the same
    parameters and MACs. `blending="max"` takes the largest of the K terms instead of their sum.
    """

    def __init__(self, channels: int, num_frames: int, kernel_size: int = 3, blending: str = "sum",
                 depthwise: bool = True):
        super().__init__()
        if blending not in TAM_BLENDINGS:
            raise ValueError(f"TAM blending must be one of {TAM_BLENDINGS}, got {blending!r}")
        self.num_frames = num_frames
        self.blending = blending
        # symmetric padding K // 2; an even K yields one frame too many at the end, which forward drops
        self.conv = nn.Conv3d(channels, channels, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0),
                              groups=channels if depthwise else 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # identity (centre tap 1): a TAM network built on ImageNet weights starts out exactly as TSN, and the
        # neighbour taps still receive gradients, so temporal order is learnt from there
        nn.init.dirac_(self.conv.weight, groups=self.conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N*T, C, H, W)
        clips = x.unflatten(0, (-1, self.num_frames)).transpose(1, 2)  # (N, C, T, H, W), a view
        if self.blending == "sum":
            out = self.conv(clips)[:, :, :self.num_frames]
        else:
            out = self._max_blend(clips)
        return F.relu(out).transpose(1, 2).flatten(0, 1)

    def _max_blend(self, clips: torch.Tensor) -> torch.Tensor:
        t, pad = self.num_frames, self.conv.padding[0]
        padded = F.pad(clips, (0, 0, 0, 0, pad, pad))  # zero frames: a missing neighbour's term is 0, as IBM's
        w = self.conv.weight
        terms = [F.conv3d(padded[:, :, k:k + t], w[:, :, k:k + 1], groups=self.conv.groups)
                 for k in range(w.shape[2])]
        return torch.stack(terms).amax(0)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, blending={self.blending!r}"


class TemporalPool(nn.Module):
    """IBM's temporal pooling between stages: max or average over 3 frames, stride 2, one zero frame of
    padding each side (counted in the average, as their nn.AvgPool3d does): T frames -> ceil(T / 2)."""

    def __init__(self, num_frames: int, mode: str = "max"):
        super().__init__()
        if mode not in TEMPORAL_POOLS:
            raise ValueError(f"temporal_pool must be one of {TEMPORAL_POOLS} or None, got {mode!r}")
        self.num_frames = num_frames
        # avg_pool3d refuses clips shorter than its kernel even when padded: the zero frames are added by hand
        self.zero_pad = mode == "avg"
        if mode == "max":
            self.pool = nn.MaxPool3d((3, 1, 1), (2, 1, 1), (1, 0, 0))
        else:
            self.pool = nn.AvgPool3d((3, 1, 1), (2, 1, 1))

    @property
    def out_frames(self) -> int:
        return (self.num_frames - 1) // 2 + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N*T, C, H, W) -> (N*T', C, H, W)
        clips = x.unflatten(0, (-1, self.num_frames)).transpose(1, 2)
        if self.zero_pad:
            clips = F.pad(clips, (0, 0, 0, 0, 1, 1))
        return self.pool(clips).transpose(1, 2).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, zero_pad={self.zero_pad}"


class TemporalBottleneck(Bottleneck):
    """timm's Bottleneck with a temporal module on the residual branch, before conv1; the shortcut is untouched."""

    def __init__(self, inplanes: int, planes: int, *args, temporal_layer=None, **kwargs):
        super().__init__(inplanes, planes, *args, **kwargs)
        self.temporal = temporal_layer(inplanes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(self.temporal(x))))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act3(x + shortcut)


class TemporalBasicBlock(BasicBlock):
    """timm's BasicBlock (ResNet-18/34) with the temporal module at the same place as in the Bottleneck."""

    def __init__(self, inplanes: int, planes: int, *args, temporal_layer=None, **kwargs):
        super().__init__(inplanes, planes, *args, **kwargs)
        self.temporal = temporal_layer(inplanes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(self.temporal(x))))))
        x = self.bn2(self.conv2(x))
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act2(x + shortcut)


_TEMPORAL_BLOCKS = {Bottleneck: TemporalBottleneck, BasicBlock: TemporalBasicBlock}


class TemporalSegmentResNet(ResNet):
    """A 2D ResNet applied to each frame of a (N, T, C, H, W) clip; logits averaged over the frames left."""

    def __init__(self, layers, block=Bottleneck, num_classes: int = 400, num_frames: int = 8,
                 crop_size: int = 224, temporal_layer=None, temporal_pool: str | None = None, **resnet_kwargs):
        block_args = None
        if temporal_layer is not None:
            block = _TEMPORAL_BLOCKS[block]
            block_args = dict(temporal_layer=partial(temporal_layer, num_frames=num_frames))
        super().__init__(block=block, layers=layers, num_classes=num_classes, block_args=block_args,
                         **resnet_kwargs)
        self.num_frames = num_frames
        self.temporal_pools = None
        frames = [num_frames]  # of each stage
        if temporal_pool is not None:  # after res2, res3 and res4
            self.temporal_pools = nn.ModuleList()
            for _ in range(3):
                self.temporal_pools.append(TemporalPool(frames[-1], temporal_pool))
                frames.append(self.temporal_pools[-1].out_frames)
        else:
            frames *= 4
        if temporal_layer is not None:  # timm gives every stage the same block_args: set the later stages' frames
            for stage, stage_frames in zip(self.res_stages(), frames):
                for block_module in stage:
                    block_module.temporal.num_frames = stage_frames
        # temporal modules and pools regroup the batch by num_frames; another T would mix frames of two clips
        self.fixed_frames = temporal_layer is not None or temporal_pool is not None
        self.input_contract = InputContract("NTCHW", num_frames, crop_size, IMAGENET_MEAN, IMAGENET_STD, "tsn")
        self.head_names = ("fc.",)

    def res_stages(self) -> tuple[nn.Module, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) clips -> (N, T', C', H', W') feature maps of the T' frames left."""
        n, t = x.shape[:2]
        if self.fixed_frames and t != self.num_frames:
            raise ValueError(f"{type(self).__name__} was built for {self.num_frames} frames, got {t}")
        x = self.maxpool(self.act1(self.bn1(self.conv1(x.flatten(0, 1)))))
        pools = self.temporal_pools or ()
        for i, stage in enumerate(self.res_stages()):
            # timm's set_grad_checkpointing sets the flag; its checkpoint_seq would update BN statistics twice
            x = checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)
            if i < len(pools):
                x = pools[i](x)
        return x.view(n, -1, *x.shape[1:])  # not unflatten: an ONNX export would bake in the traced batch size

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Per-frame pooling and dropout, then the average over frames: of the logits (TSN's consensus), or
        with `pre_logits` of the pooled features, the (N, num_features) clip embedding whose logits are
        the same since the classifier is linear."""
        n = x.shape[0]
        x = super().forward_head(x.flatten(0, 1), pre_logits=pre_logits)
        return x.unflatten(0, (n, -1)).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, state_dict: dict) -> None:
        """Load 2D ResNet weights (timm or torchvision keys); temporal modules a 2D file lacks keep their init."""
        own = self.state_dict()
        state_dict = dict(state_dict)
        for key in own:
            if ".temporal." in key:
                state_dict.setdefault(key, own[key])
        load_state_dict_checked(self, state_dict, source="2D ResNet weights")


# depth -> (block, blocks per stage), as torchvision's and IBM's ResNets
RESNET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
                 101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}
# widths 8..64 (x4 in the bottleneck output), a deep 3x3 stem of width 8 instead of the 64-wide 7x7
_TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_type="deep", stem_width=8, crop_size=64,
             drop_rate=0.1)


def _resnet(depth: int) -> dict:
    block, layers = RESNET_DEPTHS[depth]
    return dict(block=block, layers=layers, crop_size=224, drop_rate=0.5)


def _temporal_resnet(temporal_layer, arch: dict, num_classes: int, num_frames: int, **kwargs):
    return TemporalSegmentResNet(num_classes=num_classes, num_frames=num_frames, temporal_layer=temporal_layer,
                                 **dict(arch, **kwargs))


def _tam(arch: dict, num_classes: int, num_frames: int, blending_frames: int = 3, blending_method: str = "sum",
         depthwise: bool = True, **kwargs):
    """TAM-ResNet; IBM's --blending_frames, --blending_method and --no_dw_conv (depthwise=False)."""
    layer = partial(TemporalAggregation, kernel_size=blending_frames, blending=blending_method, depthwise=depthwise)
    return _temporal_resnet(layer, arch, num_classes, num_frames, **kwargs)


@register_model
def tsn_resnet18(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(None, _resnet(18), num_classes, num_frames, **kwargs)


@register_model
def tsn_resnet34(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(None, _resnet(34), num_classes, num_frames, **kwargs)


@register_model
def tsn_resnet50(num_classes=400, num_frames=8, **kwargs):
    """TSN-ResNet50, average consensus; temporal_pool="max" for IBM's default (temporally strided) TSN."""
    return _temporal_resnet(None, _resnet(50), num_classes, num_frames, **kwargs)


@register_model
def tsn_resnet101(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(None, _resnet(101), num_classes, num_frames, **kwargs)


@register_model
def tsn_resnet152(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(None, _resnet(152), num_classes, num_frames, **kwargs)


@register_model
def tsm_resnet50(num_classes=400, num_frames=8, **kwargs):
    """TSM-ResNet50, residual shift of 1/8 + 1/8 channels."""
    return _temporal_resnet(TemporalShift, _resnet(50), num_classes, num_frames, **kwargs)


@register_model
def tam_resnet18(num_classes=400, num_frames=8, **kwargs):
    return _tam(_resnet(18), num_classes, num_frames, **kwargs)


@register_model
def tam_resnet34(num_classes=400, num_frames=8, **kwargs):
    return _tam(_resnet(34), num_classes, num_frames, **kwargs)


@register_model
def tam_resnet50(num_classes=400, num_frames=8, **kwargs):
    """bLVNet-TAM's temporal aggregation module on ResNet50 (IBM's TAM-b3-sum, their released K400/SSv2 files)."""
    return _tam(_resnet(50), num_classes, num_frames, **kwargs)


@register_model
def tam_resnet101(num_classes=400, num_frames=8, **kwargs):
    """TAM-ResNet101 (IBM's released K400/SSv2 files)."""
    return _tam(_resnet(101), num_classes, num_frames, **kwargs)


@register_model
def tam_resnet152(num_classes=400, num_frames=8, **kwargs):
    return _tam(_resnet(152), num_classes, num_frames, **kwargs)


@register_model
def tsn_tiny(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(None, _TINY, num_classes, num_frames, **kwargs)


@register_model
def tsm_tiny(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(TemporalShift, _TINY, num_classes, num_frames, **kwargs)


@register_model
def tam_tiny(num_classes=400, num_frames=8, **kwargs):
    return _tam(_TINY, num_classes, num_frames, **kwargs)


# --------------------------------------------------------------- IBM action-recognition-pytorch checkpoints

# train.py: arch = "{dataset}-{modality}-{network_name}-f{groups}", plus "-{lr_scheduler}[-syncbn]-bs{B}-e{E}"
# when training; network_name (models/twod_models/resnet.py, threed_models/i3d_resnet.py) is the variant
_IBM_ARCH = re.compile(r"(?P<dataset>\w+)-(?P<modality>rgb|flow)-(?P<net>.+)-f(?P<frames>\d+)"
                       r"(?:-\w+(?:-syncbn)?-bs\d+-e\d+)?")
_IBM_2D = re.compile(r"(?:(?P<module>TAM|TSN)-b(?P<blending_frames>\d+)-(?P<blending>sum|max)(?P<allc>-allc)?-)?"
                     r"resnet-(?P<depth>\d+)(?:-ts-(?P<pool>max|avg))?")
_IBM_I3D = re.compile(r"i3d-resnet-(?P<depth>\d+)(?P<ts>-ts)?")
_IBM_TAM_TERMS = ("prev_se", "curr_se", "next_se")  # their names for the three blended frames of TAM-b3


@register_origin
def ibm_action_recognition(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """train.py's files of IBM's action-recognition-pytorch (the released K400/SSv2 files, model_best.pth.tar):
    TSN/TAM-ResNet and I3D-ResNet, the variant read from the `arch` string (temporal stride "-ts" included)."""
    arch = ckpt.field("arch")
    found = _IBM_ARCH.fullmatch(arch) if isinstance(arch, str) else None
    if found is None:
        return None
    origin = f"IBM action-recognition (arch {arch!r})"
    if found["modality"] != "rgb":
        raise CheckpointError(f"{ckpt.path}: {origin}: optical-flow models are not supported")
    if "fc.weight" not in ckpt.state_dict:
        raise CheckpointError(f"{ckpt.path}: {origin} has no classifier (fc.weight)")
    net = found["net"]
    if (parts := _IBM_2D.fullmatch(net)) is not None:
        model, variant, state_dict = _ibm_2d_variant(parts, ckpt.state_dict)
    elif (parts := _IBM_I3D.fullmatch(net)) is not None:
        model, variant = f"i3d_resnet{parts['depth']}", dict(temporal_stride=parts["ts"] is not None)
        state_dict = to_video_resnet_keys(ckpt.state_dict)
    else:
        raise CheckpointError(f"{ckpt.path}: {origin}: backbone {net!r} is not supported "
                              "(TSN/TAM-ResNet and I3D-ResNet are)")
    if not is_model(model):
        raise CheckpointError(f"{ckpt.path}: {origin}: no {model} (ResNet depth {parts['depth']}) in this toolkit")
    args = dict(num_classes=ckpt.state_dict["fc.weight"].shape[0], num_frames=int(found["frames"]), **variant)
    return Recognized(origin, model, args, state_dict)


def _ibm_2d_variant(parts: re.Match, state_dict: dict) -> tuple[str, dict, dict]:
    variant = dict(temporal_pool=parts["pool"])
    if parts["module"] != "TAM":  # no module, or their "TSN" module (which builds none)
        return f"tsn_resnet{parts['depth']}", variant, dict(state_dict)
    frames = int(parts["blending_frames"])
    variant.update(blending_frames=frames, blending_method=parts["blending"], depthwise=parts["allc"] is None)
    return f"tam_resnet{parts['depth']}", variant, ibm_tam_to_temporal_conv(state_dict, frames)


def ibm_tam_to_temporal_conv(state_dict: dict, blending_frames: int) -> dict:
    """IBM's TAM keeps one 1x1 conv per blended frame, `*.tam.{prev,curr,next}_se.fc1.weight` (3 frames) or
    `*.tam.blending_layers.{k}.fc1.weight`, term k weighing frame t + k - K // 2; ours is one temporal
    conv whose tap k is that term. Keys that do not fit stay as they are, for the strict load to name."""
    names = _IBM_TAM_TERMS if blending_frames == 3 else [f"blending_layers.{k}" for k in range(blending_frames)]
    converted = dict(state_dict)
    for block in sorted({key.split(".tam.")[0] for key in state_dict if ".tam." in key}):
        terms = [f"{block}.tam.{name}.fc1.weight" for name in names]
        if all(term in converted for term in terms):
            # (C, C_in, 1, 1) per frame -> (C, C_in, K, 1, 1)
            converted[f"{block}.temporal.conv.weight"] = torch.stack([converted.pop(t) for t in terms], 2)
    return converted
