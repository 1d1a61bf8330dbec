"""SIFAR: Super Image for Action Recognition (Fan, Chen & Panda, ICLR 2022; IBM's sifar-pytorch).

The T frames of a clip are tiled row by row into one `rows x ceil(T / rows)` super image (missing tiles
are zero) and classified by an image Swin Transformer; attention inside and across tiles does the
temporal modelling. As in the original, the window size may differ per stage (the last stage usually
spans its whole feature map), and `hpe_to_token` adds a learned embedding per frame to the tokens of
that frame's tile.

Names follow the original repository: `window7_224` without a grid suffix is its 8-frame 3x3 setting
(README table, `--super_img_rows 3`), the `_4x4` variants take 16 frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import nn

from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract, register_model
from .weights import load_state_dict_checked


class SuperImageSwin(SwinTransformer):
    """timm's SwinTransformer on the super image of a (N, T, C, H, W) clip."""

    def __init__(self, num_frames: int = 8, super_img_rows: int = 3, img_size: int = 224, patch_size: int = 4,
                 hpe_to_token: bool = False, **swin_kwargs):
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        cols = math.ceil(num_frames / super_img_rows)
        super().__init__(img_size=(super_img_rows * img_size, cols * img_size), patch_size=patch_size,
                         **swin_kwargs)
        self.num_frames, self.grid, self.tile_size = num_frames, (super_img_rows, cols), img_size
        self.tile_tokens = img_size // patch_size
        self.frame_pos_embed = None
        if hpe_to_token:
            self.frame_pos_embed = nn.Parameter(torch.zeros(1, super_img_rows * cols, self.embed_dim))
            trunc_normal_(self.frame_pos_embed, std=0.02)
        self.input_contract = InputContract("NTCHW", num_frames, img_size, IMAGENET_MEAN, IMAGENET_STD, "tsn")
        self.head_names = ("head.fc.",)

    def super_image(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, C, rows * H, cols * W); frame t goes to tile (t // cols, t % cols)."""
        n, t, c, h, w = x.shape
        if t != self.num_frames or h != self.tile_size or w != self.tile_size:
            raise ValueError(f"expected clips of {self.num_frames}x{c}x{self.tile_size}x{self.tile_size}, "
                             f"got {t}x{c}x{h}x{w}")
        rows, cols = self.grid
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, rows * cols - t))  # empty tiles at the end
        x = x.reshape(n, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, c, rows * h, cols * w)

    def tile_position_embedding(self) -> torch.Tensor:
        """The per-frame embedding spread over that frame's tile: (rows * tile_tokens, cols * tile_tokens, D)."""
        rows, cols = self.grid
        embed = self.frame_pos_embed.reshape(rows, cols, -1)
        return embed.repeat_interleave(self.tile_tokens, 0).repeat_interleave(self.tile_tokens, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.super_image(x))  # NHWC tokens
        if self.frame_pos_embed is not None:
            x = x + self.tile_position_embedding()
        x = self.layers(x)
        return self.norm(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return super().no_weight_decay() | {"frame_pos_embed"}

    def load_pretrained(self, state_dict: dict) -> None:
        """Load image Swin weights (timm or Microsoft keys): relative position tables are resized to this
        model's windows and the non-persistent buffers dropped by timm's own filter; the frame embedding is new.
        """
        state_dict = checkpoint_filter_fn(state_dict, self)
        if self.frame_pos_embed is not None:
            state_dict.setdefault("frame_pos_embed", self.frame_pos_embed.detach())
        load_state_dict_checked(self, state_dict, source="Swin weights")


_SWIN_B = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_SWIN_TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


def _create_sifar(arch: dict, img_size: int, rows: int, window_size, num_classes: int, num_frames: int, **kwargs):
    rows = kwargs.pop("super_img_rows", rows)
    img_size, window_size = kwargs.pop("img_size", img_size), kwargs.pop("window_size", window_size)
    if num_frames > rows * rows:
        # a wider-than-high super image is possible but not what the variant's windows were chosen for
        raise ValueError(f"{num_frames} frames do not fit a {rows}x{rows} super image (super_img_rows={rows})")
    return SuperImageSwin(num_frames=num_frames, super_img_rows=rows, img_size=img_size, window_size=window_size,
                          num_classes=num_classes, **dict(arch, **kwargs))


@register_model
def sifar_base_patch4_window7_224(num_classes=400, num_frames=8, **kwargs):
    """SIFAR-B-7: 8 frames, 3x3 super image of 224 tiles, window 7."""
    return _create_sifar(_SWIN_B, 224, 3, 7, num_classes, num_frames, **kwargs)


@register_model
def sifar_base_patch4_window12_192_3x3(num_classes=400, num_frames=8, **kwargs):
    """SIFAR-B-12: 8 frames, 3x3 super image of 192 tiles, windows 12 (last stage 18)."""
    return _create_sifar(_SWIN_B, 192, 3, (12, 12, 12, 18), num_classes, num_frames, **kwargs)


@register_model
def sifar_base_patch4_window14_224_3x3(num_classes=400, num_frames=8, **kwargs):
    """SIFAR-B-14: 8 frames, 3x3 super image of 224 tiles, windows 14 (last stage 21)."""
    return _create_sifar(_SWIN_B, 224, 3, (14, 14, 14, 21), num_classes, num_frames, **kwargs)


@register_model
def sifar_base_patch4_window12_192_4x4(num_classes=400, num_frames=16, **kwargs):
    """SIFAR-B-12 (16 frames): 4x4 super image of 192 tiles, windows 12 (last stage 24)."""
    return _create_sifar(_SWIN_B, 192, 4, (12, 12, 12, 24), num_classes, num_frames, **kwargs)


@register_model
def sifar_base_patch4_window14_224_4x4(num_classes=400, num_frames=16, **kwargs):
    """SIFAR-B-14 (16 frames): 4x4 super image of 224 tiles, windows 14 (last stage 28)."""
    return _create_sifar(_SWIN_B, 224, 4, (14, 14, 14, 28), num_classes, num_frames, **kwargs)


@register_model
def sifar_tiny(num_classes=400, num_frames=4, **kwargs):
    """A 2x2 super image of 32 px tiles, window 4, with the frame embedding on so the tiny path covers it."""
    kwargs.setdefault("hpe_to_token", True)
    return _create_sifar(_SWIN_TINY, 32, 2, 4, num_classes, num_frames, **kwargs)
