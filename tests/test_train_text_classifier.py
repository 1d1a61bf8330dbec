"""A text classifier over the dataset's class names (ILA's K400 head): `model_args: {class_names: dataset}` takes
them from the training split, and the checkpoint rebuilds the same head from the names it records."""
from __future__ import annotations

import pytest
import torch

from models import from_checkpoint
from train.config import ConfigError, TrainConfig, apply
from train.engine import Trainer
from train.setup import Dist, build_model

CPU = Dist(0, 1, 0, torch.device("cpu"))
ARGS = {"arch": "k400", "class_names": "dataset"}


def _config(data, output, **overrides) -> TrainConfig:
    base = dict(model="ila_tiny", batch_size=2, py_workers=1, threads=1, amp="none", progress=False, epochs=1,
                eval_every=0, seed=0, name="run", max_steps=1, model_args=ARGS)
    return apply(TrainConfig(), {**base, "data": str(data), "output": str(output), **overrides}, "test")


def test_the_class_names_come_from_the_training_split_and_travel_with_the_checkpoint(data, tmp_path):
    trainer = Trainer(_config(data, tmp_path), CPU)
    try:
        assert trainer.model.class_names == list(trainer.classes) and len(trainer.classes) > 1
        trainer.fit()
    finally:
        trainer.train_loader.close()
    model = from_checkpoint(tmp_path / "run" / "last.pt")
    assert model.class_names == list(trainer.classes)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_a_split_without_names_is_one_line(data, tmp_path):
    with pytest.raises(ConfigError, match="class_names: dataset, but the dataset has no class names"):
        build_model(_config(data, tmp_path), 4, CPU, classes=())
