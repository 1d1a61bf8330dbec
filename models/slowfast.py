"""SlowFast-R50 (Feichtenhofer et al., ICCV 2019) as in PySlowFast, built from models/resnet3d.py.

The forward takes ONE clip, the Fast pathway's frames (NCTHW); the Slow pathway sees every
alpha-th of them. 4x16: Slow 4 frames at stride 16, Fast 32 at stride 2 (alpha 8, fusion kernel 5);
8x8: Slow 8 at stride 8, Fast 32 at stride 2 (alpha 4, fusion kernel 7). beta = 1/8 (Fast
widths), time-strided 1D convolutions carry Fast features into Slow after the stem and after
res2-res4 (channel ratio 2). Slow: SlowOnly's blocks (temporal kernels in res4-res5 only, 1x7x7
stem); Fast: temporal kernels in every stage and a 5x7x7 stem. No temporal striding anywhere.

mmaction's ResNet3dSlowFast (the STS authors' released files) is the same network but for two
parameter-free details, options here: its lateral connections are a bare conv (`lateral_norm=False`;
PySlowFast follows it with BN + ReLU) and its SlowFastHead concatenates the pooled Fast features
before the Slow ones (`feature_order="fast_slow"`). Its slow pathway samples frames 0, alpha, 2 alpha..
of the clip (nearest interpolation by 1/tau with tau = alpha in its configs), as here.
"""
from __future__ import annotations

import re

import torch
from torch import nn
from torchvision.models.video.resnet import Conv3DNoTemporal

from .checkpoints import CheckpointError
from .registry import IMAGENET_MEAN, IMAGENET_STD, InputContract, register_model
from .resnet3d import SLOWONLY_BLOCKS, TINY_CROP, TINY_WIDTHS, Stem3d, TemporalBottleneck, add_drop_path, init_weights_
from .resnet3d import make_res_stage
from .resnet3d import mmaction_layers, mmaction_pathway_key
from .sts import convert_to_sts, sts_mode
from .tuning import MATCH_PREV_GROUP, checkpoint_seq
from .weights import load_state_dict_checked


class LateralFusion(nn.Module):
    """Fast -> Slow lateral connection: a time-strided tx1x1 conv (+ BN + ReLU with `norm`),
    concatenated to Slow."""

    def __init__(self, fast_channels: int, alpha: int, kernel: int, channel_ratio: int = 2, norm: bool = True):
        super().__init__()
        self.conv = nn.Conv3d(fast_channels, fast_channels * channel_ratio, (kernel, 1, 1),
                              (alpha, 1, 1), (kernel // 2, 0, 0), bias=False)
        if norm:
            self.bn = nn.BatchNorm3d(fast_channels * channel_ratio)
            self.relu = nn.ReLU(inplace=True)
        self.norm = norm

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        lateral = self.conv(fast)
        if self.norm:
            lateral = self.relu(self.bn(lateral))
        return torch.cat([slow, lateral], dim=1)


FEATURE_ORDERS = ("slow_fast", "fast_slow")


class SlowFast(nn.Module):
    head_names = ("fc.",)

    def __init__(self, layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), alpha: int = 8,
                 beta_inv: int = 8, fusion_kernel: int = 5, fusion_ratio: int = 2,
                 fast_stem_kernel: int = 5, num_classes: int = 400, drop_rate: float = 0.5,
                 lateral_norm: bool = True, feature_order: str = "slow_fast", drop_path_rate: float = 0.0):
        super().__init__()
        if feature_order not in FEATURE_ORDERS:
            raise ValueError(f"feature_order must be one of {FEATURE_ORDERS}, got {feature_order!r}")
        self.alpha = alpha
        self.feature_order = feature_order
        fast_widths = [w // beta_inv for w in widths]
        self.slow_stem = Stem3d(widths[0], 1, pool=True)
        self.fast_stem = Stem3d(fast_widths[0], fast_stem_kernel, pool=True)
        self.fusions, self.slow_layers, self.fast_layers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        slow_in, fast_in = widths[0], fast_widths[0]
        for i, num_blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            self.fusions.append(LateralFusion(fast_in, alpha, fusion_kernel, fusion_ratio, lateral_norm))
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
        for pathway in (self.slow_layers, self.fast_layers):  # the same schedule over the depth of each
            add_drop_path(pathway, drop_path_rate)
        self.grad_checkpointing = False

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, feature_order={self.feature_order}"

    def res_stages(self) -> tuple[nn.Module, ...]:
        return (*self.slow_layers, *self.fast_layers)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's description of the stages (layer_decay; frozen_stages counts its stem and coarse groups): the
        stems, then stage (`coarse`) or block i of both pathways, each with the lateral connection that reads
        its output (fusions.i+1, sorted just before stage i+1 and merged into the group before it). The lateral
        after the stems, `fusions.0`, goes with the stems' rate but in an entry of its own: mmaction's
        frozen_stages leaves it trainable."""
        stage = r"^(?:slow|fast)_layers\.(\d+)"
        merged = (-1, *MATCH_PREV_GROUP)
        return dict(stem=r"^(?:slow|fast)_stem", stem_lateral=[(r"^fusions\.0\b", MATCH_PREV_GROUP)],
                    blocks=[(stage, (0,)) if coarse else (stage + r"\.(\d+)", None),
                            (r"^fusions\.([1-9]\d*)\b", merged)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_features): the pathways' maps differ in frames and width, so each is pooled and joined here."""
        slow, fast = self.slow_stem(x[:, :, :: self.alpha]), self.fast_stem(x)
        for fuse, slow_stage, fast_stage in zip(self.fusions, self.slow_layers, self.fast_layers):
            slow = self._stage(slow_stage, fuse(slow, fast))
            fast = self._stage(fast_stage, fast)
        pooled = [self.avgpool(slow).flatten(1), self.avgpool(fast).flatten(1)]
        return torch.cat(pooled if self.feature_order == "slow_fast" else pooled[::-1], dim=1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """`x`: forward_features' pooled (N, num_features) pathways; `pre_logits` returns them past the dropout."""
        x = self.dropout(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

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
                    sts: bool | str = False, **kwargs) -> SlowFast:
    model = SlowFast(num_classes=num_classes, **kwargs)
    num_frames = num_frames or contract.num_frames
    if num_frames % model.alpha:
        raise ValueError(f"SlowFast needs num_frames divisible by alpha={model.alpha}, got {num_frames}")
    mode = sts_mode(sts)
    if mode:  # both pathways' temporal convs (the authors' reshape_t), not the lateral connections
        convert_to_sts(*model.res_stages(), mode=mode)
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


# ------------------------------------------------------------------ mmaction files (the STS paper's)
# Recognised by models/sts_files.py's `mmaction_resnet3d`, which hands `backbone.slow_path.*` files here.

_MMACTION_SLOWFAST = {"4x16": ("slowfast_50_4x16", 5), "8x8": ("slowfast_50_8x8", 7)}  # fusion kernels


def _mmaction_slowfast_key(key: str) -> str:
    """`backbone.{slow,fast}_path.*` / `cls_head.fc_cls.*` -> this SlowFast's key."""
    if key.startswith("cls_head.fc_cls."):
        return "fc." + key[len("cls_head.fc_cls."):]
    path, rest = key[len("backbone."):].split(".", 1)
    lateral = re.match(r"(conv1|layer(\d))_lateral\.conv\.(.*)", rest)
    if lateral:  # laterals feed the slow stage after the stem (conv1) or after stage N
        return f"fusions.{int(lateral[2] or 0)}.conv.{lateral[3]}"
    new = mmaction_pathway_key(rest, factorized_stem=False)
    side = path.split("_")[0]
    if new.startswith("stem."):
        return f"{side}_stem.{new[len('stem.'):]}"
    stage = re.match(r"layer(\d)\.(.*)", new)
    return f"{side}_layers.{int(stage[1]) - 1}.{stage[2]}" if stage else new


def mmaction_slowfast(sd: dict, meta: dict) -> tuple[str, dict, dict]:
    """(registered name, arguments, state dict) of an mmaction ResNet3dSlowFast + SlowFastHead file.
    alpha is not in the weights: the experiment name's 4x16 / 8x8 says it, else the fusion kernel
    (5 and 7 in the configs of both)."""
    kernel = sd["backbone.slow_path.conv1_lateral.conv.weight"].shape[2]
    exp = str(meta.get("exp_name") or meta.get("config_name") or "")
    tag = next((t for t in _MMACTION_SLOWFAST if t in exp), None)
    tag = tag or next((t for t, (_, k) in _MMACTION_SLOWFAST.items() if k == kernel), None)
    layers = mmaction_layers(sd, "backbone.slow_path.")
    slow_width, fast_width = (sd[f"backbone.{p}.conv1.conv.weight"].shape[0] for p in ("slow_path", "fast_path"))
    fast_ratio = slow_width // fast_width
    if tag is None or _MMACTION_SLOWFAST[tag][1] != kernel or layers != (3, 4, 6, 3) or fast_ratio != 8:
        raise CheckpointError(f"mmaction SlowFast ({exp or 'no experiment name'}: fusion kernel {kernel}, slow "
                              f"blocks {layers}, beta 1/{fast_ratio}) is not SlowFast-50 4x16 or 8x8")
    args = dict(lateral_norm=False, feature_order="fast_slow")
    return _MMACTION_SLOWFAST[tag][0], args, {_mmaction_slowfast_key(k): v for k, v in sd.items()}
