"""A training run resumes through the model's `upgrade_state_dict`, as eval loads (models.weights.current_names):
a Kinetics-400 ILA run whose checkpoint was written before the text classifier moved under `head.` resumes."""
from __future__ import annotations

import torch

from train import checkpoint as ckpt
from train.config import TrainConfig, apply
from train.engine import Trainer
from train.setup import Dist

CPU = Dist(0, 1, 0, torch.device("cpu"))


def _config(data, output, **overrides) -> TrainConfig:
    base = dict(model="ila_tiny", batch_size=2, py_workers=1, threads=1, amp="none", progress=False, epochs=1,
                eval_every=0, seed=0, name="run", ema=True, model_args={"arch": "k400", "class_names": "dataset"})
    return apply(TrainConfig(), {**base, "data": str(data), "output": str(output), **overrides}, "test")


def _old_names(weights: dict) -> dict:
    """The names a k400 ILA checkpoint had before the classifier was a module: `text.*`, `prompt*`, `logit_scale`
    at the top level (tests/test_ila_classifier.py makes them the same way)."""
    return {(k[len("head."):] if k.startswith("head.") else k): v for k, v in weights.items()}


def _trainer(cfg) -> Trainer:
    trainer = Trainer(cfg, CPU)
    trainer.train_loader.close()  # resume() reads no data
    return trainer


def test_a_k400_ila_run_checkpointed_under_the_old_names_resumes(data, tmp_path):
    """Old code: Trainer.resume loaded the weights as they were: RuntimeError, missing `head.text.*` keys."""
    first = _trainer(_config(data, tmp_path))
    first.step, first.progress.batches = 1, 2
    first.ema.module.head.logit_scale.data += 1.0  # the EMA's weights differ from the model's: each is loaded
    first.save()
    first.writer.close()
    last = tmp_path / "run" / ckpt.LAST
    state = ckpt.load(str(last))
    assert any(k.startswith("head.text.") for k in state["model"])
    old = dict(state, model=_old_names(state["model"]), ema=_old_names(state["ema"]))
    assert not any(k.startswith("head.") for k in old["model"]) and "logit_scale" in old["ema"]
    ckpt.save_atomic(old, str(last))  # with its checksum: an intact checkpoint of an older version

    resumed = _trainer(_config(data, tmp_path, resume=str(last)))
    try:
        resumed.resume()
        assert (resumed.step, resumed.progress.batches) == (1, 2)
        for name, weights in (("model", resumed.model), ("ema", resumed.ema.module)):
            loaded = weights.state_dict()
            assert loaded.keys() == state[name].keys()
            for key, value in state[name].items():
                assert torch.equal(loaded[key], value), (name, key)
    finally:
        resumed.writer.close()
