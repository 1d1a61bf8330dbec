"""The papers' optimiser options: per-pattern weight decay, decayed norms and biases, Adam betas, the binary
cross-entropy loss, per-epoch schedules and mmcv's warmup_ratio. Each is checked by its effect on the optimizer's
groups, the loss value or the rates the schedule sets, against the formula of the source project."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy

import models
from train.config import ConfigError, TrainConfig, apply, check, config_changes, load_config
from train.engine import Trainer
from train.setup import Dist, build_loss, build_mixup, build_optimizer, build_scheduler, mix_clips, schedule_to

CPU = Dist(0, 1, 0, torch.device("cpu"))


def _cfg(**values) -> TrainConfig:
    cfg = apply(TrainConfig(), {"model": "tsn_tiny", "data": "unused", **values}, "test")
    check(cfg)
    return cfg


def _by_name(model, optimizer, field: str) -> dict:
    by_id = {id(p): g[field] for g in optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


# ------------------------------------------------------------------------------ weight decay


def test_weight_decay_mult_scales_the_matching_parameters_and_a_step_applies_it():
    cfg = _cfg(lr=0.5, momentum=0.0, nesterov=False, weight_decay=0.01, lr_mult={"fc.*": 10},
               weight_decay_mult=[["fc.weight", 0], ["layer1.*", 0.1]])
    model = models.create_model("tsn_tiny", num_classes=5)
    opt = build_optimizer(cfg, model, CPU)
    wd, lrs = _by_name(model, opt, "weight_decay"), _by_name(model, opt, "lr")
    assert wd["fc.weight"] == 0 and wd["layer1.0.conv1.weight"] == pytest.approx(1e-3)
    assert wd["conv1.0.weight"] == 0.01
    assert wd["layer1.0.bn1.weight"] == wd["fc.bias"] == 0  # what gets no decay keeps none
    assert lrs["fc.weight"] == pytest.approx(5.0) and lrs["layer1.0.conv1.weight"] == pytest.approx(0.5)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # plain SGD on zero gradients: p -= lr x decay x p, nothing else
    params = dict(model.named_parameters())
    for name in ("fc.weight", "layer1.0.conv1.weight", "conv1.0.weight"):
        expected = before[name] * (1 - lrs[name] * wd[name])
        torch.testing.assert_close(params[name].detach(), expected)
    assert torch.equal(params["fc.weight"], before["fc.weight"])


def test_weight_decay_mult_refuses_unmatched_patterns_and_negative_mults():
    model = models.create_model("tsn_tiny", num_classes=5)
    with pytest.raises(ConfigError, match="'weight_decay_mult'.*head"):
        build_optimizer(_cfg(weight_decay_mult={"head.*": 0.5}), model, CPU)
    for bad in ({"fc.*": -1}, [["fc.*"]]):
        with pytest.raises(ConfigError, match="weight_decay_mult"):
            _cfg(weight_decay_mult=bad)
    with pytest.raises(ConfigError, match="lr_mult"):  # a zero learning rate stays refused: that is freezing
        _cfg(lr_mult={"fc.*": 0})


def test_decay_norm_bias_decays_norms_and_biases_but_not_the_models_exemptions():
    model = models.create_model("tsn_tiny", num_classes=5)
    wd = _by_name(model, build_optimizer(_cfg(decay_norm_bias=True), model, CPU), "weight_decay")
    assert set(wd.values()) == {5e-4}  # torch.optim's default: every parameter
    swin = models.create_model("sifar_tiny", num_classes=5)
    assert "frame_pos_embed" in swin.no_weight_decay()
    for extra in ({}, {"layer_decay": 0.75}):  # timm's two group helpers alike
        on, off = (_by_name(swin, build_optimizer(_cfg(model="sifar_tiny", optimizer="adamw", weight_decay=0.05,
                                                       decay_norm_bias=flag, **extra), swin, CPU), "weight_decay")
                   for flag in (True, False))
        assert on["norm.weight"] == on["layers.0.blocks.0.attn.qkv.bias"] == on["head.fc.bias"] == 0.05, extra
        assert on["frame_pos_embed"] == 0, extra
        assert off["norm.weight"] == off["head.fc.bias"] == 0 and off["head.fc.weight"] == 0.05, extra


# ------------------------------------------------------------------------------------ betas


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_betas_reach_every_group(optimizer):
    model = models.create_model("tsn_tiny", num_classes=5)
    opt = build_optimizer(_cfg(optimizer=optimizer, betas=[0.9, 0.98]), model, CPU)
    assert {tuple(g["betas"]) for g in opt.param_groups} == {(0.9, 0.98)}
    default = build_optimizer(_cfg(optimizer=optimizer), model, CPU)
    assert {tuple(g["betas"]) for g in default.param_groups} == {(0.9, 0.999)}


# -------------------------------------------------------------------------------------- loss


def test_bce_loss_on_mixed_targets_is_timms_binary_cross_entropy():
    cfg = _cfg(loss="bce", mixup=0.8, cutmix=1.0, num_classes=5)
    mixup = build_mixup(cfg, 5)
    np.random.seed(0)  # timm's Mixup draws with numpy
    torch.manual_seed(0)
    clips, labels = torch.randn(4, 3, 2, 8, 8), torch.tensor([0, 1, 2, 3])
    _, targets = mix_clips(mixup, clips, labels)
    assert targets.shape == (4, 5) and ((targets > 0) & (targets < 1)).any()  # soft, mixed targets
    logits = torch.randn(4, 5)
    loss = build_loss(cfg, mixup)(logits, targets)
    assert float(loss) == pytest.approx(float(BinaryCrossEntropy()(logits, targets)))
    assert float(loss) == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, targets)))
    ce = build_loss(_cfg(mixup=0.8, cutmix=1.0), mixup)(logits, targets)
    assert float(ce) != pytest.approx(float(loss))


def test_bce_loss_without_mixup_smooths_one_hot_targets_as_timm():
    cfg = _cfg(loss="bce", label_smoothing=0.1)
    logits, labels = torch.randn(3, 4), torch.tensor([0, 3, 1])
    off = 0.1 / 4  # timm's BinaryCrossEntropy: off = s / C, on = 1 - s + off
    targets = torch.full((3, 4), off).scatter_(1, labels[:, None], 1 - 0.1 + off)
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert float(build_loss(cfg, None)(logits, labels)) == pytest.approx(float(expected))


# -------------------------------------------------------------------------------- schedules


def _rates(cfg, steps_per_epoch: int, world: int = 1) -> tuple[torch.optim.Optimizer, list[float]]:
    """The rate of each optimizer step as the training loop sets it (schedule_to after every step)."""
    model = models.create_model("tsn_tiny", num_classes=5)
    opt = build_optimizer(cfg, model, Dist(0, world, 0, torch.device("cpu")))
    sched = build_scheduler(cfg, opt, steps_per_epoch)
    base = next(g for g in opt.param_groups if g.get("lr_scale", 1.0) == 1.0)
    rates = []
    for step in range(cfg.epochs * steps_per_epoch):
        schedule_to(sched, step, steps_per_epoch)
        rates.append(base["lr"])
    return opt, rates


def test_sched_per_epoch_holds_each_epochs_rate_as_torchs_epoch_cosine():
    """IBM's train.py: CosineAnnealingLR(T_max=epochs, eta_min=0), scheduler.step() after each epoch."""
    cfg = _cfg(lr=0.1, epochs=4, sched="cosine", sched_per_epoch=True, min_lr=0.0)
    _, rates = _rates(cfg, steps_per_epoch=5)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=4, eta_min=0)
    for epoch in range(4):
        within = rates[epoch * 5:(epoch + 1) * 5]
        assert within == [within[0]] * 5, epoch
        assert within[0] == pytest.approx(ref_opt.param_groups[0]["lr"]), epoch
        ref_opt.step()
        ref.step()
    _, per_step = _rates(_cfg(lr=0.1, epochs=4, sched="cosine", min_lr=0.0), steps_per_epoch=5)
    assert per_step[1] < per_step[0]  # the default moves every step


def test_sched_per_epoch_warmup_and_multistep_count_epochs():
    cfg = _cfg(lr=0.1, epochs=5, sched="multistep", lr_steps=[2, 4], sched_per_epoch=True, warmup_epochs=1,
               warmup_lr=0.001)
    _, rates = _rates(cfg, steps_per_epoch=3)
    assert rates[::3] == pytest.approx([0.001, 0.1, 0.01, 0.01, 0.001])
    assert all(rates[i] == rates[i - i % 3] for i in range(len(rates)))


def test_warmup_ratio_starts_at_that_share_of_the_scaled_lr_as_mmcv():
    """mmcv's linear warmup: regular_lr x (1 - (1 - i / warmup_iters) x (1 - warmup_ratio))."""
    cfg = _cfg(lr=0.1, lr_base_batch=8, batch_size=8, epochs=4, sched="step", decay_epochs=10, warmup_epochs=2,
               warmup_ratio=0.1, lr_mult={"fc.*": 10})
    opt, rates = _rates(cfg, steps_per_epoch=5, world=2)  # 16 clips a step: lr 0.2
    warmup = 10
    for i in range(warmup):
        assert rates[i] == pytest.approx(0.2 * (1 - (1 - i / warmup) * (1 - 0.1))), i
    assert rates[warmup:] == pytest.approx([0.2] * (len(rates) - warmup))
    head = next(g for g in opt.param_groups if g["lr_scale"] == 10)
    assert head["lr"] == pytest.approx(10 * rates[-1])


def test_a_run_with_sched_per_epoch_changes_its_rate_only_between_epochs(data, tmp_path):
    cfg = apply(TrainConfig(), dict(model="tsn_tiny", data=str(data), output=str(tmp_path), batch_size=4,
                                    py_workers=1, threads=1, amp="none", progress=False, lr=0.01, epochs=2,
                                    eval_every=0, sched_per_epoch=True), "test")
    trainer = Trainer(cfg, CPU)
    seen, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit()
    trainer.train_loader.close()
    per = trainer.steps_per_epoch
    assert len(seen) == 2 * per and seen[:per] == pytest.approx([0.01] * per)
    assert seen[per:] == pytest.approx([0.005] * per)  # cosine over 2 epochs, halfway


# ----------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("values, key", [
    (dict(betas=[0.9, 0.98]), "betas"),  # sgd
    (dict(optimizer="adamw", betas=[0.9]), "betas"),
    (dict(optimizer="adamw", betas=[1.0, 0.9]), "betas"),
    (dict(weight_decay=0.0, weight_decay_mult={"fc.*": 2}), "weight_decay_mult"),
    (dict(weight_decay=0.0, decay_norm_bias=True), "decay_norm_bias"),
    (dict(warmup_ratio=0.1), "warmup_ratio"),
    (dict(warmup_ratio=0.1, warmup_epochs=1, warmup_lr=0.0), "warmup_ratio"),
    (dict(warmup_ratio=1.0, warmup_epochs=1), "warmup_ratio"),
    (dict(sched="none", sched_per_epoch=True), "sched_per_epoch"),
    (dict(sched_per_epoch=True, warmup_epochs=2.5), "warmup_epochs"),
    (dict(sched="multistep", lr_steps=[2.5], sched_per_epoch=True), "lr_steps"),
    (dict(sched="step", decay_epochs=1.5, sched_per_epoch=True), "decay_epochs"),
    (dict(loss="focal"), "loss"),
])
def test_option_values_that_do_nothing_or_do_not_fit_are_refused(values, key):
    with pytest.raises(ConfigError, match=key):
        _cfg(**values)


def test_options_parse_from_the_command_line():
    cfg = load_config(["--data", "d", "--optimizer", "adamw", "--betas", "[0.9, 0.98]", "--weight-decay-mult",
                       '{"fc.*": 0}', "--decay-norm-bias", "--loss", "bce", "--sched-per-epoch",
                       "--warmup-epochs", "1", "--warmup-ratio", "0.1"])
    assert (cfg.betas, cfg.weight_decay_mult, cfg.loss) == ([0.9, 0.98], [["fc.*", 0.0]], "bce")
    assert cfg.decay_norm_bias and cfg.sched_per_epoch and cfg.warmup_ratio == 0.1


NEW = dict(optimizer="adamw", betas=[0.9, 0.98], weight_decay_mult={"fc.*": 0.5}, decay_norm_bias=True, loss="bce",
           sched_per_epoch=True, warmup_epochs=1, warmup_ratio=0.1)


@pytest.mark.parametrize("key", ["betas", "weight_decay_mult", "decay_norm_bias", "loss", "sched_per_epoch",
                                 "warmup_ratio"])
def test_resuming_with_a_changed_option_is_refused_and_older_checkpoints_match_the_defaults(key):
    base = _cfg(optimizer="adamw", warmup_epochs=1)
    changed = _cfg(**{"optimizer": "adamw", "warmup_epochs": 1, key: NEW[key]})
    safe, unsafe = config_changes(base.to_dict(), changed)
    assert not safe and [t.split(":")[0] for t in unsafe] == [key]
    older = {k: v for k, v in base.to_dict().items() if k not in NEW or k in ("optimizer", "warmup_epochs")}
    assert config_changes(older, base) == ([], [])
