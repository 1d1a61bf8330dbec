"""Building the pieces of a run from its config: processes, model, optimizer, schedule, loss, mixup, EMA."""
from __future__ import annotations

import contextlib
import fnmatch
import logging
import random

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler, StepLRScheduler
from timm.utils import ModelEmaV3

import models
from models import tuning
from models.profile import has_convs, to_channels_last
from models.weights import head_keys
from pipelines import protocols
from pipelines.sampling import ClipSpec, check_groups
from prep.lists import class_order_change
from runtime.dist import Dist

from .config import ConfigError, TrainConfig
from .tasks import task_of

log = logging.getLogger("train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: TrainConfig, num_classes: int, d: Dist, classes=()) -> torch.nn.Module:
    """`classes`: the training split's class names, for `model_args: {class_names: dataset}` (a text classifier)."""
    from models.checkpoints import CheckpointError, with_class_names

    try:
        args = with_class_names(cfg.model_args, classes)
    except CheckpointError as e:
        raise ConfigError(f"config key 'model_args': {e}") from None
    try:
        model = models.create_model(cfg.model, num_classes=num_classes, num_frames=cfg.num_frames or None,
                                     pretrained=cfg.pretrained or None, **args)
    except TypeError as e:  # an argument the model's builder does not take
        raise ConfigError(f"config key 'model_args' {cfg.model_args}: {cfg.model} refuses it ({e})") from None
    _check_pretrained_classes(cfg, model, num_classes, classes, text_head="class_names" in args)
    if cfg.sampling or cfg.frame_stride:  # e.g. a dense-sampling model fine-tuned with TSN sampling on SSv2
        contract = model.input_contract
        model.input_contract = contract.replace(sampling=cfg.sampling or contract.sampling,
                                                frame_stride=cfg.frame_stride or contract.frame_stride)
    check_sampling(cfg, model.input_contract)
    if cfg.sync_bn and d.world > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    apply_tuning(cfg, model)
    model.to(d.device)
    if cfg.channels_last and d.device.type == "cuda" and has_convs(model):
        to_channels_last(model)
    return model


def _check_pretrained_classes(cfg: TrainConfig, model, num_classes: int, classes, text_head: bool) -> None:
    """A classifier fine-tuned as it was loaded (same size) must see the classes in the order it learned them;
    a new classifier (another size) or a text classifier (it embeds the names themselves) has no order to keep."""
    learned = getattr(model, "pretrained_classes", None)
    if text_head or learned is None or len(learned) != num_classes:
        return
    moved = class_order_change(list(learned)[:len(classes)], classes)
    if moved and cfg.remap_head and len(classes) == num_classes and sorted(learned) == sorted(classes):
        _reorder_classifier(model, [list(learned).index(c) for c in classes], cfg.pretrained)
        log.info("%s: classifier rows reordered to the data's classes by name (%s)", cfg.pretrained, moved)
        return
    if moved:
        raise ConfigError(f"config key 'pretrained': {cfg.pretrained} has a classifier of the same size whose "
                          f"classes differ from the data's ({moved}); prep the data again in its order "
                          "(python -m prep videos ... --classes FILE), or pass --remap-head to reorder the "
                          "classifier by class name")


def _reorder_classifier(model, order: list[int], source: str) -> None:
    """Row i of the classifier becomes row order[i]: its weight and bias, the only head tensors with one row per
    class (a head whose other layers have as many rows cannot be told apart: refused, not guessed)."""
    state = model.state_dict()
    rows = sorted(k for k in head_keys(model) if state[k].ndim and state[k].shape[0] == len(order))
    layers = {k.rpartition(".")[0] for k in rows}
    if len(layers) != 1 or not all(k.endswith((".weight", ".bias")) for k in rows):
        raise ConfigError(f"config key 'remap_head': cannot tell {model.model_name}'s classifier rows apart "
                          f"({', '.join(rows) or 'none'}); prep the data in the order of {source} instead")
    with torch.no_grad():
        for k in rows:
            state[k].copy_(state[k][order].clone())  # state_dict tensors share the parameters' storage


def check_sampling(cfg: TrainConfig, contract) -> None:
    """frames_per_group, eval_twice_sample and the protocol against the sampling the model's contract settles on."""
    if not task_of(cfg).samples_frames:
        return
    try:
        check_groups(contract.num_frames, contract.sampling, cfg.frames_per_group)
    except ValueError as e:
        raise ConfigError(f"config key 'frames_per_group': {cfg.model}: {e}") from None
    if cfg.eval_twice_sample and contract.sampling != "tsn":
        raise ConfigError(f"config key 'eval_twice_sample' (segment centres and starts) is for tsn sampling; "
                          f"{cfg.model} samples {contract.sampling} (set sampling: tsn to change it)")
    spec = ClipSpec.of(contract, cfg.frames_per_group, cfg.protocol)
    try:  # the protocol has this sampling, and its training draws and validation views are the model's length
        protocols.get(cfg.protocol).check_length(protocols.rule_of(spec, cfg.eval_clips, cfg.eval_twice_sample),
                                                 contract.num_frames)
    except protocols.ProtocolError as e:
        raise ConfigError(f"config key 'protocol': {e}") from None


def apply_tuning(cfg: TrainConfig, model: torch.nn.Module) -> None:
    """The model-side switches (models.tuning), before the optimizer sees which parameters train. Frozen
    modules keep themselves in eval mode through every later `model.train()` (a forward pre-hook)."""
    switches = [("grad_checkpointing", cfg.grad_checkpointing, tuning.set_grad_checkpointing),
                ("frozen_stages", cfg.frozen_stages >= 0, lambda m: tuning.freeze_stages(m, cfg.frozen_stages)),
                ("norm_eval", cfg.norm_eval, tuning.set_norm_eval),
                ("partial_bn", cfg.partial_bn, tuning.set_partial_bn),
                ("frozen_bn", cfg.frozen_bn, tuning.freeze_bn)]
    for key, wanted, switch in switches:
        if not wanted:
            continue
        try:
            switch(model)
        except ValueError as e:
            raise ConfigError(f"config key {key!r}: {cfg.model}: {e}") from None


def wrap_model(model: torch.nn.Module, cfg: TrainConfig, d: Dist) -> torch.nn.Module:
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    return model


def total_batch(cfg: TrainConfig, d: Dist) -> int:
    """Samples per optimizer step; repeated copies of a video (repeated_aug) are not counted apart."""
    return cfg.batch_size * d.world * cfg.grad_accum


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, d: Dist) -> torch.optim.Optimizer:
    """Only trainable parameters reach the optimizer (frozen backbones of adapter models stay out)."""
    lr = cfg.lr * total_batch(cfg, d) / cfg.lr_base_batch if cfg.lr_base_batch else cfg.lr
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model {cfg.model} has no trainable parameters")
    kwargs = {"momentum": cfg.momentum, "nesterov": cfg.nesterov} if cfg.optimizer == "sgd" else {}
    if cfg.betas:  # config.check refuses them for sgd (timm would drop them without a word)
        kwargs["betas"] = tuple(cfg.betas)
    groups = param_groups(cfg, model)
    for group in groups:  # the schedulers multiply by lr_scale from their first update; this is the rate before
        group["lr"] = lr * group.get("lr_scale", 1.0)
        group["initial_lr"] = lr  # what the schedulers scale (they read it as the group's base rate)
    return create_optimizer_v2(groups, opt=cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, **kwargs)


def param_groups(cfg: TrainConfig, model: torch.nn.Module) -> list[dict]:
    """timm's groups (trainable parameters only; norms, biases and the model's no_weight_decay() get no
    decay, the first two do with decay_norm_bias; with layer_decay, one `lr_scale` per block), each split
    further by the lr_mult and weight_decay_mult patterns."""
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    exclude_1d = not cfg.decay_norm_bias
    if cfg.layer_decay:
        if not hasattr(model, "group_matcher"):
            raise ConfigError(f"config key 'layer_decay': {cfg.model} has no blocks to decay over (no "
                              f"group_matcher describes its stages)")
        groups = param_groups_layer_decay(model, cfg.weight_decay, no_decay, layer_decay=cfg.layer_decay,
                                          weight_decay_exclude_1d=exclude_1d)
    else:
        groups = param_groups_weight_decay(model, cfg.weight_decay, weight_decay_exclude_1d=exclude_1d,
                                           no_weight_decay_list=no_decay)
    if not cfg.lr_mult and not cfg.weight_decay_mult:
        return groups
    names = {id(p): n for n, p in model.named_parameters()}
    used, out = set(), []
    for group in groups:
        by_mults: dict[tuple[float, float], list] = {}
        for p in group["params"]:
            mults = (_mult("lr_mult", cfg.lr_mult, names[id(p)], used),
                     _mult("weight_decay_mult", cfg.weight_decay_mult, names[id(p)], used))
            by_mults.setdefault(mults, []).append(p)
        for (lr_mult, wd_mult), params in by_mults.items():
            out.append(dict(group, params=params, lr_scale=group.get("lr_scale", 1.0) * lr_mult,
                            weight_decay=group["weight_decay"] * wd_mult))
    for key in ("lr_mult", "weight_decay_mult"):
        unused = [pattern for pattern, _ in getattr(cfg, key) if (key, pattern) not in used]
        if unused:
            raise ConfigError(f"config key {key!r}: {unused} match no trainable parameter of {cfg.model} "
                              f"(e.g. {next(iter(names.values()))!r})")
    return out


def _mult(key: str, patterns: list, name: str, used: set) -> float:
    for pattern, mult in patterns:
        if fnmatch.fnmatchcase(name, pattern):
            used.add((key, pattern))
            return mult
    return 1.0


def build_scheduler(cfg: TrainConfig, optimizer, steps_per_epoch: int):
    """timm's schedules, warmup and decay measured in optimizer steps, or with sched_per_epoch in epochs
    (t_in_epochs: `schedule_to` then feeds them the epoch); None for a constant rate."""
    unit = 1 if cfg.sched_per_epoch else steps_per_epoch
    total = max(1, cfg.epochs * unit)
    warmup = int(cfg.warmup_epochs * unit)
    # the groups' initial_lr is lr after lr_base_batch scaling (build_optimizer): mmcv's ratio is of that rate
    start = cfg.warmup_ratio * optimizer.param_groups[0]["initial_lr"] if cfg.warmup_ratio else cfg.warmup_lr
    common = dict(warmup_t=warmup, warmup_lr_init=start, t_in_epochs=cfg.sched_per_epoch)
    if cfg.sched == "cosine":
        # a one-step schedule (one epoch with sched_per_epoch, or one step) has no cosine to follow: timm logs a
        # warning about it at every start; the rate it gives (warmup, then lr) is the one asked for
        with _quiet(logging.getLogger("timm.scheduler.cosine_lr")):
            return CosineLRScheduler(optimizer, t_initial=total, lr_min=cfg.min_lr, **common)
    if cfg.sched == "step":
        return StepLRScheduler(optimizer, decay_t=max(1, int(cfg.decay_epochs * unit)),
                               decay_rate=cfg.decay_rate, **common)
    if cfg.sched == "multistep":
        # timm decays at t + 1 >= milestone, and (warmup_prefix) counts t from the warmup's end; the epochs
        # of lr_steps are absolute, and step t is the first at the lower rate: milestone t + 1, no prefix
        milestones = [round(e * unit) + 1 for e in cfg.lr_steps]
        return MultiStepLRScheduler(optimizer, decay_t=milestones, decay_rate=cfg.decay_rate,
                                    warmup_prefix=False, **common)
    return None


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """`logger` says nothing below ERROR meanwhile."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def schedule_to(scheduler, step: int, steps_per_epoch: int) -> None:
    """Set the rate of optimizer step `step` (counted from 0): the step's own, or its epoch's with t_in_epochs."""
    if scheduler is None:
        return
    if scheduler.t_in_epochs:
        scheduler.step(step // steps_per_epoch)
    else:
        scheduler.step_update(step)


def build_mixup(cfg: TrainConfig, num_classes: int):
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 label_smoothing=cfg.label_smoothing, num_classes=num_classes)


def mix_clips(mixup: Mixup, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's Mixup on clips: frames and channels folded into one axis, so CutMix cuts the same box
    out of every frame (timm indexes the last two axes as H, W)."""
    if clips.shape[0] % 2:
        raise ValueError(f"mixup/cutmix need an even batch size, got {clips.shape[0]}")
    flat = clips.flatten(1, 2)
    flat, targets = mixup(flat, labels)
    return flat.view_as(clips), targets


def build_loss(cfg: TrainConfig, mixup) -> torch.nn.Module:
    if cfg.loss == "bce":  # timm's train.py: with mixup the smoothing is already in the mixed targets
        return BinaryCrossEntropy(smoothing=0.0 if mixup is not None else cfg.label_smoothing)
    if mixup is not None:
        return SoftTargetCrossEntropy()
    return torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def build_ema(cfg: TrainConfig, model: torch.nn.Module):
    return ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
