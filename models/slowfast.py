"""SlowFast-R50 (Feichtenhofer et al., ICCV 2019) as in PySlowFast, built from models/resnet3d.py.

The forward takes ONE clip, the Fast pathway's frames (NCTHW); the Slow pathway sees every
alpha-th of them. 4x16: Slow 4 frames at stride 16, Fast 32 at stride 2 (alpha 8, fusion kernel 5);
8x8: Slow 8 at stride 8, Fast 32 at stride 2 (alpha 4, fusion kernel 7). beta = 1/8 (Fast
widths), time-strided 1D convolutions carry Fast features into Slow after the stem and after
res2-res4 (channel ratio 2). Slow: SlowOnly's blocks (temporal kernels in res4-res5 only, 1x7x7
stem); Fast: temporal kernels in every stage and a 5x7x7 stem. No temporal striding anywhere.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.video.resnet import Conv3DNoTemporal

from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract, register_model
from .resnet3d import SLOWONLY_BLOCKS, TINY_CROP, TINY_WIDTHS, Stem3d, TemporalBottleneck, init_weights_, make_res_stage
from .sts import convert_to_sts
from .weights import load_state_dict_checked


class LateralFusion(nn.Module):
    """Fast -> Slow lateral connection: a time-strided tx1x1 conv, concatenated to Slow."""

    def __init__(self, fast_channels: int, alpha: int, kernel: int, channel_ratio: int = 2):
        super().__init__()
        self.conv = nn.Conv3d(fast_channels, fast_channels * channel_ratio, (kernel, 1, 1),
                              (alpha, 1, 1), (kernel // 2, 0, 0), bias=False)
        self.bn = nn.BatchNorm3d(fast_channels * channel_ratio)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([slow, self.relu(self.bn(self.conv(fast)))], dim=1)


class SlowFast(nn.Module):
    head_names = ("fc.",)

    def __init__(self, layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), alpha: int = 8,
                 beta_inv: int = 8, fusion_kernel: int = 5, fusion_ratio: int = 2,
                 fast_stem_kernel: int = 5, num_classes: int = 400, drop_rate: float = 0.5):
        super().__init__()
        self.alpha = alpha
        fast_widths = [w // beta_inv for w in widths]
        self.slow_stem = Stem3d(widths[0], 1, pool=True)
        self.fast_stem = Stem3d(fast_widths[0], fast_stem_kernel, pool=True)
        self.fusions, self.slow_layers, self.fast_layers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        slow_in, fast_in = widths[0], fast_widths[0]
        for i, num_blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            self.fusions.append(LateralFusion(fast_in, alpha, fusion_kernel, fusion_ratio))
            slow_in += fast_in * fusion_ratio
            self.slow_layers.append(make_res_stage(SLOWONLY_BLOCKS[i], Conv3DNoTemporal, slow_in, widths[i],
                                                   num_blocks, stride))
            self.fast_layers.append(make_res_stage(TemporalBottleneck, Conv3DNoTemporal, fast_in,
                                                   fast_widths[i], num_blocks, stride))
            slow_in, fast_in = widths[i] * 4, fast_widths[i] * 4
        self.num_features = slow_in + fast_in
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)
        init_weights_(self)

    def res_stages(self) -> tuple[nn.Module, ...]:
        return (*self.slow_layers, *self.fast_layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        slow, fast = self.slow_stem(x[:, :, :: self.alpha]), self.fast_stem(x)
        for fuse, slow_stage, fast_stage in zip(self.fusions, self.slow_layers, self.fast_layers):
            slow = slow_stage(fuse(slow, fast))
            fast = fast_stage(fast)
        return torch.cat([self.avgpool(slow).flatten(1), self.avgpool(fast).flatten(1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))

    def load_pretrained(self, state_dict: dict) -> None:
        """Only SlowFast (3D) weights of this layout: the Fast pathway and the lateral
        connections have no 2D counterpart, so inflating a 2D ResNet would be a partial load."""
        conv1 = state_dict.get("conv1.weight")
        if conv1 is not None and conv1.ndim == 4:
            raise ValueError("SlowFast cannot be initialised from a 2D ResNet: its Fast pathway and lateral "
                             "connections have no 2D counterpart; use slowonly_50 for 2D->3D inflation")
        load_state_dict_checked(self, state_dict, source="SlowFast weights")


SLOWFAST_CONTRACT = InputContract("NCTHW", 32, 224, IMAGENET_MEAN, IMAGENET_STD, "dense", frame_stride=2)


def create_slowfast(contract: InputContract, num_classes: int = 400, num_frames: int | None = None,
                    sts: bool = False, **kwargs) -> SlowFast:
    model = SlowFast(num_classes=num_classes, **kwargs)
    num_frames = num_frames or contract.num_frames
    if num_frames % model.alpha:
        raise ValueError(f"SlowFast needs num_frames divisible by alpha={model.alpha}, got {num_frames}")
    if sts:
        convert_to_sts(*model.res_stages())
    model.input_contract = contract.replace(num_frames=num_frames)
    return model


@register_model
def slowfast_50_4x16(num_classes=400, num_frames=32, **kwargs):
    kwargs = dict(alpha=8, fusion_kernel=5) | kwargs
    return create_slowfast(SLOWFAST_CONTRACT, num_classes, num_frames, **kwargs)


@register_model
def slowfast_50_8x8(num_classes=400, num_frames=32, **kwargs):
    kwargs = dict(alpha=4, fusion_kernel=7) | kwargs
    return create_slowfast(SLOWFAST_CONTRACT, num_classes, num_frames, **kwargs)


@register_model
def slowfast_tiny(num_classes=400, num_frames=8, **kwargs):
    kwargs = dict(layers=(1, 1, 1, 1), widths=TINY_WIDTHS, alpha=2, beta_inv=2, fusion_kernel=5) | kwargs
    return create_slowfast(SLOWFAST_CONTRACT.replace(crop_size=TINY_CROP), num_classes, num_frames, **kwargs)
