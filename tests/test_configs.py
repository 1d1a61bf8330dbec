"""Every recipe under configs/: it loads and validates, its model builds with its arguments (on the meta device: no
memory, no weights), its optimizer groups, schedule and loss build (every lr_mult / weight_decay_mult pattern
matches a trained parameter), its header names what it follows and how it differs, and the recipes' optimiser
settings are their sources' (learning rates, weight decays, betas, warmup start, per-epoch schedules, BCE)."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
import torch

import models
from train.config import ConfigError, load_config
from timm.loss import BinaryCrossEntropy

from train.setup import Dist, apply_tuning, build_loss, build_mixup, build_optimizer, build_scheduler, check_sampling
from train.tasks import video_loader_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def _build(path: str, world: int = 1):
    cfg = load_config(["--config", os.path.join(ROOT, path), "--data", "unused"])
    with torch.device("meta"):
        model = models.create_model(cfg.model, num_classes=10, num_frames=cfg.num_frames or None, **cfg.model_args)
    apply_tuning(cfg, model)
    return cfg, model, build_optimizer(cfg, model, Dist(0, world, 0, torch.device("cpu")))


def test_there_are_recipes():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS)
def test_recipe_loads_builds_its_model_and_its_optimizer(path):
    cfg, model, optimizer = _build(path)
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trained
    assert build_scheduler(cfg, optimizer, steps_per_epoch=10) is not None
    build_loss(cfg, build_mixup(cfg, 10))
    lines = Path(os.path.join(ROOT, path)).read_text().splitlines()
    header = " ".join(line.lstrip("#").strip() for line in lines[:next(i for i, t in enumerate(lines) if t[:1] != "#")])
    assert "Intentional differences" in header or "Not a paper recipe" in header, path


def test_ila_recipe_reproduces_the_repos_learning_rates():
    """utils/optimizer.py of the ILA repo's SSV2 branch: alignment ("message_") 5e-4, MIT (with its head) 4e-4,
    alignment skips ("temporal_") 10 x TRAIN.LR = 8e-5, at its 256 clips (8 GPUs x 8 x 4 accumulation steps)."""
    _, model, optimizer = _build("configs/ila_vit_base_patch16_ssv2.yaml", world=8)
    lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    expected = {"blocks.0.align_fc.weight": 5e-4, "blocks.11.align.interact.0.0.weight": 5e-4,
                "blocks.3.skip_aligned.weight": 8e-5, "blocks.3.skip_interact.bias": 8e-5,
                "mit.blocks.0.attn.qkv.weight": 4e-4, "mit.pos_embed": 4e-4, "head.2.weight": 4e-4}
    for name, value in expected.items():
        assert lr[id(named[name])] == pytest.approx(value), name


def _by_name(model, optimizer, field: str) -> dict:
    by_id = {id(p): g[field] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def test_ila_recipe_reproduces_the_repos_weight_decays_and_betas():
    """utils/optimizer.py: alignment 0.01, skips 0.001, MIT (with its head) TRAIN.WEIGHT_DECAY 0.003; none for
    1-D parameters, biases and (no_weight_decay_keywords) the positional embedding; AdamW betas (0.9, 0.98)."""
    _, model, optimizer = _build("configs/ila_vit_base_patch16_ssv2.yaml", world=8)
    wd = _by_name(model, optimizer, "weight_decay")
    expected = {"blocks.0.align_fc.weight": 0.01, "blocks.11.align.interact.0.0.weight": 0.01,
                "blocks.0.align_fc.bias": 0.0, "blocks.0.align_norm.weight": 0.0,
                "blocks.3.skip_aligned.weight": 0.001, "blocks.3.skip_interact.bias": 0.0,
                "mit.blocks.0.attn.qkv.weight": 0.003, "mit.blocks.0.norm1.weight": 0.0, "mit.pos_embed": 0.0,
                "head.2.weight": 0.003}
    for name, value in expected.items():
        assert wd[name] == pytest.approx(value), name
    assert {tuple(g["betas"]) for g in optimizer.param_groups} == {(0.9, 0.98)}


@pytest.mark.parametrize("path", ["configs/i3d_resnet50_ssv2.yaml", "configs/tam_resnet50_ssv2.yaml",
                                  "configs/ircsn_50_ssv2.yaml"])
def test_recipes_of_torch_sgd_and_plain_mmcv_decay_every_parameter(path):
    cfg, model, optimizer = _build(path)
    assert set(_by_name(model, optimizer, "weight_decay").values()) == {cfg.weight_decay}


def test_aim_recipe_decays_biases_and_the_temporal_embedding_but_not_the_norm():
    """Their paramwise_cfg: decay_mult 0 for ln_* and the class/position embeddings only."""
    _, model, optimizer = _build("configs/aim_vit_base_patch16_kinetics400.yaml")
    wd = _by_name(model, optimizer, "weight_decay")
    assert wd["norm.weight"] == wd["norm.bias"] == 0
    assert wd["head.bias"] == wd["blocks.0.t_adapter.fc1.bias"] == wd["temporal_embed"] == wd["head.weight"] == 0.05


@pytest.mark.parametrize("path", ["configs/aim_vit_base_patch16_kinetics400.yaml", "configs/ircsn_50_ssv2.yaml"])
def test_mmcv_recipes_warm_up_from_a_tenth_of_the_scaled_lr(path):
    cfg, _, optimizer = _build(path, world=2)  # 16 clips a step, not the recipe's 64: lr scales, so does the start
    lr = cfg.lr * 2 * cfg.batch_size / cfg.lr_base_batch
    build_scheduler(cfg, optimizer, steps_per_epoch=10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * lr] * len(optimizer.param_groups))


@pytest.mark.parametrize("path", ["configs/i3d_resnet50_ssv2.yaml", "configs/tam_resnet50_ssv2.yaml",
                                  "configs/imagenet_sts.yaml", *[c for c in CONFIGS if "sifar" in c]])
def test_recipes_of_epoch_stepped_schedules_step_per_epoch(path):
    cfg, _, optimizer = _build(path)
    assert build_scheduler(cfg, optimizer, steps_per_epoch=10).t_in_epochs


def test_sts_recipe_trains_with_binary_cross_entropy():
    cfg, _, _ = _build("configs/imagenet_sts.yaml")
    assert isinstance(build_loss(cfg, build_mixup(cfg, 10)), BinaryCrossEntropy)


@pytest.mark.parametrize("path", CONFIGS)
def test_recipe_names_its_papers_protocol_and_the_protocol_takes_it(path):
    """Every video recipe samples and validates with its source's protocol (pipelines/protocols.py), which has the
    recipe's sampling, clip count and twice option and gives clips of the model's length."""
    cfg, model, _ = _build(path)
    contract = model.input_contract.replace(sampling=cfg.sampling or model.input_contract.sampling,
                                            frame_stride=cfg.frame_stride or model.input_contract.frame_stride)
    assert (cfg.protocol != "vidkit") == (cfg.task == "video"), path
    check_sampling(cfg, contract)
    assert video_loader_options(cfg, True)["protocol"] == video_loader_options(cfg, False)["protocol"] == cfg.protocol


def test_a_protocol_without_the_recipes_option_is_refused():
    cfg = load_config(["--config", os.path.join(ROOT, "configs/i3d_resnet50_ssv2.yaml"), "--data", "unused",
                       "--eval-twice-sample"])
    with torch.device("meta"):
        model = models.create_model(cfg.model, num_classes=10, num_frames=cfg.num_frames)
    with pytest.raises(ConfigError, match="protocol.*twice"):
        check_sampling(cfg, model.input_contract.replace(sampling="tsn"))
