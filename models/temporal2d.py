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
`temporal_layer` to the blocks.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract, register_model
from .weights import load_state_dict_checked


class TemporalShift(nn.Module):
    """Shift `1/fold_div` of the channels one frame back and as many one frame forward, zero-filled."""

    def __init__(self, channels: int, num_frames: int, fold_div: int = 8):
        super().__init__()
        self.num_frames = num_frames
        self.fold = channels // fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N*T, C, H, W)
        clips = x.unflatten(0, (-1, self.num_frames))
        f = self.fold
        out = torch.zeros_like(clips)  # keeps the memory format of x (channels_last stays channels_last)
        out[:, :-1, :f] = clips[:, 1:, :f]  # frame t sees frame t+1
        out[:, 1:, f:2 * f] = clips[:, :-1, f:2 * f]  # frame t sees frame t-1
        out[:, :, 2 * f:] = clips[:, :, 2 * f:]
        return out.flatten(0, 1)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, fold={self.fold}"


class TemporalAggregation(nn.Module):
    """TAM: out[t] = relu(w_prev * x[t-1] + w_cur * x[t] + w_next * x[t+1]), one weight triple per channel.

    IBM's code uses three depthwise 1x1 convolutions and shifts their outputs; a depthwise temporal
    convolution of kernel 3 with zero padding is the same function with the same parameters and MACs.
    """

    def __init__(self, channels: int, num_frames: int, kernel_size: int = 3):
        super().__init__()
        self.num_frames = num_frames
        self.conv = nn.Conv3d(channels, channels, (kernel_size, 1, 1), padding=(kernel_size // 2, 0, 0),
                              groups=channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # identity (centre tap 1): a TAM network built on ImageNet weights starts out exactly as TSN, and the
        # neighbour taps still receive gradients, so temporal order is learnt from there
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, self.conv.kernel_size[0] // 2] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N*T, C, H, W)
        clips = x.unflatten(0, (-1, self.num_frames)).transpose(1, 2)  # (N, C, T, H, W), a view
        out = F.relu(self.conv(clips))
        return out.transpose(1, 2).flatten(0, 1)


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


class TemporalSegmentResNet(ResNet):
    """A 2D ResNet applied to each frame of a (N, T, C, H, W) clip; logits averaged over the T frames."""

    def __init__(self, layers, num_classes: int = 400, num_frames: int = 8, crop_size: int = 224,
                 temporal_layer=None, **resnet_kwargs):
        block, block_args = Bottleneck, None
        if temporal_layer is not None:
            block, block_args = TemporalBottleneck, dict(temporal_layer=partial(temporal_layer, num_frames=num_frames))
        super().__init__(block=block, layers=layers, num_classes=num_classes, block_args=block_args,
                         **resnet_kwargs)
        self.num_frames = num_frames
        self.temporal = temporal_layer is not None
        self.input_contract = InputContract("NTCHW", num_frames, crop_size, IMAGENET_MEAN, IMAGENET_STD, "tsn")
        self.head_names = ("fc.",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        if self.temporal and t != self.num_frames:
            # the temporal modules regroup frames by num_frames: another T would mix frames of different clips
            raise ValueError(f"{type(self).__name__} was built for {self.num_frames} frames, got {t}")
        logits = super().forward(x.flatten(0, 1))
        return logits.unflatten(0, (n, t)).mean(1)

    def load_pretrained(self, state_dict: dict) -> None:
        """Load 2D ResNet weights (timm or torchvision keys); temporal modules a 2D file lacks keep their init."""
        own = self.state_dict()
        state_dict = dict(state_dict)
        for key in own:
            if ".temporal." in key:
                state_dict.setdefault(key, own[key])
        load_state_dict_checked(self, state_dict, source="2D ResNet weights")


_RESNET50 = dict(layers=(3, 4, 6, 3), crop_size=224, drop_rate=0.5)
# widths 8..64 (x4 in the bottleneck output), a deep 3x3 stem of width 8 instead of the 64-wide 7x7
_TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_type="deep", stem_width=8, crop_size=64,
             drop_rate=0.1)


def _temporal_resnet(temporal_layer, arch: dict, num_classes: int, num_frames: int, **kwargs):
    return TemporalSegmentResNet(num_classes=num_classes, num_frames=num_frames, temporal_layer=temporal_layer,
                                 **dict(arch, **kwargs))


@register_model
def tsn_resnet50(num_classes=400, num_frames=8, **kwargs):
    """TSN-ResNet50, average consensus."""
    return _temporal_resnet(None, _RESNET50, num_classes, num_frames, **kwargs)


@register_model
def tsm_resnet50(num_classes=400, num_frames=8, **kwargs):
    """TSM-ResNet50, residual shift of 1/8 + 1/8 channels."""
    return _temporal_resnet(TemporalShift, _RESNET50, num_classes, num_frames, **kwargs)


@register_model
def tam_resnet50(num_classes=400, num_frames=8, **kwargs):
    """bLVNet-TAM's temporal aggregation module on ResNet50 (IBM's TAM-b3-sum)."""
    return _temporal_resnet(TemporalAggregation, _RESNET50, num_classes, num_frames, **kwargs)


@register_model
def tsn_tiny(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(None, _TINY, num_classes, num_frames, **kwargs)


@register_model
def tsm_tiny(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(TemporalShift, _TINY, num_classes, num_frames, **kwargs)


@register_model
def tam_tiny(num_classes=400, num_frames=8, **kwargs):
    return _temporal_resnet(TemporalAggregation, _TINY, num_classes, num_frames, **kwargs)
