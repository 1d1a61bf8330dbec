"""AIM (Yang et al., "AIM: Adapting Image Models for Efficient Video Action Recognition", ICLR 2023).

A frozen CLIP ViT gets three bottleneck adapters per block (as in the official repo,
taoyang1122/adapt-image-models, `vit_clip.py`):
  * temporal: the block's own (frozen) attention applied across frames at each token position,
    followed by the temporal adapter, added to the residual stream (the SSv2 recipe,
    `num_tadapter=2`, puts a second adapter with its own skip before that attention);
  * spatial: the usual attention over the frame's tokens, followed by an adapter with its own skip;
  * joint: an adapter parallel to the MLP, scaled by `joint_scale` (the repo's `adapter_scale`).
A learned temporal embedding is added to every token. The class tokens of all frames pass the
final norm and are averaged over time before the classifier (mmaction's I3DHead, dropout 0.5).
Only adapters, temporal embedding, final norm and head train. Every adapter's last layer starts
at zero, so the untrained model computes exactly the image model's features.

The authors' released files (mmaction `{'meta', 'state_dict', 'optimizer'}`, OpenAI-CLIP names under
`backbone.`, I3DHead `cls_head.fc_cls`) load through `models.from_checkpoint` (`mmaction_aim` below).
"""
from __future__ import annotations

import math
import re
from functools import partial

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from .checkpoints import Checkpoint, CheckpointError, Recognized, register_origin
from .registry import CLIP_MEAN, CLIP_STD, register_model
from .tuning import checkpoint_seq
from .vit_video import CLIP_VIT_BASE, CLIP_VIT_LARGE, CLIP_VIT_TINY, VideoViT, video_contract, zero_init_


def _adapter(dim: int, ratio: float) -> Mlp:
    return Mlp(dim, int(dim * ratio), act_layer=nn.GELU)


class AIMBlock(Block):
    """timm ViT block with AIM's temporal, spatial and joint (MLP-parallel) adapters."""

    def __init__(self, dim: int, *, num_frames: int, adapter_ratio: float = 0.25, joint_scale: float = 0.5,
                 num_tadapter: int = 1, **block_kwargs):
        super().__init__(dim, **block_kwargs)
        if num_tadapter not in (1, 2):
            raise ValueError(f"num_tadapter must be 1 or 2, got {num_tadapter}")
        self.num_frames = num_frames
        self.joint_scale = joint_scale
        self.t_adapter_in = _adapter(dim, adapter_ratio) if num_tadapter == 2 else None
        self.t_adapter = _adapter(dim, adapter_ratio)
        self.s_adapter = _adapter(dim, adapter_ratio)
        self.mlp_adapter = _adapter(dim, adapter_ratio)

    def init_adapters(self) -> None:
        for adapter in (self.t_adapter_in, self.t_adapter, self.s_adapter, self.mlp_adapter):
            if adapter is not None:
                zero_init_(adapter.fc2)

    def extra_repr(self) -> str:
        return f"num_frames={self.num_frames}, joint_scale={self.joint_scale}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bt, n, d = x.shape
        t = self.num_frames
        # temporal attention: one sequence of t frames per (clip, token position)
        xt = self.norm1(x.view(bt // t, t, n, d).transpose(1, 2).reshape(-1, t, d))
        if self.t_adapter_in is not None:
            xt = xt + self.t_adapter_in(xt)
        xt = self.t_adapter(self.attn(xt))
        x = x + self.drop_path1(xt.view(bt // t, n, t, d).transpose(1, 2).reshape(bt, n, d))
        xs = self.attn(self.norm1(x))
        x = x + xs + self.s_adapter(xs)
        xn = self.norm2(x)
        return x + self.mlp(xn) + self.drop_path2(self.joint_scale * self.mlp_adapter(xn))


class AIM(VideoViT):
    trainable_keys = r"temporal_embed|norm\.|head\.|blocks\.\d+\.\w+_adapter(_in)?\."
    video_keys = r"temporal_embed|blocks\.\d+\.\w+_adapter(_in)?\."
    embed_keys = r"temporal_embed"

    def __init__(self, num_frames: int = 8, adapter_ratio: float = 0.25, joint_scale: float = 0.5,
                 num_tadapter: int = 1, drop_rate: float = 0.5, freeze_backbone: bool = True, **vit_kwargs):
        block_fn = partial(AIMBlock, num_frames=num_frames, adapter_ratio=adapter_ratio, joint_scale=joint_scale,
                           num_tadapter=num_tadapter)
        super().__init__(num_frames, freeze_backbone, block_fn=block_fn, drop_rate=drop_rate, **vit_kwargs)
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, self.embed_dim))
        for block in self.blocks:
            block.init_adapters()
        self.freeze()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) clips -> (B, T, D) normed class tokens of every frame."""
        b = x.shape[0]
        x = self.embed_frames(x)
        x = (x.view(b, self.num_frames, *x.shape[1:]) + self.temporal_embed.unsqueeze(2)).flatten(0, 1)
        x = self.norm_pre(x)
        x = checkpoint_seq(self.blocks, x) if self.grad_checkpointing else self.blocks(x)  # timm's switch
        return self.norm(x[:, 0]).view(b, self.num_frames, -1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average over frames (I3DHead); `pre_logits`: that (B, num_features) clip embedding past the dropout."""
        x = self.head_drop(x.mean(1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_aim(num_classes: int, num_frames: int, crop_size: int, vit_args: dict, **kwargs) -> AIM:
    crop_size = kwargs.pop("img_size", crop_size)
    model = AIM(num_frames=num_frames, img_size=crop_size, num_classes=num_classes, **{**vit_args, **kwargs})
    # the official Kinetics configs span 128 frames (32 one every 4, 8 one every 16: mmaction SampleFrames)
    model.input_contract = video_contract(num_frames, crop_size, CLIP_MEAN, CLIP_STD, "dense",
                                          max(1, 128 // num_frames))
    return model


@register_model
def aim_vit_base_patch16(num_classes: int = 400, num_frames: int = 8, **kwargs) -> AIM:
    return _create_aim(num_classes, num_frames, 224, dict(CLIP_VIT_BASE, patch_size=16), **kwargs)


@register_model
def aim_vit_base_patch32(num_classes: int = 400, num_frames: int = 8, **kwargs) -> AIM:
    return _create_aim(num_classes, num_frames, 224, dict(CLIP_VIT_BASE, patch_size=32), **kwargs)


@register_model
def aim_vit_large_patch14(num_classes: int = 400, num_frames: int = 8, **kwargs) -> AIM:
    return _create_aim(num_classes, num_frames, 224, dict(CLIP_VIT_LARGE, patch_size=14), **kwargs)


@register_model
def aim_tiny(num_classes: int = 400, num_frames: int = 4, **kwargs) -> AIM:
    model = _create_aim(num_classes, num_frames, 32, dict(CLIP_VIT_TINY, patch_size=8), **kwargs)
    model.input_contract = model.input_contract.replace(frame_stride=2)
    return model


# ------------------------------------------------------------------------- the authors' released files

# (width, layers, patch) of the backbone -> the registered variant
_VARIANTS = {(768, 12, 16): "aim_vit_base_patch16", (768, 12, 32): "aim_vit_base_patch32",
             (1024, 24, 14): "aim_vit_large_patch14", (32, 2, 8): "aim_tiny"}
# mmaction Recognizer3D around the repo's ViT_CLIP (OpenAI-CLIP names) -> ours, replaced in this order
_AUTHORS_NAMES = (
    ("cls_head.fc_cls.", "head."), ("backbone.", ""), ("transformer.resblocks.", "blocks."),
    ("conv1.", "patch_embed.proj."), ("class_embedding", "cls_token"), ("positional_embedding", "pos_embed"),
    ("temporal_embedding", "temporal_embed"), ("ln_pre.", "norm_pre."), ("ln_post.", "norm."),
    ("ln_1.", "norm1."), ("ln_2.", "norm2."), ("attn.in_proj_", "attn.qkv."), ("attn.out_proj.", "attn.proj."),
    ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."), ("T_Adapter_in.", "t_adapter_in."),
    ("T_Adapter.", "t_adapter."), ("S_Adapter.", "s_adapter."), ("MLP_Adapter.", "mlp_adapter."),
    ("D_fc1.", "fc1."), ("D_fc2.", "fc2."),
)


def convert_authors_aim(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An mmaction AIM state dict (`backbone.*`, `cls_head.*`) in this model's keys and shapes."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _AUTHORS_NAMES:
            key = key.replace(old, new)
        if key == "cls_token":
            value = value.reshape(1, 1, -1)
        elif key == "pos_embed":
            value = value.unsqueeze(0)
        out[key] = value
    return out


def _config_value(meta, name: str) -> str | None:
    """`name=value` from the config text mmaction's train.py stores in a checkpoint's meta, if any."""
    config = meta.get("config") if isinstance(meta, dict) else None
    found = re.search(rf"\b{name}\s*=\s*([\w.]+)", config) if isinstance(config, str) else None
    return found.group(1) if found else None


def _aim_args(ckpt: Checkpoint, overrides: dict) -> tuple[str, dict, list]:
    """(registered variant, its arguments, notes) from the file's shapes and the config text in its meta."""
    sd, meta, path = ckpt.state_dict, ckpt.field("meta"), ckpt.path
    width, _, patch, _ = sd["backbone.conv1.weight"].shape
    layers = len({k.split(".")[3] for k in sd if k.startswith("backbone.transformer.resblocks.")})
    name = _VARIANTS.get((width, layers, patch))
    if name is None:
        raise CheckpointError(f"{path}: AIM file with a ViT of width {width}, {layers} layers, patch {patch}: "
                              f"no such AIM variant (known: {', '.join(_VARIANTS.values())})")
    grid = math.isqrt(sd["backbone.positional_embedding"].shape[0] - 1)
    frames = sd["backbone.temporal_embedding"].shape[1]
    if overrides.get("num_frames", frames) != frames:
        raise CheckpointError(f"{path}: AIM file trained with {frames} frames (its temporal embedding), "
                              f"not {overrides['num_frames']}")
    hidden = sd["backbone.transformer.resblocks.0.T_Adapter.D_fc1.weight"].shape[0]
    args = dict(num_classes=sd["cls_head.fc_cls.weight"].shape[0], num_frames=frames, img_size=grid * patch,
                num_tadapter=2 if "backbone.transformer.resblocks.0.T_Adapter_in.D_fc1.weight" in sd else 1,
                adapter_ratio=hidden / width)
    # no weight shows these; a file that does not record them leaves them to the caller (the variant's
    # defaults: CLIP's heads, and the joint scale of the repo's K400/K700/Diving-48 configs)
    heads, scale = _config_value(meta, "heads"), _config_value(meta, "adapter_scale")
    if heads is not None:
        args["num_heads"] = int(heads)
    notes = []
    if scale is not None:
        args["joint_scale"] = float(scale)
    elif "joint_scale" not in overrides:
        notes.append("the file does not record AIM's adapter_scale: joint_scale=0.5 assumed (K400/K700/Diving-48; "
                     "the repo's SSv2 configs use 1: pass joint_scale=1.0)")
    return name, args, notes


@register_origin
def mmaction_aim(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """The AIM repo's mmaction files: ViT_CLIP backbone (its `T_Adapter`s are AIM's alone) + I3DHead."""
    sd = ckpt.state_dict
    if "backbone.conv1.weight" not in sd or "backbone.transformer.resblocks.0.T_Adapter.D_fc1.weight" not in sd:
        return None
    if "cls_head.fc_cls.weight" not in sd:
        heads = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("cls_head.")}) or ["none"]
        raise CheckpointError(f"{ckpt.path}: AIM file without an I3DHead classifier (cls_head.fc_cls; found "
                              f"{', '.join(heads)})")
    name, args, notes = _aim_args(ckpt, overrides)
    return Recognized(origin="AIM (mmaction ViT_CLIP)", model=name, model_args=args,
                      state_dict=convert_authors_aim(sd), notes=notes)
