"""Layer-wise lr decay of the video transformers: each video-specific parameter's learning-rate scale.

timm's `param_groups_layer_decay` puts a parameter that no pattern of the model's `group_matcher` matches in
the last group (the head's rate). The video models' own embeddings (AIM's temporal embedding, SIFAR's frame
embedding) belong with the patch embedding they are added to, the modules inside a block (AIM's adapters,
ILA's alignment and its skips) with that block, and ILA's frame-integration transformer after the blocks
with the head. Checked through the trainer's own `build_optimizer`, frozen backbone (the papers' recipes)
and fully trained alike.
"""
from __future__ import annotations

import re

import pytest
import torch

import models
from train.config import TrainConfig, apply, check
from train.setup import Dist, build_optimizer

CPU = Dist(0, 1, 0, torch.device("cpu"))
LR, DECAY = 1e-3, 0.5


def _scales(name: str, **model_args) -> tuple[torch.nn.Module, dict[str, float]]:
    """The tiny model and each trainable parameter's lr / LR under layer_decay DECAY."""
    cfg = apply(TrainConfig(), dict(model=name, data="unused", optimizer="adamw", lr=LR, weight_decay=0.05,
                                    layer_decay=DECAY), "test")
    check(cfg)
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=5, **model_args)
    optimizer = build_optimizer(cfg, model, CPU)
    by_id = {id(p): g["lr"] / LR for g in optimizer.param_groups for p in g["params"]}
    return model, {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def _block_scale(depth: int, i: int) -> float:
    """Block i of `depth` (timm's ViT layers: stem 0, blocks 1..depth with the final norm in the last, head
    depth + 1)."""
    return DECAY ** (depth - i)


def _assert_blocks(scales: dict, pattern: str, depth: int) -> int:
    """Every parameter matching `pattern` (group 1: its block index) at its block's scale; how many there are."""
    found = 0
    for name, scale in scales.items():
        m = re.match(pattern, name)
        if m:
            found += 1
            assert scale == pytest.approx(_block_scale(depth, int(m.group(1)))), name
    return found


@pytest.mark.parametrize("freeze", [True, False])
def test_aim_temporal_embedding_with_the_stem_and_adapters_with_their_block(freeze):
    model, scales = _scales("aim_tiny", freeze_backbone=freeze)
    depth = len(model.blocks)
    stem = DECAY ** (depth + 1)
    assert scales["temporal_embed"] == pytest.approx(stem)
    adapters = sum(1 for n, _ in model.blocks[0].named_parameters() if "adapter" in n)
    assert adapters and _assert_blocks(scales, r"blocks\.(\d+)\.\w+_adapter(_in)?\.", depth) == depth * adapters
    assert scales["norm.weight"] == pytest.approx(DECAY) and scales["head.weight"] == pytest.approx(1.0)
    if freeze:
        assert "pos_embed" not in scales and "blocks.0.attn.qkv.weight" not in scales  # the frozen CLIP
    else:  # the same scale as the embeddings it is added to, and as each block's own weights
        embeds = [scales[n] for n in ("pos_embed", "patch_embed.proj.weight", "cls_token", "temporal_embed")]
        assert len(set(embeds)) == 1
        assert _assert_blocks(scales, r"blocks\.(\d+)\.attn\.", depth) == 4 * depth


@pytest.mark.parametrize("freeze", [True, False])
def test_ila_alignment_with_its_block_and_the_frame_integration_with_the_head(freeze):
    model, scales = _scales("ila_tiny", freeze_backbone=freeze)
    depth = len(model.blocks)
    aligned = _assert_blocks(scales, r"blocks\.(\d+)\.(align|skip_)", depth)
    assert aligned == depth * sum(1 for n, _ in model.blocks[0].named_parameters() if n.startswith(("align", "skip_")))
    after = [n for n in scales if n.startswith(("mit.", "head."))]
    assert "mit.pos_embed" in after and all(scales[n] == pytest.approx(1.0) for n in after)  # not the stem's
    if not freeze:
        assert scales["pos_embed"] == scales["patch_embed.proj.weight"] == pytest.approx(DECAY ** (depth + 1))
        assert scales["proj.weight"] == pytest.approx(1.0)  # CLIP's projection: after the blocks too


def test_sifar_frame_embedding_with_the_patch_embedding():
    model, scales = _scales("sifar_tiny")
    assert model.frame_pos_embed is not None
    assert scales["frame_pos_embed"] == scales["patch_embed.proj.weight"] < scales["layers.0.blocks.0.attn.qkv.weight"]
    assert scales["head.fc.weight"] == pytest.approx(1.0)


def test_group_matchers_leave_nothing_trainable_in_the_head_group_but_the_head_and_what_follows_the_blocks():
    """Any parameter added later without a place in the matcher shows up here (it would train at the head's rate)."""
    after_blocks = {"sifar_tiny": r"head\.", "aim_tiny": r"head\.", "ila_tiny": r"head\.|mit\.|proj\."}
    for name, allowed in after_blocks.items():
        _, scales = _scales(name, freeze_backbone=False) if name != "sifar_tiny" else _scales(name)
        top = [n for n, s in scales.items() if s == pytest.approx(1.0)]
        assert top and all(re.match(allowed, n) for n in top), (name, top)


# ------------------------------------------------------------------ the 3D CNNs (their group_matcher)

# each parameter's exponent of DECAY (timm: layer i of L gets DECAY ** (L - 1 - i)): one layer per block (the
# tiny variants have one block per stage), the stem first, the classifier (what no pattern matches) last at 1
_CNN_EXPONENTS = {
    "i3d_tiny": {r"stem\.": 5, r"layer1\.": 4, r"layer2\.": 3, r"layer3\.": 2, r"layer4\.": 1, r"fc\.": 0},
    # a lateral goes with the stage whose output it reads; the one after the stems (fusions.0) with the stems
    "slowfast_tiny": {r"(slow|fast)_stem\.|fusions\.0\.": 5, r"(slow|fast)_layers\.0\.|fusions\.1\.": 4,
                      r"(slow|fast)_layers\.1\.|fusions\.2\.": 3, r"(slow|fast)_layers\.2\.|fusions\.3\.": 2,
                      r"(slow|fast)_layers\.3\.": 1, r"fc\.": 0},
    "x3d_tiny": {r"stem\.": 5, r"stages\.0\.": 4, r"stages\.1\.": 3, r"stages\.2\.": 2, r"stages\.3\.": 1,
                 r"head\.": 0},  # conv_5 is the head's
    # the stem's five layers, then one layer per inception block (the max-pools between them have no weights)
    "s3d_tiny": {r"features\.[0-4]\.": 10, **{rf"features\.{i}\.": 9 - j for j, i in enumerate((5, 6, 8, 9, 10, 11,
                                                                                               12, 14, 15))},
                 r"classifier\.": 0},
}


@pytest.mark.parametrize("name", sorted(_CNN_EXPONENTS))
def test_3d_cnns_decay_by_stem_stage_and_block(name):
    """layer_decay on a 3D CNN (refused before they had a group_matcher): every parameter at its block's rate."""
    _, scales = _scales(name)
    exponents = _CNN_EXPONENTS[name]
    for param, scale in scales.items():
        found = [e for pattern, e in exponents.items() if re.match(pattern, param)]
        assert len(found) == 1, (param, found)
        assert scale == pytest.approx(DECAY ** found[0]), param
    assert {e for pattern, e in exponents.items() for p in scales if re.match(pattern, p)} == set(exponents.values())
