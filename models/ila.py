"""ILA (Tu et al., "Implicit Temporal Modeling with Learnable Alignment for Video Recognition", ICCV 2023).

Before each block of a frozen CLIP ViT, every pair of neighbouring frames goes through a small
conv net that (a) gives "interactive" features for both frames and (b) predicts one point per
frame. A soft square mask around each point selects the region to align; the masked tokens of
both frames of a pair are averaged into the frames they share and, like the interactive
features, enter the residual stream through zero-initialised linear layers. A cosine loss pulls
the two pooled aligned regions of each pair together (the "mutual information" the paper
maximises): `forward_with_aux` returns it next to the logits; plain `forward` gives logits only.
The class tokens are projected by CLIP's frozen `proj`, mixed over time by a one-layer
transformer (X-CLIP's "MIT") and classified.

Trainable, as in the official repo (Francis-Rings/ILA, `models/xclip.py` freezes and
`utils/optimizer.py` optimises): the alignment modules of every block, the MIT and the head.
Frozen: the whole CLIP image tower, including its final norm and projection.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, QuickGELU, trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from .registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from .vit_video import CLIP_VIT_BASE, CLIP_VIT_TINY, VideoViT, video_contract, zero_init_

# the repo's training jitter of the predicted points: the point itself and its 8 neighbours
_JITTER = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))


def alignment_mask(points: torch.Tensor, size: int) -> torch.Tensor:
    """Soft square masks (..., size, size) around points (..., 2) given as (x, y) in [-1, 1].

    Weight 1 within 0.25 of the point along an axis, then falling linearly to 0 at 0.25 + 1/1.5.
    """
    grid = torch.linspace(-1, 1, size, device=points.device, dtype=points.dtype)
    dist = (grid - points.unsqueeze(-1)).abs()  # (..., 2, size)
    weight = (1 - 1.5 * (dist - 0.25).clamp(min=0)).clamp(min=0)
    return weight[..., 1, :, None] * weight[..., 0, None, :]


class LearnableAlignment(nn.Module):
    """ILA's alignment of neighbouring frames (the repo's `ILA` module)."""

    def __init__(self, dim: int, grid_size: int, hidden: int = 256, jitter: float = 0.2):
        super().__init__()
        self.grid_size = grid_size
        half = hidden // 2
        # the repo's Kinetics variant: depthwise-separable first layer (its SSv2 one uses a full 3x3)
        self.interact = nn.Sequential(
            Conv2dNormActivation(2 * dim, 2 * dim, 3, groups=2 * dim),
            Conv2dNormActivation(2 * dim, hidden, 1),
            Conv2dNormActivation(hidden, hidden, 3),
        )
        self.predict = nn.Sequential(
            Conv2dNormActivation(hidden, half, 3), nn.MaxPool2d(2),
            Conv2dNormActivation(half, half, 3), nn.MaxPool2d(2),
            nn.AdaptiveMaxPool2d(1),
        )
        # one point per frame of the pair (the two groups see the two halves of the features);
        # zeroed last layer: the points start at the frame centres, as in the repo
        self.point_head = nn.Sequential(nn.Conv1d(half, half // 2, 1, groups=2), nn.ReLU(),
                                        zero_init_(nn.Conv1d(half // 2, 4, 1, groups=2)), nn.Tanh())
        self.temporal_conv = nn.Conv3d(half, half, (3, 1, 1), padding=(1, 0, 0))
        self.fc = nn.Linear(half, dim)
        self.base_jitter = jitter
        self.register_buffer("jitter", torch.tensor(_JITTER, dtype=torch.float32) * jitter, persistent=False)

    def decay_jitter(self) -> None:
        """The repo halves the training jitter every epoch from epoch 30 on."""
        self.jitter.mul_(0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, 1 + HW, D) -> aligned frames and interactive features (B, T, 1 + HW, D), loss."""
        b, t, n, d = x.shape
        s = self.grid_size
        patches = x[:, :, 1:].transpose(2, 3).reshape(b, t, d, s, s)
        pairs = torch.cat([patches[:, :-1], patches[:, 1:]], dim=2).flatten(0, 1)  # (B*(T-1), 2D, S, S)
        feats = self.interact(pairs)
        points = self.point_head(self.predict(feats).flatten(1).view(b, t - 1, -1).transpose(1, 2))
        points = 0.75 * points.transpose(1, 2).reshape(b, t - 1, 2, 2)  # (x, y) for each frame of a pair
        jitter = self.jitter if self.training else self.jitter[:1]
        masks = alignment_mask(points.unsqueeze(3) + jitter, s).mean(3)  # (B, T-1, 2, S, S)
        first = patches[:, :-1] * masks[:, :, :1]
        second = patches[:, 1:] * masks[:, :, 1:]
        pooled = first.sum((-2, -1)), second.sum((-2, -1))
        loss = 1 - F.cosine_similarity(pooled[0], pooled[1], dim=-1).mean()
        aligned = _merge_pairs(first, second).flatten(3).transpose(2, 3)
        aligned = torch.cat([x[:, :, :1], aligned], dim=2)
        half = feats.shape[1] // 2
        feats = feats.view(b, t - 1, 2, half, s, s)
        inter = _merge_pairs(feats[:, :, 0], feats[:, :, 1]).transpose(1, 2)  # (B, C, T, S, S)
        inter = self.fc(self.temporal_conv(inter).flatten(3).permute(0, 2, 3, 1))
        inter = torch.cat([x[:, :, :1], inter], dim=2)
        return aligned, inter, loss


def _merge_pairs(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-pair tensors (B, T-1, ...) of frames (i, i+1) -> per-frame (B, T, ...), averaging shared frames."""
    middle = (first[:, 1:] + second[:, :-1]) / 2
    return torch.cat([first[:, :1], middle, second[:, -1:]], dim=1)


class ILABlock(Block):
    """timm ViT block preceded by ILA's alignment, joined through zero-initialised linear layers."""

    def __init__(self, dim: int, *, num_frames: int, grid_size: int, align_hidden: int = 256, **block_kwargs):
        super().__init__(dim, **block_kwargs)
        self.num_frames = num_frames
        self.align_fc = nn.Linear(dim, dim)
        self.align_norm = LayerNorm(dim)
        self.align = LearnableAlignment(dim, grid_size, align_hidden)
        self.skip_aligned = nn.Linear(dim, dim)
        self.skip_interact = nn.Linear(dim, dim)

    def init_skips(self) -> None:
        zero_init_(self.skip_aligned)
        zero_init_(self.skip_interact)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bt, n, d = x.shape
        y = self.align_norm(self.align_fc(x)).view(bt // self.num_frames, self.num_frames, n, d)
        aligned, inter, loss = self.align(y)
        x = x + self.drop_path1(self.skip_aligned(aligned.flatten(0, 1)))
        x = x + self.drop_path1(self.skip_interact(inter.flatten(0, 1)))
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x))), loss


class FrameIntegration(nn.Module):
    """X-CLIP's multi-frame integration transformer over the projected class tokens."""

    def __init__(self, dim: int, num_frames: int, depth: int = 1):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_frames, dim))
        trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[
            Block(dim, max(1, dim // 64), qkv_bias=True, act_layer=QuickGELU, norm_layer=nn.LayerNorm)
            for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.blocks(x + self.pos_embed)
        return F.normalize(x.mean(1), dim=-1)


class ILA(VideoViT):
    trainable_keys = r"mit\.|head\.|blocks\.\d+\.(align|skip_)"
    video_keys = trainable_keys

    def __init__(self, num_classes: int = 400, num_frames: int = 8, img_size: int = 224, patch_size: int = 16,
                 proj_dim: int = 512, mit_depth: int = 1, align_hidden: int = 256, drop_rate: float = 0.5,
                 freeze_backbone: bool = True, **vit_kwargs):
        block_fn = partial(ILABlock, num_frames=num_frames, grid_size=img_size // patch_size,
                           align_hidden=align_hidden)
        super().__init__(num_frames, freeze_backbone, block_fn=block_fn, img_size=img_size, patch_size=patch_size,
                         num_classes=0, **vit_kwargs)
        self.proj = nn.Linear(self.embed_dim, proj_dim, bias=False)  # CLIP's visual.proj
        self.mit = FrameIntegration(proj_dim, num_frames, mit_depth)
        self.head = nn.Sequential(nn.LayerNorm(proj_dim), nn.Dropout(drop_rate), nn.Linear(proj_dim, num_classes))
        self.num_classes = num_classes
        self.mit.apply(init_weights_vit_timm)  # as the repo: truncated normal (0.02) linears
        self.head.apply(init_weights_vit_timm)
        for block in self.blocks:
            block.init_skips()
        self.freeze()

    def image_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm names CLIP's projection `head.weight`; here it is the frozen `proj`."""
        sd = dict(sd)
        if "head.weight" in sd:
            sd["proj.weight"] = sd.pop("head.weight")
        return {k: v for k, v in sd.items() if not k.startswith("head.")}

    def set_epoch(self, epoch: int) -> None:
        """Training hook (called by train before each 0-based epoch): the repo halves the alignment jitter
        once per epoch from its epoch 30 on; recomputed from the epoch so a resumed run gets the same."""
        for block in self.blocks:
            align = block.align
            align.jitter.copy_(torch.tensor(_JITTER, dtype=torch.float32, device=align.jitter.device)
                               * align.base_jitter * 0.5 ** max(0, epoch - 29))

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the summed alignment (cosine) loss of all blocks, which the repo adds to the loss."""
        b = x.shape[0]
        x = self.norm_pre(self.embed_frames(x))
        aux = x.new_zeros(())
        for block in self.blocks:
            x, loss = block(x)
            aux = aux + loss
        x = self.proj(self.norm(x[:, 0])).view(b, self.num_frames, -1)
        return self.head(self.mit(x)), aux

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """`return_aux=True` (train passes it through DDP) also returns the alignment loss."""
        logits, aux = self.forward_with_aux(x)
        return (logits, aux) if return_aux else logits


def _create_ila(num_classes: int, num_frames: int, crop_size: int, vit_args: dict, **kwargs) -> ILA:
    model = ILA(num_frames=num_frames, img_size=crop_size, num_classes=num_classes, **{**vit_args, **kwargs})
    # the repo normalises with ImageNet statistics (X-CLIP's pipeline) and samples one frame per segment
    model.input_contract = video_contract(num_frames, crop_size, IMAGENET_MEAN, IMAGENET_STD, "tsn")
    return model


@register_model
def ila_vit_base_patch16(num_classes: int = 400, num_frames: int = 8, **kwargs) -> ILA:
    return _create_ila(num_classes, num_frames, 224, dict(CLIP_VIT_BASE, patch_size=16), **kwargs)


@register_model
def ila_vit_base_patch32(num_classes: int = 400, num_frames: int = 8, **kwargs) -> ILA:
    return _create_ila(num_classes, num_frames, 224, dict(CLIP_VIT_BASE, patch_size=32), **kwargs)


@register_model
def ila_tiny(num_classes: int = 400, num_frames: int = 4, **kwargs) -> ILA:
    tiny = dict(CLIP_VIT_TINY, patch_size=8, proj_dim=16, align_hidden=16)
    return _create_ila(num_classes, num_frames, 32, tiny, **kwargs)
