"""The papers' recipe options: per-parameter lr multipliers, layer-wise lr decay, the multistep schedule and
Nesterov, top-k / every-N checkpoints and their averaging, and the model-side switches of models.tuning."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import models
from eval.__main__ import main as eval_main
from train import checkpoint as ckpt
from train.__main__ import main as train_main
from train.config import ConfigError, TrainConfig, apply, check
from train.engine import Trainer
from train.setup import Dist, build_model, build_optimizer, build_scheduler

CPU = Dist(0, 1, 0, torch.device("cpu"))


def _cfg(text: bool = False, **values) -> TrainConfig:
    cfg = apply(TrainConfig(), {"model": "tsn_tiny", "data": "unused", **values}, "test", text=text)
    check(cfg)
    return cfg


def _lrs(model, optimizer) -> dict[str, float]:
    """Each parameter name's current learning rate."""
    by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def _decays(model, optimizer) -> dict[str, float]:
    by_id = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


# ----------------------------------------------------------------------------- lr_mult, layer_decay


@pytest.mark.parametrize("form", [{"fc.*": 10}, [["fc.*", 10]], '{"fc.*": 10}'])
def test_lr_mult_puts_the_head_at_10x_and_the_schedule_keeps_it(form):
    # the string is the command line's form (a YAML file's string is refused: tests/test_config_types.py)
    cfg = _cfg(text=isinstance(form, str), lr=0.1, lr_mult=form, warmup_epochs=1, warmup_lr=1e-4, epochs=4)
    model = models.create_model("tsn_tiny", num_classes=5)
    opt = build_optimizer(cfg, model, CPU)
    lrs = _lrs(model, opt)
    assert lrs["fc.weight"] == lrs["fc.bias"] == pytest.approx(1.0) and lrs["conv1.0.weight"] == pytest.approx(0.1)
    wd = _decays(model, opt)  # the exclusions survive the split: biases and norms undecayed, head weight decayed
    assert wd["fc.weight"] == wd["conv1.0.weight"] == 5e-4 and wd["fc.bias"] == wd["bn1.weight"] == 0
    sched = build_scheduler(cfg, opt, steps_per_epoch=5)
    for step in (0, 2, 5, 11, 19):
        sched.step_update(step)
        lrs = _lrs(model, opt)
        assert lrs["fc.weight"] == pytest.approx(10 * lrs["layer1.0.conv1.weight"]), step
    assert lrs["conv1.0.weight"] < 0.1  # the schedule did move


def test_lr_mult_first_matching_pattern_wins_and_unmatched_patterns_are_refused():
    model = models.create_model("tsn_tiny", num_classes=5)
    lrs = _lrs(model, build_optimizer(_cfg(lr=0.1, lr_mult=[["fc.bias", 2], ["fc.*", 10]]), model, CPU))
    assert (lrs["fc.bias"], lrs["fc.weight"]) == (pytest.approx(0.2), pytest.approx(1.0))
    with pytest.raises(ConfigError, match="'lr_mult'.*head"):
        build_optimizer(_cfg(lr_mult={"head.*": 10}), model, CPU)
    for bad in ({"fc.*": 0}, [["fc.*"]], "fc.*"):
        with pytest.raises(ConfigError, match="lr_mult"):
            _cfg(lr_mult=bad)


def test_layer_decay_scales_swin_stages_from_the_head_down():
    cfg = _cfg(model="sifar_tiny", optimizer="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5,
               lr_mult={"head.*": 10})
    model = models.create_model("sifar_tiny", num_classes=5)
    opt = build_optimizer(cfg, model, CPU)
    lrs = _lrs(model, opt)
    assert lrs["head.fc.weight"] == pytest.approx(1e-2)  # the last layer: scale 1, times its multiplier
    stages = [lrs[f"layers.{i}.blocks.0.attn.qkv.weight"] for i in range(len(model.layers))]
    chain = [lrs["patch_embed.proj.weight"], *stages, lrs["norm.weight"]]
    assert all(a < b for a, b in zip(chain, chain[1:])), chain
    for a, b in zip(chain, chain[1:]):  # each a whole power of the decay below the next
        assert math.log(b / a, 2) == pytest.approx(round(math.log(b / a, 2)))
    wd = _decays(model, opt)
    assert wd["layers.0.blocks.0.attn.qkv.weight"] == 0.05
    assert wd["layers.0.blocks.0.attn.qkv.bias"] == wd["norm.weight"] == wd["frame_pos_embed"] == 0
    sched = build_scheduler(cfg, opt, steps_per_epoch=4)
    sched.step_update(50)
    later = _lrs(model, opt)
    assert later["head.fc.weight"] < 1e-2
    assert later["patch_embed.proj.weight"] / later["head.fc.weight"] == pytest.approx(chain[0] / 1e-2)


def test_layer_decay_refused_for_a_model_without_blocks_to_group():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5))  # every registered family has a group_matcher now
    with pytest.raises(ConfigError, match="layer_decay.*no group_matcher"):
        build_optimizer(_cfg(model="i3d_tiny", layer_decay=0.7), model, CPU)


# ------------------------------------------------------------------------------ multistep, nesterov


def test_multistep_decays_at_the_listed_epochs_after_warmup():
    cfg = _cfg(lr=0.1, sched="multistep", lr_steps=[2, 3.5], decay_rate=0.1, epochs=5, warmup_epochs=1,
               warmup_lr=0.0)
    model = models.create_model("tsn_tiny", num_classes=5)
    opt = build_optimizer(cfg, model, CPU)
    sched = build_scheduler(cfg, opt, steps_per_epoch=4)
    expected = {0: 0.0, 2: 0.05, 4: 0.1, 7: 0.1, 8: 0.01, 13: 0.01, 14: 0.001, 19: 0.001}
    for step, lr in expected.items():  # step 8 opens epoch 2, step 14 is epoch 3.5
        sched.step_update(step)
        assert opt.param_groups[0]["lr"] == pytest.approx(lr, abs=1e-12), step


@pytest.mark.parametrize("nesterov", [True, False])
def test_nesterov_reaches_the_optimizer(nesterov):
    model = models.create_model("tsn_tiny", num_classes=5)
    opt = build_optimizer(_cfg(nesterov=nesterov), model, CPU)
    assert isinstance(opt, torch.optim.SGD) and all(g["nesterov"] is nesterov for g in opt.param_groups)


@pytest.mark.parametrize("values, key", [
    (dict(sched="multistep"), "lr_steps"),
    (dict(sched="cosine", lr_steps=[5]), "lr_steps"),
    (dict(sched="multistep", lr_steps=[10, 5]), "lr_steps"),
    (dict(sched="multistep", lr_steps=[30], epochs=30), "lr_steps"),
    (dict(momentum=0.0), "nesterov"),
    (dict(keep_best=2, eval_every=0), "keep_best"),
    (dict(norm_eval=True, frozen_bn=True), "norm_eval"),
])
def test_recipe_keys_that_do_not_fit_together_are_refused(values, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(**values)


# ------------------------------------------------------------------------ kept checkpoints, average


@pytest.fixture(scope="module")
def kept_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("kept")
    cfg = apply(TrainConfig(), dict(model="tsn_tiny", data=str(data), output=str(out), name="run", batch_size=4,
                                    py_workers=1, threads=1, amp="none", progress=False, optimizer="adamw",
                                    lr=0.01, epochs=4, eval_every=1, keep_best=2, save_every=2, seed=1), "test")
    trainer = Trainer(cfg, CPU)
    trainer.fit()
    for loader in (trainer.train_loader, trainer.val_loader):
        loader.close()
    return out / "run"


def test_keep_best_keeps_the_two_best_epochs_and_save_every_every_second(kept_run):
    rows = [json.loads(line) for line in Path(kept_run / "metrics.jsonl").read_text().splitlines()]
    ranked = sorted(rows, key=lambda r: (-r["val_top1"], r["epoch"]))[:2]
    expected = {ckpt.kept_name(r["epoch"], r["val_top1"]) for r in ranked}
    assert {p.name for p in kept_run.glob("best_e*.pt")} == expected
    assert {p.name for p in kept_run.glob("epoch_*.pt")} == {"epoch_0002.pt", "epoch_0004.pt"}
    for name in expected:
        assert ckpt.load(str(kept_run / name))["epoch"] in {r["epoch"] for r in ranked}


def test_average_is_the_mean_of_the_kept_weights_and_evaluates(kept_run, tmp_path, capsys):
    out = tmp_path / "avg.pt"
    assert train_main(["average", str(kept_run), "--top", "2", "--out", str(out)]) == 0
    kept = [ckpt.load(p) for _, _, p in ckpt.kept_checkpoints(str(kept_run))]
    avg = torch.load(out, map_location="cpu", weights_only=True)
    assert ckpt.load(str(out))["averaged_from"]  # checksummed like any checkpoint
    weight = "fc.weight"
    assert not torch.equal(kept[0]["model"][weight], kept[1]["model"][weight])
    for k, v in avg["model"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (kept[0]["model"][k] + kept[1]["model"][k]) / 2, rtol=1e-6, atol=1e-7)
    model = models.from_checkpoint(str(out))
    torch.testing.assert_close(model.state_dict()[weight], avg["model"][weight])
    assert eval_main(["--ckpt", str(out), "--batch-size", "4", "--py-workers", "1", "--no-progress",
                      "--out", str(tmp_path / "eval")]) == 0


def test_average_refuses_too_few_and_different_models(kept_run, tmp_path, capsys):
    assert train_main(["average", str(kept_run), "--top", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "fewer than --top 3" in err and len(err.splitlines()) == 1
    other = dict(ckpt.load(str(ckpt.kept_checkpoints(str(kept_run))[0][2])))
    other.pop(ckpt.CHECKSUM)
    ckpt.save_atomic(other, str(tmp_path / ckpt.kept_name(1, 90.0)))
    other.update(num_classes=3, model={k: v[:3] if k.startswith("fc.") else v for k, v in other["model"].items()})
    ckpt.save_atomic(other, str(tmp_path / ckpt.kept_name(2, 80.0)))
    assert train_main(["average", str(tmp_path), "--top", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be averaged" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------ models.tuning keys


def _step(model, opt) -> None:
    """One training step the way the loop takes it: model.train() first."""
    model.train()
    shape = model.input_contract.input_shape(2)
    model(torch.randn(shape)).logsumexp(1).mean().backward()
    opt.step()


def test_frozen_stages_keeps_the_stem_and_first_stage_out_of_the_optimizer():
    cfg = _cfg(frozen_stages=1)
    model = build_model(cfg, 5, CPU)
    opt = build_optimizer(cfg, model, CPU)
    names = set(_lrs(model, opt))
    assert "conv1.0.weight" not in names and not any(n.startswith("layer1.") for n in names)
    assert "layer2.0.conv1.weight" in names
    before = model.layer1[0].bn1.running_mean.clone()
    _step(model, opt)
    assert torch.equal(model.layer1[0].bn1.running_mean, before)  # frozen stages keep their statistics


@pytest.mark.parametrize("mode", ["norm_eval", "partial_bn", "frozen_bn"])
def test_batchnorm_modes_hold_through_model_train(mode):
    cfg = _cfg(**{mode: True})
    model = build_model(cfg, 5, CPU)
    opt = build_optimizer(cfg, model, CPU)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    later = model.layer2[0].downsample[1]  # not zero-initialised: it gets a gradient
    stats = [bn.running_mean.clone() for bn in (first, later)]
    affine = [bn.weight.detach().clone() for bn in (first, later)]
    _step(model, opt)
    stats_moved = [not torch.equal(bn.running_mean, s) for bn, s in zip((first, later), stats)]
    affine_moved = [not torch.equal(bn.weight, a) for bn, a in zip((first, later), affine)]
    assert stats_moved == [mode == "partial_bn", False]
    assert affine_moved == {"norm_eval": [True, True], "partial_bn": [True, False], "frozen_bn": [False, False]}[mode]


def test_grad_checkpointing_is_switched_on_and_refusals_name_their_key():
    model = build_model(_cfg(grad_checkpointing=True), 5, CPU)
    assert model.grad_checkpointing
    with pytest.raises(ConfigError, match="'norm_eval'.*no BatchNorm"):
        build_model(_cfg(model="sifar_tiny", norm_eval=True), 5, CPU)
    with pytest.raises(ConfigError, match="'frozen_stages'.*a stem and 4 stages"):
        build_model(_cfg(model="sifar_tiny", frozen_stages=5), 5, CPU)
