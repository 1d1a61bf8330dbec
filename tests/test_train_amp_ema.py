"""The training loop's fp16 path (autocast + GradScaler) and its EMA path, on the CPU with in-process Trainers.

Each test trains tsn_tiny for a few optimizer steps on a tiny synthetic set: a second or two apiece.
"""
from __future__ import annotations

import math
import shutil

import pytest
import torch

import train.engine
from eval.metrics import accuracy_report
from train.config import TrainConfig, apply
from train.engine import Trainer
from train.setup import Dist


CPU = Dist(0, 1, 0, torch.device("cpu"))
INIT_SCALE = torch.amp.GradScaler("cpu").get_scale()  # torch's default starting loss scale


def _config(data, output, **overrides) -> TrainConfig:
    values = dict(model="tsn_tiny", data=str(data), output=str(output), name="run", batch_size=4, py_workers=1,
                  threads=1, amp="none", progress=False, optimizer="adamw", lr=0.002, epochs=1, max_steps=3,
                  eval_every=0, seed=0)
    return apply(TrainConfig(), {**values, **overrides}, "test")


@pytest.fixture(scope="module")
def plain_run(data, tmp_path_factory):
    """last.pt of a run without fp16 and without EMA (2 steps), for the tests that resume from one."""
    out = tmp_path_factory.mktemp("plain")
    t = Trainer(_config(data, out, max_steps=2), CPU)
    t.fit()
    t.train_loader.close()
    return out / "run" / "last.pt"


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _floats(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}


def _assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _states_differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def _spy_optimizer_steps(trainer: Trainer) -> list[int]:
    """Records the trainer's step count each time the optimizer really steps (GradScaler skips inf/nan steps)."""
    applied, step = [], trainer.optimizer.step

    def spied(*args, **kwargs):
        applied.append(trainer.step)
        return step(*args, **kwargs)

    trainer.optimizer.step = spied
    return applied


# ---------------------------------------------------------------------------------------------- fp16


def test_fp16_trains_under_autocast_with_an_active_grad_scaler(data, tmp_path, make_trainer):
    t = make_trainer(_config(data, tmp_path, amp="fp16"))
    assert t.scaler.is_enabled()
    out_dtypes = []
    t.model.register_forward_hook(lambda module, args, out: out_dtypes.append(out.dtype))
    applied = _spy_optimizer_steps(t)
    before = _floats(t.model.state_dict())
    row = t.fit()

    assert t.step == 3 and out_dtypes == [torch.float16] * 3  # the forward ran under fp16 autocast
    assert math.isfinite(row["train_loss"])
    # GradScaler's bookkeeping: each skipped (overflowing) step halves the scale and restarts the growth count
    skipped = [s for s in range(3) if s not in applied]
    assert applied, "every fp16 step overflowed: nothing was trained"
    state = t.scaler.state_dict()
    assert state["scale"] == INIT_SCALE * 0.5 ** len(skipped)
    assert state["_growth_tracker"] == 3 - (skipped[-1] + 1 if skipped else 0)
    assert _states_differ(before, t.model.state_dict())


def test_fp16_clips_the_unscaled_gradients(data, tmp_path, make_trainer):
    """With clipping the scaler must unscale first: the optimizer then sees gradients of norm clip_grad
    (clipping the scaled ones would leave them clip_grad / scale after GradScaler's own unscale)."""
    clip = 1e-3
    t = make_trainer(_config(data, tmp_path, amp="fp16", clip_grad=clip, grad_accum=2, max_steps=2))
    norms, step = [], t.optimizer.step

    def spied(*args, **kwargs):
        grads = [p.grad for p in t.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(*args, **kwargs)

    t.optimizer.step = spied
    t.fit()
    assert t.step == 2 and norms
    for norm in norms:
        assert norm == pytest.approx(clip, rel=1e-3)


def test_fp16_scaler_state_is_checkpointed_and_resumed(data, tmp_path, make_trainer):
    cfg = _config(data, tmp_path, amp="fp16")
    t = make_trainer(cfg)
    t.fit()
    saved = _load(tmp_path / "run" / "last.pt")["scaler"]
    assert saved == t.scaler.state_dict()
    fresh = make_trainer(_config(data, tmp_path / "fresh", amp="fp16")).scaler.state_dict()
    assert saved != fresh  # the run moved the scale or its growth count, so a restore is observable
    resumed = make_trainer(cfg)
    resumed.resume()
    assert resumed.step == 3 and resumed.scaler.is_enabled()
    assert resumed.scaler.state_dict() == saved


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_grad_scaler_is_off_without_fp16(data, tmp_path, make_trainer, amp):
    t = make_trainer(_config(data, tmp_path, amp=amp))
    assert not t.scaler.is_enabled()
    assert t.state()["scaler"] == {}


def test_fp16_resumes_a_run_saved_without_fp16(data, tmp_path, make_trainer, plain_run):
    (tmp_path / "run").mkdir()
    shutil.copy(plain_run, tmp_path / "run" / "last.pt")
    t = make_trainer(_config(data, tmp_path, amp="fp16", max_steps=3))
    t.resume()
    assert t.step == 2 and t.scaler.is_enabled() and t.scaler.get_scale() == INIT_SCALE


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_follows_the_model_ema_v3_update_after_each_step(data, tmp_path, make_trainer):
    """timm's ModelEmaV3, given the step: the first update copies the model (decay 0 at step 1), later ones
    are ema <- decay * ema + (1 - decay) * model, on every float entry of the state dict (BN stats included)."""
    decay = 0.5  # far from 1 so one update moves the EMA visibly
    t = make_trainer(_config(data, tmp_path, ema=True, ema_decay=decay))
    assert t.ema.decay == decay and t.ema.module is not t.model
    checked, optimizer_step = [], t._optimizer_step

    def spied():
        ema_before = _floats(t.ema.module.state_dict())
        optimizer_step()
        model, ema = t.model.state_dict(), t.ema.module.state_dict()
        d = 0.0 if t.step == 1 else decay
        for k, old in ema_before.items():
            torch.testing.assert_close(ema[k], d * old + (1 - d) * model[k], msg=f"step {t.step}: {k}")
        for k, v in ema.items():
            if not v.is_floating_point():  # counters (num_batches_tracked) are copied
                assert torch.equal(v, model[k]), k
        checked.append(t.step)

    t._optimizer_step = spied
    t.fit()
    assert checked == [1, 2, 3]
    assert _states_differ(t.model.state_dict(), t.ema.module.state_dict())


def test_validation_scores_the_ema_model(data, tmp_path, make_trainer, monkeypatch):
    t = make_trainer(_config(data, tmp_path, ema=True, ema_decay=0.5, max_steps=2))
    t.fit()
    seen, score_videos = [], train.engine.score_videos

    def spy(model, *args, **kwargs):
        result = score_videos(model, *args, **kwargs)
        seen.append((model, result.scores))
        return result

    monkeypatch.setattr(train.engine, "score_videos", spy)
    row = t.validate()
    assert len(seen) == 1 and seen[0][0] is t.ema.module
    scores = seen[0][1]
    labels = torch.tensor([r["label"] for r in t.val_records])
    report = accuracy_report(scores, labels, t.classes)
    assert row == {"val_top1": report["top1"], "val_top5": report["top5"],
                   "val_mean_class_acc": report["mean_class_acc"], "val_videos": len(labels), "val_damaged": 0}
    # the trained model itself scores the videos differently, so scoring it by mistake would show
    raw = score_videos(t.model, t.val_loader, len(t.val_records), t.num_classes, t.d.device, t.cfg.amp).scores
    assert not torch.allclose(raw, scores)


def test_ema_weights_are_checkpointed_and_resumed(data, tmp_path, make_trainer):
    cfg = _config(data, tmp_path, ema=True, ema_decay=0.5, max_steps=2)
    t = make_trainer(cfg)
    t.fit()
    saved = _load(tmp_path / "run" / "last.pt")
    _assert_states_equal(saved["ema"], t.ema.module.state_dict())
    assert _states_differ(saved["ema"], saved["model"])
    resumed = make_trainer(cfg)
    assert _states_differ(resumed.ema.module.state_dict(), saved["ema"])  # a fresh EMA starts elsewhere
    resumed.resume()
    _assert_states_equal(resumed.ema.module.state_dict(), saved["ema"])
    _assert_states_equal(resumed.model.state_dict(), saved["model"])


def test_ema_turned_on_at_resume_starts_from_the_loaded_weights(data, tmp_path, make_trainer, plain_run):
    (tmp_path / "run").mkdir()
    shutil.copy(plain_run, tmp_path / "run" / "last.pt")
    t = make_trainer(_config(data, tmp_path, ema=True, max_steps=3))
    t.resume()
    assert t.step == 2
    _assert_states_equal(t.ema.module.state_dict(), t.model.state_dict())
