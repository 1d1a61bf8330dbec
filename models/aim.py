"""AIM (Yang et al., "AIM: Adapting Image Models for Efficient Video Action Recognition", ICLR 2023).

A frozen CLIP ViT gets three bottleneck adapters per block (as in the official repo,
taoyang1122/adapt-image-models, `vit_clip.py`):
  * temporal: the block's own (frozen) attention applied across frames at each token position,
    followed by the temporal adapter, added to the residual stream;
  * spatial: the usual attention over the frame's tokens, followed by an adapter with its own skip;
  * joint: an adapter parallel to the MLP, scaled by 0.5.
A learned temporal embedding is added to every token. The class tokens of all frames pass the
final norm and are averaged over time before the classifier (mmaction's I3DHead, dropout 0.5).
Only adapters, temporal embedding, final norm and head train. Every adapter's last layer starts
at zero, so the untrained model computes exactly the image model's features.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from .registry import CLIP_MEAN, CLIP_STD, register_model
from .vit_video import CLIP_VIT_BASE, CLIP_VIT_TINY, VideoViT, video_contract, zero_init_


def _adapter(dim: int, ratio: float) -> Mlp:
    return Mlp(dim, int(dim * ratio), act_layer=nn.GELU)


class AIMBlock(Block):
    """timm ViT block with AIM's temporal, spatial and joint (MLP-parallel) adapters."""

    def __init__(self, dim: int, *, num_frames: int, adapter_ratio: float = 0.25, joint_scale: float = 0.5,
                 **block_kwargs):
        super().__init__(dim, **block_kwargs)
        self.num_frames = num_frames
        self.joint_scale = joint_scale
        self.t_adapter = _adapter(dim, adapter_ratio)
        self.s_adapter = _adapter(dim, adapter_ratio)
        self.mlp_adapter = _adapter(dim, adapter_ratio)

    def init_adapters(self) -> None:
        for adapter in (self.t_adapter, self.s_adapter, self.mlp_adapter):
            zero_init_(adapter.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt, n, d = x.shape
        t = self.num_frames
        # temporal attention: one sequence of t frames per (clip, token position)
        xt = x.view(bt // t, t, n, d).transpose(1, 2).reshape(-1, t, d)
        xt = self.t_adapter(self.attn(self.norm1(xt)))
        x = x + self.drop_path1(xt.view(bt // t, n, t, d).transpose(1, 2).reshape(bt, n, d))
        xs = self.attn(self.norm1(x))
        x = x + xs + self.s_adapter(xs)
        xn = self.norm2(x)
        return x + self.mlp(xn) + self.drop_path2(self.joint_scale * self.mlp_adapter(xn))


class AIM(VideoViT):
    trainable_keys = r"temporal_embed|norm\.|head\.|blocks\.\d+\.\w+_adapter\."
    video_keys = r"temporal_embed|blocks\.\d+\.\w+_adapter\."

    def __init__(self, num_frames: int = 8, adapter_ratio: float = 0.25, joint_scale: float = 0.5,
                 drop_rate: float = 0.5, freeze_backbone: bool = True, **vit_kwargs):
        block_fn = partial(AIMBlock, num_frames=num_frames, adapter_ratio=adapter_ratio, joint_scale=joint_scale)
        super().__init__(num_frames, freeze_backbone, block_fn=block_fn, drop_rate=drop_rate, **vit_kwargs)
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, self.embed_dim))
        for block in self.blocks:
            block.init_adapters()
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = self.embed_frames(x)
        x = (x.view(b, self.num_frames, *x.shape[1:]) + self.temporal_embed.unsqueeze(2)).flatten(0, 1)
        x = self.blocks(self.norm_pre(x))
        return self.norm(x[:, 0]).view(b, self.num_frames, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(self.forward_features(x).mean(1)))


def _create_aim(num_classes: int, num_frames: int, crop_size: int, vit_args: dict, frame_stride: int,
                **kwargs) -> AIM:
    model = AIM(num_frames=num_frames, img_size=crop_size, num_classes=num_classes, **{**vit_args, **kwargs})
    # the official Kinetics config samples 8 frames one every 16 (mmaction SampleFrames, interval 16)
    model.input_contract = video_contract(num_frames, crop_size, CLIP_MEAN, CLIP_STD, "dense", frame_stride)
    return model


@register_model
def aim_vit_base_patch16(num_classes: int = 400, num_frames: int = 8, **kwargs) -> AIM:
    return _create_aim(num_classes, num_frames, 224, dict(CLIP_VIT_BASE, patch_size=16), 16, **kwargs)


@register_model
def aim_tiny(num_classes: int = 400, num_frames: int = 4, **kwargs) -> AIM:
    return _create_aim(num_classes, num_frames, 32, dict(CLIP_VIT_TINY, patch_size=8), 2, **kwargs)
