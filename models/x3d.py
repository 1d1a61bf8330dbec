"""X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020).

Follows PySlowFast / pytorchvideo `create_x3d`: (2+1)D stem, four stages of inverted bottlenecks
whose 3x3x3 convolution is channel-wise, squeeze-excitation on every other block, Swish inside
the bottleneck, and a head that projects, pools, projects again to 2048 and classifies.
No temporal downsampling anywhere: the clip keeps all its frames until the global pool.

`sts=True` swaps the stages' channel-wise 3x3x3 convolutions for the STS convolution of
"In Defense of Image Pre-Training for Spatiotemporal Recognition" (models/sts.py, same weights);
the stem stays plain, as in the paper.
"""
from __future__ import annotations

import math

import torch
from timm.layers import make_divisible
from torch import nn
from torchvision.ops.misc import Conv3dNormActivation

from .registry import InputContract, register_model

X3D_MEAN = (0.45, 0.45, 0.45)  # PySlowFast's DATA.MEAN / DATA.STD
X3D_STD = (0.225, 0.225, 0.225)


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
    """1x1x1 expand -> channel-wise 3x3x3 (+SE, Swish) -> 1x1x1 project, plus shortcut."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, spatial_stride: int, se_ratio: float):
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
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act_b(self.se(self.bn_b(self.conv_b(self.conv_a(x)))))
        return self.act(self.shortcut(x) + self.conv_c(y))


class X3DHead(nn.Module):
    """Project to the bottleneck width, pool over the clip, project to `head_width`, classify."""

    def __init__(self, dim_in: int, dim_inner: int, head_width: int, num_classes: int, dropout: float):
        super().__init__()
        self.conv_5 = Conv3dNormActivation(dim_in, dim_inner, kernel_size=1, bias=False)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.lin_5 = nn.Conv3d(dim_inner, head_width, 1, bias=False)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(head_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.lin_5(self.pool(self.conv_5(x))))
        return self.fc(self.drop(x.flatten(1)))


class X3D(nn.Module):
    """X3D built from width / depth / bottleneck expansion factors (pytorchvideo's parameters)."""

    def __init__(
        self,
        num_classes: int = 400,
        width_factor: float = 2.0,
        depth_factor: float = 2.2,
        bottleneck_factor: float = 2.25,
        stem_width: int = 12,
        stage_depths: tuple = (1, 2, 5, 3),
        head_width: int = 2048,
        se_ratio: float = 0.0625,
        dropout: float = 0.5,
    ):
        super().__init__()
        dim = make_divisible(stem_width * width_factor)
        self.stem = nn.Sequential(
            nn.Conv3d(3, dim, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(dim, dim, (5, 1, 1), padding=(2, 0, 0), groups=dim, bias=False),
            nn.BatchNorm3d(dim),
            nn.ReLU(inplace=True),
        )
        stages, base_width = [], stem_width
        for i, depth in enumerate(stage_depths):
            if i > 0:
                base_width = make_divisible(base_width * 2)  # unscaled widths double per stage
            dim_out = make_divisible(base_width * width_factor)
            dim_inner = int(bottleneck_factor * dim_out)
            blocks = [
                X3DBlock(dim if j == 0 else dim_out, dim_inner, dim_out, 2 if j == 0 else 1,
                         se_ratio if j % 2 == 0 else 0.0)
                for j in range(math.ceil(depth * depth_factor))
            ]
            stages.append(nn.Sequential(*blocks))
            dim = dim_out
        self.stages = nn.Sequential(*stages)
        self.head = X3DHead(dim, dim_inner, head_width, num_classes, dropout)
        self.num_classes = num_classes
        self.head_names = ("head.fc.",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _create_x3d(num_classes: int, num_frames: int, crop_size: int, frame_stride: int, sts: bool = False,
                **kwargs) -> X3D:
    model = X3D(num_classes=num_classes, **kwargs)
    if sts:
        from .sts import convert_to_sts

        convert_to_sts(model.stages)  # stages only: the stem stays plain, as in the paper
    model.input_contract = InputContract(
        layout="NCTHW", num_frames=num_frames, crop_size=crop_size,
        mean=X3D_MEAN, std=X3D_STD, sampling="dense", frame_stride=frame_stride,
    )
    return model


@register_model
def x3d_s(num_classes: int = 400, num_frames: int = 13, **kwargs) -> X3D:
    return _create_x3d(num_classes, num_frames, crop_size=160, frame_stride=6, **kwargs)


@register_model
def x3d_tiny(num_classes: int = 400, num_frames: int = 8, **kwargs) -> X3D:
    tiny = dict(width_factor=1.0, depth_factor=1.0, stem_width=8, stage_depths=(1, 1, 1, 1), head_width=64)
    return _create_x3d(num_classes, num_frames, crop_size=32, frame_stride=2, **{**tiny, **kwargs})
