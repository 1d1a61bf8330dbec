"""SIFAR: Super Image for Action Recognition (Fan, Chen & Panda, ICLR 2022; IBM's sifar-pytorch).

The T frames of a clip are tiled row by row into one `rows x ceil(T / rows)` super image (missing tiles
are zero) and classified by an image Swin Transformer; attention inside and across tiles does the
temporal modelling. As in the original, the window size may differ per stage (the last stage usually
spans its whole feature map), and `hpe_to_token` adds a learned embedding per frame to the tokens of
that frame's tile.

Names follow the original repository: `window7_224` without a grid suffix is its 8-frame 3x3 setting
(README table, `--super_img_rows 3`), the `_4x4` variants take 16 frames. The authors' files
(`{'model', 'model_ema', 'args', ...}` from its main.py) load through `models.from_checkpoint`
(`sifar_pytorch` below), which reads the variant from the file's `args`.
"""
from __future__ import annotations

import argparse
import math
import re

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import nn

from .checkpoints import Checkpoint, CheckpointError, Recognized, register_origin
from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract, is_model, register_model
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

    def extra_repr(self) -> str:
        # what no parameter shows: the grid and tile size (the token grid), the per-stage windows actually
        # used (their shifts follow from them), and the frame embedding
        rows, cols = self.grid
        windows = tuple(stage.blocks[0].window_size[0] for stage in self.layers)
        return (f"num_frames={self.num_frames}, grid={rows}x{cols}, tile_size={self.tile_size}, "
                f"window_size={windows}, hpe_to_token={self.frame_pos_embed is not None}")

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
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's Swin grouping (layer-wise lr decay) with the frame embedding in the stem, next to the patch
        embedding it is added to; unmatched, it would take the head's rate."""
        matcher = super().group_matcher(coarse)
        return dict(matcher, stem=f"{matcher['stem']}|frame_pos_embed")

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


def _create_sifar(arch: dict, size: int, rows: int, window, num_classes: int, num_frames: int, **kwargs):
    """`size`, `rows`, `window`: the variant's tile size, super-image rows and windows, which the
    arguments `img_size`, `super_img_rows`, `window_size` (one per stage, or one for all) override."""
    rows = kwargs.pop("super_img_rows", rows)
    size, window = kwargs.pop("img_size", size), kwargs.pop("window_size", window)
    if num_frames > rows * rows:
        # a wider-than-high super image is possible but not what the variant's windows were chosen for
        raise ValueError(f"{num_frames} frames do not fit a {rows}x{rows} super image (super_img_rows={rows})")
    return SuperImageSwin(num_frames=num_frames, super_img_rows=rows, img_size=size, window_size=window,
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


# ------------------------------------------------------------------------- the authors' released files

# the authors' model names: sifar_{size}[_in1k]_patch{p}_window{w}_{image size}[_{r}x{r}][_big]
_AUTHORS_NAME = re.compile(r"sifar_[a-z0-9_]+?_patch(\d+)_window(\d+)_(\d+)(_\d+x\d+)?(_big)?$")


def convert_authors_sifar(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The repo's Swin keys -> timm's: patch merging moves from the end of stage i to the start of
    stage i + 1, the classifier into `head.fc`; the index and mask buffers (recomputed) are dropped."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        out[re.sub(r"^head\.", "head.fc.", key)] = value
    return out


def _stage_shapes(sd: dict[str, torch.Tensor]) -> tuple[tuple, tuple, tuple]:
    """(blocks, heads, window) per stage, read from the relative position tables ((2w - 1)^2 x heads)."""
    depths, heads, windows = [], [], []
    while f"layers.{len(depths)}.blocks.0.attn.relative_position_bias_table" in sd:
        i = len(depths)
        depths.append(len({k.split(".")[3] for k in sd if k.startswith(f"layers.{i}.blocks.")}))
        entries, num_heads = sd[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape
        heads.append(num_heads)
        windows.append((math.isqrt(entries) + 1) // 2)
    return tuple(depths), tuple(heads), tuple(windows)


def _sifar_args(ckpt: Checkpoint, args: argparse.Namespace, sd: dict, overrides: dict) -> dict:
    """The model arguments of a file: clip layout from its `args`, architecture from its shapes."""
    name = _AUTHORS_NAME.match(args.model)
    if name is None:
        raise CheckpointError(f"{ckpt.path}: SIFAR model {args.model!r} is not one of the repo's "
                              "sifar_*_patch*_window*_<size> Swin models")
    rows, duration = getattr(args, "super_img_rows", 1), getattr(args, "duration", 8)  # main.py's defaults
    frames = overrides.get("num_frames", duration)
    cols = math.ceil(frames / rows)
    if cols != rows:
        # the repo lays frames and frame embeddings out differently on such grids
        raise CheckpointError(f"{ckpt.path}: SIFAR file with super_img_rows={rows}: {frames} frames make a "
                              f"{rows}x{cols} super image; only square ones are supported")
    depths, heads, windows = _stage_shapes(sd)
    embed_dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
    model_args = dict(num_classes=sd["head.weight"].shape[0], num_frames=duration,
                      super_img_rows=rows, img_size=int(name.group(3)), window_size=windows,
                      hpe_to_token="frame_pos_embed" in sd)
    arch = dict(embed_dim=embed_dim, depths=depths, num_heads=heads, patch_size=patch)
    model_args.update({k: v for k, v in arch.items() if v != dict(_SWIN_B, patch_size=4)[k]})
    return model_args


@register_origin
def sifar_pytorch(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """IBM/sifar-pytorch main.py files: `args` (an argparse.Namespace) names a sifar_* model. The
    reference weights are `model`; `model_ema` (timm's ModelEma, other weights) is not used."""
    args = ckpt.field("args")
    if not (isinstance(args, argparse.Namespace) and str(getattr(args, "model", "")).startswith("sifar_")):
        return None
    weights = ckpt.field("model")
    sd = {k.removeprefix("module."): v for k, v in weights.items()} if isinstance(weights, dict) else {}
    if "patch_embed.proj.weight" not in sd or "head.weight" not in sd:
        raise CheckpointError(f"{ckpt.path}: SIFAR file ({args.model}) without a Swin and its classifier "
                              "under 'model'")
    model_args = _sifar_args(ckpt, args, sd, overrides)
    if getattr(args, "hpe_to_token", model_args["hpe_to_token"]) != model_args["hpe_to_token"]:
        raise CheckpointError(f"{ckpt.path}: SIFAR file whose args say hpe_to_token={args.hpe_to_token} "
                              "but whose weights say otherwise")
    # the repo's names that this toolkit registers mean the same model; others use the composable builder
    model = args.model if is_model(args.model) else "sifar_base_patch4_window7_224"
    return Recognized(origin=f"SIFAR ({args.model})", model=model, model_args=model_args,
                      state_dict=convert_authors_sifar(sd))
