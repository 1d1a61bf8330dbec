"""ILA (Tu et al., "Implicit Temporal Modeling with Learnable Alignment for Video Recognition", ICCV 2023).

Before each block of a frozen CLIP ViT, every pair of neighbouring frames goes through a small
conv net that (a) gives "interactive" features for both frames and (b) predicts one point per
frame. A soft square mask around each point selects the region to align; the masked tokens of
both frames of a pair are averaged into the frames they share and, like the interactive
features, enter the residual stream through zero-initialised linear layers. A cosine loss pulls
the two pooled aligned regions of each pair together (the "mutual information" the paper
maximises): `forward_with_aux` returns it next to the logits; plain `forward` gives logits only.
The class tokens are projected by CLIP's frozen `proj` and mixed over time by a one-layer
transformer (X-CLIP's "MIT").

The official repo (Francis-Rings/ILA) has two architectures, one per branch; the builders' `arch` picks one:
  'ssv2' (branch SSV2): a full 3x3 conv opens the interactive block; a linear head classifies
         (`LinearClassifier`).
  'k400' (branch master): a depthwise-separable conv opens it; classification is X-CLIP's
         (`TextClassifier`): cosine similarity between the video and CLIP-text embeddings of the class
         names (`class_names`), each shifted by a video-specific prompt (cross-attention to the frames'
         patch tokens), times exp(logit_scale).
The model is handed its classifier (`ILA(classifier=...)`: the module's class or a partial, as timm hands
`block_fn`, built on the embedding width and kept as `head`): the model computes the video embedding and the
last block's patch tokens, the classifier turns them into logits.
Trainable, as the repo optimises (`utils/optimizer.py`): the alignment modules of every block, the
MIT and the linear head. Frozen: the CLIP towers, and for 'k400' the prompt generator and logit
scale too, which the repo's optimiser leaves out.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, Mlp, QuickGELU, trunc_normal_
from timm.models.vision_transformer import Block, init_weights_vit_timm
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from prep.lists import check_class_names

from .checkpoints import Checkpoint, CheckpointError, Recognized, register_origin
from .clip_text import CLIP_BLOCK_RENAMES, CLIPTextEncoder, clip_text_args, convert_clip_text, rename, tokenize
from .registry import IMAGENET_MEAN, IMAGENET_STD, register_model
from .tuning import checkpoint_module
from .vit_video import CLIP_VIT_BASE, CLIP_VIT_LARGE, CLIP_VIT_TINY, VideoViT, video_contract, zero_init_
from .weights import load_state_dict_checked

ARCHS = ("ssv2", "k400")
# the repo's training jitter of the predicted points: the point itself and its 8 neighbours
_JITTER = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))


def alignment_mask(points: torch.Tensor, size: int) -> torch.Tensor:
    """Soft square masks (..., size, size) around points (..., 2) given as (x, y) in [-1, 1].

    Weight 1 within 0.25 of the point along an axis, then falling linearly to 0 at 0.25 + 1/1.5.
    """
    grid = torch.arange(size, device=points.device, dtype=points.dtype) / (size - 1) * 2 - 1  # the repo's grid
    dist = (grid - points.unsqueeze(-1)).abs()  # (..., 2, size)
    weight = (1 - 1.5 * (dist - 0.25).clamp(min=0)).clamp(min=0)
    return weight[..., 1, :, None] * weight[..., 0, None, :]


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, groups: int = 1) -> Conv2dNormActivation:
    return Conv2dNormActivation(c_in, c_out, kernel, groups=groups, bias=True)  # the repo's convs keep a bias


def _interactive_block(channels: int, hidden: int, separable: bool) -> nn.Sequential:
    if separable:  # depthwise-separable opening (branch master)
        first = [_conv_bn_relu(channels, channels, 3, groups=channels), _conv_bn_relu(channels, hidden, 1)]
    else:
        first = [_conv_bn_relu(channels, hidden, 3)]
    return nn.Sequential(*first, _conv_bn_relu(hidden, hidden, 3))


class LearnableAlignment(nn.Module):
    """ILA's alignment of neighbouring frames (the repo's `ILA` module)."""

    def __init__(self, dim: int, grid_size: int, hidden: int = 256, jitter: float = 0.2, separable: bool = False):
        super().__init__()
        self.grid_size = grid_size
        half = hidden // 2
        self.interact = _interactive_block(2 * dim, hidden, separable)
        self.predict = nn.Sequential(  # the repo pools before its ReLU: the same, as max and ReLU commute
            _conv_bn_relu(hidden, half, 3), nn.MaxPool2d(2),
            _conv_bn_relu(half, half, 3), nn.MaxPool2d(2),
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

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}"

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

    def __init__(self, dim: int, *, num_frames: int, grid_size: int, align_hidden: int = 256,
                 separable: bool = False, **block_kwargs):
        super().__init__(dim, **block_kwargs)
        self.num_frames = num_frames
        self.align_fc = nn.Linear(dim, dim)
        self.align_norm = LayerNorm(dim)
        self.align = LearnableAlignment(dim, grid_size, align_hidden, separable=separable)
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


class PromptAttention(nn.Module):
    """Multi-head cross-attention from the class texts (queries) to a video's tokens (keys, values)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(context)), heads(self.v(context)))
        return self.proj(out.transpose(1, 2).flatten(2))


class PromptBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PromptAttention(dim, max(1, dim // 64))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim, act_layer=QuickGELU)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), context)
        return x + self.mlp(self.norm2(x))


class VideoPrompt(nn.Module):
    """X-CLIP's video-specific prompt generator: class texts (B, K, E) attend to the video's tokens
    (B, N, E); the result, scaled per channel by `alpha`, is added to the text embeddings."""

    def __init__(self, dim: int, depth: int = 2, alpha: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList([PromptBlock(dim) for _ in range(depth)])
        self.alpha = nn.Parameter(torch.full((dim,), alpha))
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                init_weights_vit_timm(module)

    def forward(self, text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        video = self.norm(video)
        for block in self.blocks:
            text = block(text, video)
        return self.alpha * text


class LinearClassifier(nn.Sequential):
    """Branch SSV2's classifier: LayerNorm, dropout and a linear layer on the video embedding."""

    per_class_params = True  # a row per class: the model's head_names, re-initialised for other classes
    trainable = True  # the repo's optimiser trains it

    def __init__(self, dim: int, num_classes: int, class_names: list[str] | None = None, drop_rate: float = 0.5):
        _check_class_names(num_classes, class_names)
        super().__init__(nn.LayerNorm(dim), nn.Dropout(drop_rate), nn.Linear(dim, num_classes))
        self.num_classes, self.class_names = num_classes, class_names  # the names only label the rows here
        self.apply(init_weights_vit_timm)

    def forward(self, video: torch.Tensor, patches: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """video (B, E) embeddings -> (B, K) logits; `pre_logits`: what the linear layer takes. `patches` unused."""
        video = self[1](self[0](video))  # by index: a slice would build another LinearClassifier
        return video if pre_logits else self[2](video)

    def take_clip_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Nothing of an image CLIP file is this classifier's."""
        return state_dict


class TextClassifier(nn.Module):
    """Branch master's (X-CLIP's) classifier: the class names' CLIP-text embeddings, each shifted by a prompt
    that attends to the video's patch tokens, against the video embedding: exp(logit_scale) x cosine.
    Without `class_names` it still builds (to load or check a file) but cannot classify."""

    per_class_params = False  # the classes are the names' text embeddings: other names need no new weights
    trainable = False  # the repo's optimiser leaves the text tower, prompt generator and logit scale out

    def __init__(self, vision_width: int, dim: int, num_classes: int, class_names: list[str] | None = None,
                 width: int = 512, depth: int = 12, num_heads: int = 8, context_length: int = 77,
                 vocab_size: int = 49408, prompt_depth: int = 2, prompt_alpha: float = 0.1):
        _check_class_names(num_classes, class_names)
        super().__init__()
        self.num_classes, self.class_names = num_classes, class_names
        self.text = CLIPTextEncoder(dim, width=width, depth=depth, num_heads=num_heads,
                                    context_length=context_length, vocab_size=vocab_size)
        tokens = tokenize(class_names, context_length) if class_names else None
        self.register_buffer("class_tokens", tokens, persistent=False)
        self.prompt_norm = LayerNorm(vision_width, eps=1e-5)
        self.prompt_proj = nn.Linear(vision_width, dim, bias=False)
        nn.init.normal_(self.prompt_proj.weight)  # the repo: torch.randn, never trained
        self.prompt = VideoPrompt(dim, prompt_depth, prompt_alpha)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._class_cache = None
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_class_cache", None))

    def class_embeddings(self) -> torch.Tensor:
        """(K, E) CLIP-text embeddings of the class names. With the text tower frozen (the repo's FIX_TEXT)
        they are computed once and kept, as the repo's `use_cache`; a load, a move to another device or
        dtype, or autocast recomputes them. A text tower that trains is run at every training step."""
        if self.class_tokens is None:
            raise ValueError("ILA arch='k400' classifies by the CLIP-text embeddings of the class names: build it "
                             "with class_names=[...], one per class")
        if self.training and any(p.requires_grad for p in self.text.parameters()):
            self._class_cache = None  # the step changes the tower
            return self.text(self.class_tokens)
        weight = self.text.token_embedding.weight
        key = (weight.device, weight.dtype, torch.is_autocast_enabled(weight.device.type))
        if self._class_cache is None or self._class_cache[0] != key:
            with torch.no_grad():
                self._class_cache = (key, self.text(self.class_tokens))
        return self._class_cache[1]

    def forward(self, video: torch.Tensor, patches: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normalised video embeddings (B, E) and the last block's patch tokens (B, T, HW, D) -> (B, K);
        `pre_logits`: the video embedding (the text side also sees the patch tokens, through the prompt, so
        the logits are not a function of this embedding alone)."""
        if pre_logits:
            return video
        patches = self.prompt_proj(self.prompt_norm(patches)).mean(1)
        text = self.class_embeddings().expand(video.shape[0], -1, -1)
        text = F.normalize(text + self.prompt(text, patches), dim=-1)
        return self.logit_scale.exp() * torch.einsum("bd,bkd->bk", video, text)

    def take_clip_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Load the text tower and logit scale of an OpenAI CLIP state dict; the rest is the image tower's."""
        if "token_embedding.weight" not in state_dict:
            raise ValueError("ILA arch='k400' needs CLIP's text tower too: load an OpenAI CLIP state dict")
        load_state_dict_checked(self.text, convert_clip_text(state_dict), source="OpenAI CLIP text tower")
        with torch.no_grad():
            self.logit_scale.copy_(state_dict["logit_scale"])
        self._class_cache = None
        return {k: v for k, v in state_dict.items() if k != "logit_scale"}


_TOP_LEVEL_TEXT_KEYS = ("text.", "prompt_norm.", "prompt_proj.", "prompt.", "logit_scale")


class ILA(VideoViT):
    """ILA's video ViT. `classifier(proj_dim)` builds the classifier, kept as `head`: `LinearClassifier` or
    `TextClassifier` with its other arguments bound (`make_classifier`), or any module with their interface;
    built where the model built its head before, so a seeded model initialises as it did.
    `separable_interaction`: branch master's opening of the interactive block."""

    def __init__(self, classifier: Callable[[int], nn.Module], num_frames: int = 8, img_size: int = 224,
                 patch_size: int = 16, proj_dim: int = 512, mit_depth: int = 1, align_hidden: int = 256,
                 separable_interaction: bool = False, freeze_backbone: bool = True, **vit_kwargs):
        block_fn = partial(ILABlock, num_frames=num_frames, grid_size=img_size // patch_size,
                           align_hidden=align_hidden, separable=separable_interaction)
        super().__init__(num_frames, freeze_backbone, block_fn=block_fn, img_size=img_size, patch_size=patch_size,
                         num_classes=0, **vit_kwargs)
        self.num_features = proj_dim  # the clip embedding is the MIT's, not the ViT's width
        self.proj = nn.Linear(self.embed_dim, proj_dim, bias=False)  # CLIP's visual.proj
        self.mit = FrameIntegration(proj_dim, num_frames, mit_depth)
        self.mit.apply(init_weights_vit_timm)  # as the repo: truncated normal (0.02) linears
        self.head = classifier = classifier(proj_dim)
        self.num_classes, self.class_names = classifier.num_classes, classifier.class_names
        self.head_names = ("head.",) if classifier.per_class_params else ()
        trained = r"mit\.|blocks\.\d+\.(align|skip_)"
        self.trainable_keys = trained + (r"|head\." if classifier.trainable else "")
        self.video_keys = trained + r"|head\."  # no image file has these: the classifier comes from CLIP or init
        for block in self.blocks:
            block.init_skips()
        self.freeze()

    def upgrade_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A toolkit checkpoint written before the classifier was a module kept the text classifier's weights at
        the top level (`text.*`, `prompt*`, `logit_scale`): their names under `head.` now. Nothing else changes."""
        if not isinstance(self.head, TextClassifier):
            return sd
        return {(f"head.{k}" if k.startswith(_TOP_LEVEL_TEXT_KEYS) else k): v for k, v in sd.items()}

    def image_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm names CLIP's projection `head.weight`; here it is the frozen `proj`."""
        sd = dict(sd)
        if "head.weight" in sd:
            sd["proj.weight"] = sd.pop("head.weight")
        return {k: v for k, v in sd.items() if not k.startswith("head.")}

    def load_pretrained(self, state_dict: dict[str, torch.Tensor]) -> None:
        """As VideoViT's; the classifier takes what it needs of an image CLIP file first (the text tower)."""
        if not any(k.startswith("mit.") for k in state_dict):  # an image file, not one of this model
            state_dict = self.head.take_clip_weights(state_dict)
        super().load_pretrained(state_dict)

    def set_epoch(self, epoch: int) -> None:
        """Training hook (called by train before each 0-based epoch): the repo halves the alignment jitter
        once per epoch from its epoch 30 on; recomputed from the epoch so a resumed run gets the same."""
        for block in self.blocks:
            align = block.align
            align.jitter.copy_(torch.tensor(_JITTER, dtype=torch.float32, device=align.jitter.device)
                               * align.base_jitter * 0.5 ** max(0, epoch - 29))

    def _features_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]  # the input's, and view, not unflatten: an ONNX export would bake in the traced batch size
        x = self.norm_pre(self.embed_frames(x))
        aux = x.new_zeros(())
        for block in self.blocks:  # grad_checkpointing: timm's switch; the alignment has BatchNorms
            x, loss = checkpoint_module(block, x) if self.grad_checkpointing else block(x)
            aux = aux + loss
        return x.view(b, self.num_frames, *x.shape[1:]), aux

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) clips -> the last block's tokens (B, T, 1 + HW, D)."""
        return self._features_with_aux(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class tokens projected and mixed over time by the MIT into the L2-normalised video embedding, then
        classified by `head` with the patch tokens. `pre_logits` gives the (B, num_features) clip embedding
        the classifier's last step takes (see the classifier's `forward`)."""
        video = self.mit(self.proj(self.norm(x[:, :, 0])))
        return self.head(video, x[:, :, 1:], pre_logits=pre_logits)

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the summed alignment (cosine) loss of all blocks, which the repo adds to the loss."""
        x, aux = self._features_with_aux(x)
        return self.forward_head(x), aux

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        """`return_aux=True` (train passes it through DDP) also returns the alignment loss."""
        logits, aux = self.forward_with_aux(x)
        return (logits, aux) if return_aux else logits


def _check_class_names(num_classes: int, class_names: list[str] | None) -> None:
    if class_names:
        check_class_names(list(class_names), "class_names")  # blank, padded or repeated names: prep.lists' rules
    if class_names and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")


# --------------------------------------------------------------------------- the repo's released files

# the repo's `ILA` module (message_attn) -> LearnableAlignment, module by module
_ALIGN_PATHS = {
    "conv": "temporal_conv", "fc": "fc",
    "prediction_block.0": "predict.0.0", "prediction_block.1": "predict.0.1",
    "prediction_block.4": "predict.2.0", "prediction_block.5": "predict.2.1",
    "prediction_block.10": "point_head.0", "prediction_block.12": "point_head.2",
}
_INTERACT_PATHS = {
    "ssv2": {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1"},
    "k400": {"0.depthwise_conv.0": "0.0", "0.depthwise_conv.1": "0.1", "0.pointwise_conv.0": "1.0",
             "0.pointwise_conv.1": "1.1", "1": "2.0", "2": "2.1"},
}
_RENAMES = (
    (r"^visual\.conv1\.", "patch_embed.proj."), (r"^visual\.class_embedding$", "cls_token"),
    (r"^visual\.positional_embedding$", "pos_embed"), (r"^visual\.ln_pre\.", "norm_pre."),
    (r"^visual\.ln_post\.", "norm."), (r"^visual\.proj$", "proj.weight"),
    (r"^visual\.transformer\.resblocks\.", "blocks."), (r"\.message_fc\.", ".align_fc."),
    (r"\.message_ln\.", ".align_norm."), (r"\.temporal_skip_fc\.", ".skip_interact."),
    (r"\.temporal_skip_align_fc\.", ".skip_aligned."),
    (r"^mit\.positional_embedding$", "mit.pos_embed"), (r"^mit\.resblocks\.", "mit.blocks."),
    (r"^mit\.classify_head\.", "head."),
    (r"^prompts_visual_ln\.", "head.prompt_norm."), (r"^prompts_visual_proj$", "head.prompt_proj.weight"),
    (r"^prompts_generator\.decoder\.", "head.prompt.blocks."), (r"^prompts_generator\.", "head.prompt."),
    (r"^logit_scale$", "head.logit_scale"),
    (r"\.cross_attn\.(q|k|v)_proj\.", r".attn.\1."), (r"\.cross_attn\.proj\.", ".attn.proj."),
    (r"(prompt\.blocks\.\d+)\.norm3\.", r"\1.norm2."), (r"(prompt\.blocks\.\d+)\.mlp\.0\.", r"\1.mlp.fc1."),
    (r"(prompt\.blocks\.\d+)\.mlp\.3\.", r"\1.mlp.fc2."),
) + CLIP_BLOCK_RENAMES
_TRANSPOSED = ("visual.proj", "prompts_visual_proj")
_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def _align_key(key: str, arch: str) -> str:
    block, path = key.split(".message_attn.")
    path, param = path.rsplit(".", 1)
    if path.startswith("interactive_block."):
        new = "interact." + _INTERACT_PATHS[arch].get(path.removeprefix("interactive_block."), path)
    else:
        new = _ALIGN_PATHS.get(path, path)
    return f"{rename(block, _RENAMES)}.align.{new}.{param}"


def convert_ila(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """A state dict of the repo's XCLIP model (either branch) in this ILA's keys."""
    out = {f"head.text.{k}": v for k, v in convert_clip_text(sd).items()}
    for key, value in sd.items():
        if key.startswith(_TEXT_KEYS):
            continue
        if ".message_attn." in key:
            out[_align_key(key, arch)] = value
            continue
        if key in _TRANSPOSED:
            value = value.t()
        elif key == "visual.class_embedding":
            value = value.view(1, 1, -1)
        elif key == "visual.positional_embedding":
            value = value.unsqueeze(0)
        out[rename(key, _RENAMES)] = value
    return out


def _count(sd: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _file_arch(path: str, sd: dict) -> str:
    """'ssv2' or 'k400' from the keys: the interactive block's opening and the classifier must agree."""
    separable = any(".interactive_block.0.depthwise_conv." in k for k in sd)
    text = "token_embedding.weight" in sd and "prompts_generator.alpha" in sd
    linear = "mit.classify_head.2.weight" in sd
    if separable and text and not linear:
        return "k400"
    if not separable and linear and not text:
        return "ssv2"
    raise CheckpointError(f"{path}: ILA file with a {'separable' if separable else 'full'} interactive block and "
                          f"{'a text' if text else 'a linear' if linear else 'no'} classifier: no released ILA "
                          "architecture has that pair")


def _vision_args(path: str, sd: dict, config: dict) -> tuple[str, dict]:
    conv = sd["visual.conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    name = next((n for n, v in _VARIANTS.items() if (v["embed_dim"], v["patch_size"]) == (width, patch)), None)
    if name is None:
        raise CheckpointError(f"{path}: ILA file with a ViT of width {width} and patch {patch}: no such ILA variant")
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    hidden = [v.shape[0] for k, v in sd.items() if ".message_attn.interactive_block." in k and v.ndim == 4][-1]
    found = dict(depth=_count(sd, "visual.transformer.resblocks."), img_size=grid * patch,
                 proj_dim=sd["visual.proj"].shape[1], mit_depth=_count(sd, "mit.resblocks."), align_hidden=hidden)
    size = (config.get("DATA") or {}).get("INPUT_SIZE")
    if size not in (None, found["img_size"]):
        raise CheckpointError(f"{path}: ILA file whose config says INPUT_SIZE {size} but whose position table "
                              f"is for {found['img_size']}")
    return name, found


def _text_args(sd: dict) -> dict:
    text = clip_text_args(sd)
    return dict(text_width=text["width"], text_depth=text["depth"], text_heads=text["num_heads"],
                context_length=text["context_length"], vocab_size=text["vocab_size"],
                prompt_depth=_count(sd, "prompts_generator.decoder."))


def _num_classes(sd: dict, arch: str, config: dict, overrides: dict) -> tuple[int, list[str]]:
    """The classes a model of this file gets, and notes. 'ssv2': the head's rows, unless the caller asks
    for the dataset's own count (config DATA.NUM_CLASSES): the repo's SSv2 code builds a 400-way head
    for SSv2's 174 classes, whose first rows are the classes. 'k400': one per class name."""
    names = overrides.get("class_names")
    wanted = overrides.get("num_classes") or (len(names) if names else None)
    if arch == "k400":
        return (len(names) if names else wanted or (config.get("DATA") or {}).get("NUM_CLASSES", 400)), []
    rows = sd["mit.classify_head.2.weight"].shape[0]
    dataset = (config.get("DATA") or {}).get("NUM_CLASSES")
    if wanted is not None and wanted != rows and wanted == dataset:
        return wanted, [f"kept the first {wanted} of the head's {rows} rows (DATA.NUM_CLASSES {dataset})"]
    return rows, []


@register_origin
def ila_released(ckpt: Checkpoint, overrides: dict) -> Recognized | None:
    """Files of the repo's training script (`{'model', 'optimizer', ..., 'config'}`, XCLIP keys)."""
    sd = ckpt.state_dict
    if "visual.conv1.weight" not in sd or "mit.positional_embedding" not in sd \
            or not any(".message_attn." in k for k in sd):
        return None
    config = ckpt.field("config") if isinstance(ckpt.field("config"), dict) else {}
    arch = _file_arch(ckpt.path, sd)
    name, found = _vision_args(ckpt.path, sd, config)
    frames = sd["mit.positional_embedding"].shape[1]
    if overrides.get("num_frames", frames) != frames:
        raise CheckpointError(f"{ckpt.path}: ILA file for {frames} frames (mit.positional_embedding); "
                              f"num_frames={overrides['num_frames']} does not fit it")
    if arch == "k400":
        found.update(_text_args(sd))
    num_classes, notes = _num_classes(sd, arch, config, overrides)
    defaults = _VARIANTS[name]
    args = dict(arch=arch, num_classes=num_classes, num_frames=frames,
                **{k: v for k, v in found.items() if defaults.get(k, _DEFAULTS.get(k)) != v})
    state_dict = convert_ila(sd, arch)
    if "head.2.weight" in state_dict and num_classes < state_dict["head.2.weight"].shape[0]:
        state_dict["head.2.weight"] = state_dict["head.2.weight"][:num_classes]
        state_dict["head.2.bias"] = state_dict["head.2.bias"][:num_classes]
    model_name = (config.get("MODEL") or {}).get("ARCH", "?")
    return Recognized(origin=f"ILA ({model_name}, arch '{arch}')", model=name, model_args=args,
                      state_dict=state_dict, classes=overrides.get("class_names"), notes=notes)


# ---------------------------------------------------------------------------------------- variants

# the arguments of ILA that the variants set or that the repo's files may change
_DEFAULTS = dict(img_size=224, proj_dim=512, mit_depth=1, align_hidden=256, text_width=512, text_depth=12,
                 text_heads=8, context_length=77, vocab_size=49408, prompt_depth=2)
_VARIANTS = {
    "ila_vit_base_patch16": dict(CLIP_VIT_BASE, patch_size=16),
    "ila_vit_base_patch32": dict(CLIP_VIT_BASE, patch_size=32),
    "ila_vit_large_patch14": dict(CLIP_VIT_LARGE, patch_size=14, proj_dim=768, text_width=768, text_heads=12),
    "ila_tiny": dict(CLIP_VIT_TINY, patch_size=8, img_size=32, proj_dim=16, align_hidden=16, text_width=32,
                     text_depth=1, text_heads=2),
}


_TEXT_ARGS = dict(text_width="width", text_depth="depth", text_heads="num_heads", context_length="context_length",
                  vocab_size="vocab_size", prompt_depth="prompt_depth", prompt_alpha="prompt_alpha")


def make_classifier(arch: str, num_classes: int, class_names: list[str] | None, vision_width: int,
                    drop_rate: float = 0.5, **text_args) -> Callable[[int], nn.Module]:
    """The builder of the repo's `arch` classifier ('ssv2': linear; 'k400': text, taking the `_TEXT_ARGS`), to
    be called on the embedding width."""
    if arch == "k400":
        return partial(TextClassifier, vision_width, num_classes=num_classes, class_names=class_names,
                       **{_TEXT_ARGS[k]: v for k, v in text_args.items()})
    if text_args:
        raise ValueError(f"ILA arch='ssv2' has a linear classifier: {', '.join(text_args)} apply to arch='k400' only")
    return partial(LinearClassifier, num_classes=num_classes, class_names=class_names, drop_rate=drop_rate)


def _create_ila(name: str, num_classes: int, num_frames: int, arch: str, class_names: list[str] | None,
                drop_rate: float, **kwargs) -> ILA:
    if arch not in ARCHS:
        raise ValueError(f"ILA arch must be one of {ARCHS}, got {arch!r}")
    args = {**_VARIANTS[name], **kwargs}
    text_args = {k: args.pop(k) for k in _TEXT_ARGS if k in args}
    if arch == "ssv2":  # the variants' text tower sizes: for 'k400' only
        text_args = {k: v for k, v in text_args.items() if k in kwargs}
    classifier = make_classifier(arch, num_classes, class_names, args["embed_dim"], drop_rate, **text_args)
    model = ILA(classifier, num_frames=num_frames, separable_interaction=arch == "k400", **args)
    model.arch = arch
    # the repo normalises with ImageNet statistics (X-CLIP's pipeline) and samples one frame per segment
    crop = args.get("img_size", _DEFAULTS["img_size"])
    model.input_contract = video_contract(num_frames, crop, IMAGENET_MEAN, IMAGENET_STD, "tsn")
    return model


@register_model
def ila_vit_base_patch16(num_classes: int = 400, num_frames: int = 8, arch: str = "ssv2",
                         class_names: list[str] | None = None, drop_rate: float = 0.5, **kwargs) -> ILA:
    """arch='ssv2' (linear head, default) or 'k400' (video-text classifier: pass class_names)."""
    return _create_ila("ila_vit_base_patch16", num_classes, num_frames, arch, class_names, drop_rate, **kwargs)


@register_model
def ila_vit_base_patch32(num_classes: int = 400, num_frames: int = 8, arch: str = "ssv2",
                         class_names: list[str] | None = None, drop_rate: float = 0.5, **kwargs) -> ILA:
    return _create_ila("ila_vit_base_patch32", num_classes, num_frames, arch, class_names, drop_rate, **kwargs)


@register_model
def ila_vit_large_patch14(num_classes: int = 400, num_frames: int = 8, arch: str = "ssv2",
                          class_names: list[str] | None = None, drop_rate: float = 0.5, **kwargs) -> ILA:
    """img_size=336 for the repo's ViT-L/14@336px files."""
    return _create_ila("ila_vit_large_patch14", num_classes, num_frames, arch, class_names, drop_rate, **kwargs)


@register_model
def ila_tiny(num_classes: int = 400, num_frames: int = 4, arch: str = "ssv2", class_names: list[str] | None = None,
             drop_rate: float = 0.5, **kwargs) -> ILA:
    return _create_ila("ila_tiny", num_classes, num_frames, arch, class_names, drop_rate, **kwargs)
