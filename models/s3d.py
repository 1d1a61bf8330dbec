"""S3D (Xie et al., "Rethinking Spatiotemporal Feature Learning", ECCV 2018).

torchvision's `S3D` is the reference; its constructor hard-codes the channel table, so the
network is rebuilt here from torchvision's own blocks (`TemporalSeparableConv`,
`SepInceptionBlock3D`) with a width multiplier. At width 1.0 module names and shapes equal
torchvision's, so its Kinetics-400 weights load unchanged (tests check it against the reference).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.video.s3d import S3D as TorchvisionS3D, SepInceptionBlock3D, TemporalSeparableConv
from torchvision.ops.misc import Conv3dNormActivation

from .registry import KINETICS_MEAN, KINETICS_STD, InputContract, register_model
from .tuning import checkpoint_seq

# torchvision's inception table: (b0_out, b1_mid, b1_out, b2_mid, b2_out, b3_out) per block,
# "pool" marks the max-pools between groups (kernel, stride, padding).
_INCEPTION_PLAN = (
    (64, 96, 128, 16, 32, 32),
    (128, 128, 192, 32, 96, 64),
    ("pool", (3, 3, 3), (2, 2, 2), (1, 1, 1)),
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
    ("pool", (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128),
)


_STEM_LAYERS = 5  # Conv_1a, pool, Conv_2b, Conv_2c, pool: what precedes the first inception group


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _s3d_features(width: float, norm_layer) -> tuple[nn.Sequential, int]:
    """The torchvision S3D trunk with every channel count multiplied by `width`."""
    stem, mid = _scaled(64, width), _scaled(192, width)
    layers: list[nn.Module] = [
        TemporalSeparableConv(3, stem, 7, 2, 3, norm_layer),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        Conv3dNormActivation(stem, stem, kernel_size=1, stride=1, norm_layer=norm_layer),
        TemporalSeparableConv(stem, mid, 3, 1, 1, norm_layer),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    ]
    channels = mid
    for entry in _INCEPTION_PLAN:
        if entry[0] == "pool":
            layers.append(nn.MaxPool3d(*entry[1:]))
            continue
        b0, b1m, b1, b2m, b2, b3 = (_scaled(c, width) for c in entry)
        layers.append(SepInceptionBlock3D(channels, b0, b1m, b1, b2m, b2, b3, norm_layer))
        channels = b0 + b1 + b2 + b3
    return nn.Sequential(*layers), channels


class S3D(TorchvisionS3D):
    """torchvision's S3D (same forward) with a width multiplier and size-agnostic pooling.

    torchvision pools with a fixed (2, 7, 7) window, which only yields one global average at
    16x224; adaptive pooling gives the same result there and also works for other clip sizes.
    """

    def __init__(self, num_classes: int = 400, dropout: float = 0.2, width: float = 1.0, norm_layer=None):
        nn.Module.__init__(self)  # torchvision's __init__ hard-codes the full-width table
        if width <= 0:
            raise ValueError(f"S3D width multiplier must be positive, got {width}")
        norm_layer = norm_layer or partial(nn.BatchNorm3d, eps=0.001, momentum=0.001)
        self.features, channels = _s3d_features(width, norm_layer)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Conv3d(channels, num_classes, kernel_size=1, stride=1, bias=True),
        )
        self.num_classes = num_classes
        self.num_features = channels
        self.head_names = ("classifier.",)
        self.grad_checkpointing = False

    def _stage_layers(self) -> list[list[int]]:
        """Indices in `features` of the stem, then of each inception group (Mixed_3, Mixed_4, Mixed_5, each
        opened by its max-pool)."""
        groups = [list(range(_STEM_LAYERS))]
        for i in range(_STEM_LAYERS, len(self.features)):
            if isinstance(self.features[i], nn.MaxPool3d) or len(groups) == 1:
                groups.append([])
            groups[-1].append(i)
        return groups

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's description of the stages (layer_decay; frozen_stages counts its stem and coarse groups): the
        stem, then each inception group (`coarse`) or block; the classifier matches nothing (timm: the head)."""
        layers = lambda indices: rf"^features\.(?:{'|'.join(map(str, indices))})\b"  # noqa: E731
        stem, *stages = self._stage_layers()
        blocks = [(layers(group), (i,)) for i, group in enumerate(stages)] if coarse else r"^features\.(\d+)"
        return dict(stem=layers(stem), blocks=blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_seq(self.features, x) if self.grad_checkpointing else self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """torchvision's head; `pre_logits`: the (N, num_features) pooled clip embedding its 1x1x1 conv takes."""
        x = self.classifier[0](self.avgpool(x))
        if pre_logits:
            return x.flatten(1)
        return self.classifier[1](x).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_s3d(num_classes: int, num_frames: int, crop_size: int, width: float, **kwargs) -> S3D:
    model = S3D(num_classes=num_classes, width=width, **kwargs)
    # torchvision's recipe takes consecutive frames of video resampled to 15 fps: every 2nd frame at 30 fps
    model.input_contract = InputContract(
        layout="NCTHW", num_frames=num_frames, crop_size=crop_size,
        mean=KINETICS_MEAN, std=KINETICS_STD, sampling="dense", frame_stride=2,
    )
    return model


@register_model
def s3d(num_classes: int = 400, num_frames: int = 16, **kwargs) -> S3D:
    return _create_s3d(num_classes, num_frames, crop_size=224, width=1.0, **kwargs)


@register_model
def s3d_tiny(num_classes: int = 400, num_frames: int = 8, **kwargs) -> S3D:
    return _create_s3d(num_classes, num_frames, crop_size=32, width=0.125, **kwargs)
