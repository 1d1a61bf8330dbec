"""Every recipe under configs/: it loads and validates, its model builds with its arguments (on the meta device: no
memory, no weights), its optimizer groups build (every lr_mult pattern matches a trained parameter), and its
header names what it follows and how it differs."""
from __future__ import annotations

import glob
import os

import pytest
import torch

import models
from train.config import load_config
from train.setup import Dist, apply_tuning, build_optimizer

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
    lines = open(os.path.join(ROOT, path)).read().splitlines()
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
