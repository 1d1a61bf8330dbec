"""A frozen image ViT (timm `VisionTransformer`, CLIP layout) run over the frames of a clip.

Shared by the adapter models (AIM, ILA): frames are embedded one by one, the transformer blocks
(given as `block_fn`) mix information across frames, and only the video-specific modules train.
Weights come from an OpenAI CLIP, open_clip or timm ViT state dict through timm's own converter
(`checkpoint_filter_fn`, which also resamples the position table to the model's grid).
"""
from __future__ import annotations

import re
from functools import partial

import torch
from timm.layers import LayerNorm
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from .registry import InputContract
from .weights import load_state_dict_checked

# the CLIP image towers (timm's `vit_base_patch{16,32}_clip_quickgelu_224`)
CLIP_VIT_BASE = dict(embed_dim=768, depth=12, num_heads=12, pre_norm=True, act_layer="quick_gelu",
                     norm_layer=partial(LayerNorm, eps=1e-5))
CLIP_VIT_LARGE = dict(embed_dim=1024, depth=24, num_heads=16, pre_norm=True, act_layer="quick_gelu",
                      norm_layer=partial(LayerNorm, eps=1e-5))
CLIP_VIT_TINY = dict(embed_dim=32, depth=2, num_heads=2, pre_norm=True, act_layer="quick_gelu",
                     norm_layer=partial(LayerNorm, eps=1e-5))


class VideoViT(VisionTransformer):
    """timm ViT over (B, T, C, H, W) clips. Subclasses set three regexes (matched at a key's start):

    `trainable_keys`: parameters left trainable when `freeze_backbone` (the paper's recipe);
    `video_keys`: parameters no image checkpoint has (they keep their init on an image load);
    `embed_keys`: the model's own embeddings added to the patch tokens before the blocks ("" : none).
    """

    trainable_keys = r"head\."
    video_keys = r"$^"
    embed_keys = ""

    def __init__(self, num_frames: int, freeze_backbone: bool = True, **vit_kwargs):
        super().__init__(**vit_kwargs)
        self.num_frames = num_frames
        self.head_names = ("head.",)
        self._freeze_backbone = freeze_backbone

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's grouping (layer-wise lr decay), with `embed_keys` in the stem next to pos_embed: a parameter
        that no pattern matches would land in the head's group. Modules inside a block (adapters, alignment)
        already go with their block; those after the blocks (ILA's MIT) with the head, as the classifier."""
        matcher = super().group_matcher(coarse)
        return dict(matcher, stem=f"{matcher['stem']}|{self.embed_keys}") if self.embed_keys else matcher

    def freeze(self) -> None:
        """With `freeze_backbone`, requires_grad=False on every parameter not matching `trainable_keys`."""
        pattern = re.compile(self.trainable_keys)
        for name, param in self.named_parameters():
            param.requires_grad_(not self._freeze_backbone or bool(pattern.match(name)))

    def embed_frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> (B*T, tokens, D): patches, class token and position table per frame."""
        if x.ndim != 5 or x.shape[1] != self.num_frames:
            raise ValueError(f"expected (B, {self.num_frames}, C, H, W) clips, got {tuple(x.shape)}")
        x = self.patch_embed(x.flatten(0, 1))
        return self.patch_drop(self._pos_embed(x))

    def image_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook: adapt an image checkpoint already in timm names. Default drops its classifier."""
        return {k: v for k, v in sd.items() if not k.startswith("head.")}

    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a checkpoint of this video model, or an OpenAI CLIP / open_clip / timm ViT image one.

        Image checkpoints must supply every backbone tensor; a missing or mis-shaped one raises
        a ValueError naming it (in timm names, e.g. `blocks.0.mlp.fc1.weight`).
        """
        own = self.state_dict()
        video = [k for k in own if re.match(self.video_keys, k)]
        if any(k in state_dict for k in video):
            load_state_dict_checked(self, state_dict, source=f"{type(self).__name__} checkpoint")
            return
        clip = any(k.startswith(("visual.", "module.visual.")) for k in state_dict)
        sd = self.image_state_dict(checkpoint_filter_fn(state_dict, self))
        sd.update({k: own[k] for k in video})
        source = "OpenAI CLIP state dict (keys in timm names)" if clip else "timm ViT state dict"
        load_state_dict_checked(self, sd, source=source)


def video_contract(num_frames: int, crop_size: int, mean: tuple, std: tuple, sampling: str,
                   frame_stride: int = 1) -> InputContract:
    return InputContract(layout="NTCHW", num_frames=num_frames, crop_size=crop_size, mean=mean, std=std,
                         sampling=sampling, frame_stride=frame_stride)


def zero_init_(layer: nn.Module) -> nn.Module:
    """Zero a branch's last layer so the new branch starts as a no-op on the image model."""
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer
