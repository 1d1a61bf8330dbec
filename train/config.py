"""The training config: YAML recipe, then command-line overrides; every key checked and typed.

Only `train` and `eval` see this object; models and pipelines get explicit arguments built from it.
"""
from __future__ import annotations

import dataclasses
import os
import textwrap
import typing
from dataclasses import dataclass, field

import yaml

from eval.run_config import RUN_DEFAULTS

from .config_types import ConfigError, check_finite, check_type, read_text
from .tasks import TASKS, task_of


GROUPS = ("data", "model", "optimizer", "schedule", "augmentation", "evaluation", "runtime")


def _key(default, group: str, doc: str):
    """A config field with its one-line description: the one source of `python -m train --help` and of the docs."""
    assert group in GROUPS, group
    meta = {"group": group, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


def _run_key(name: str, group: str, doc: str):
    """A key evaluation reads from a run's config too: its default is evaluation's (eval.run_config), for a file that
    records none."""
    return _key(RUN_DEFAULTS[name], group, doc)


@dataclass
class TrainConfig:
    task: str = _run_key("task", "data", "video: a prepped dataset | image: an ImageNet-style folder (image "
                         "pre-training)")
    model: str = _key("i3d_resnet50", "model", "model name or alias (`python -m models list`)")
    data: str = _run_key("data", "data", "the folder written by `python -m prep` (task image: an ImageNet-style "
                         "folder)")
    dataset: str = _key("", "data", "informational dataset name (ssv2, kinetics400, synthetic): names the run folder")
    train_split: str = _key("train", "data", "the split trained on")
    val_split: str = _key("val", "data", "the split validated on")
    num_classes: int = _key(0, "model", "classifier size; 0: the dataset's number of classes")
    num_frames: int = _key(0, "data", "frames per clip; 0: the model's default")
    sampling: str = _key("", "data", "frame sampling: '' the model's | tsn | dense | frame_uniform (overrides the "
                         "model's input contract)")
    protocol: str = _run_key("protocol", "data", "whose frame sampling and test views: vidkit (the toolkit's) | ibm | "
                             "sifar | mmaction | ila (pipelines/protocols)")
    frame_stride: int = _key(0, "data", "dense sampling's stride; 0: the model's")
    frames_per_group: int = _run_key("frames_per_group", "data", "tsn: IBM's frames_per_group, F frames in each of "
                                     "num_frames / F segments (F distinct random offsets, the same in every segment; "
                                     "evaluation spreads them evenly); num_frames counts all of them")
    pretrained: str = _key("", "model", "weights to start from: a checkpoint of this toolkit or of the source "
                           "projects, or image weights (timm, torchvision, CLIP); a classifier of another size is "
                           "re-initialised")
    remap_head: bool = _key(False, "model", "with pretrained: a classifier of the data's classes in another order is "
                            "reordered by class name to the data's (without it, such a classifier is refused)")
    model_args: dict = _key({}, "model", "the model builder's arguments, checked against its signature; "
                            "class_names: dataset = the training split's class names (a text classifier)")
    grad_checkpointing: bool = _key(False, "model", "recompute block activations in backward: less memory, about "
                                    "1/3 more compute")
    frozen_stages: int = _key(-1, "model", "mmaction's: -1 nothing frozen, 0 the stem, n the stem and the first n "
                              "stages (CNNs)")
    norm_eval: bool = _key(False, "model", "every BatchNorm uses and keeps its running statistics; affines train "
                           "(mmaction)")
    partial_bn: bool = _key(False, "model", "TSN's partial BN: every BatchNorm but the first frozen (statistics and "
                            "affine)")
    frozen_bn: bool = _key(False, "model", "every BatchNorm a fixed affine map (statistics and affine frozen)")
    batch_size: int = _key(8, "data", "clips (task image: images) per step and process")
    py_workers: int = _key(0, "runtime", "DALI source processes per rank; 0: a share of the cores "
                           "(pipelines.resources)")
    threads: int = _run_key("threads", "runtime", "DALI CPU threads per rank; 0: the rank's share of the cores")
    hw_decoder_load: float = _run_key("hw_decoder_load", "runtime", "share of the JPEG frames sent to the GPU's "
                                      "hardware decoder (DALI's default 0.65)")
    preallocate_width_hint: int = _run_key("preallocate_width_hint", "runtime", "nvJPEG preallocation width; 0: from "
                                           "the dataset's largest stored frame")
    preallocate_height_hint: int = _run_key("preallocate_height_hint", "runtime", "nvJPEG preallocation height; 0: "
                                            "from the dataset's largest stored frame")
    data_path: str = _run_key("data_path", "data", "how stored clips are decoded: frames (JPEG) | video (encoded "
                              "videos, GPU decode) | auto (what the store holds)")
    image_size: int = _run_key("image_size", "data", "task image: training and evaluation crop; 0: the model's crop "
                               "size")
    repeated_aug: int = _key(1, "augmentation", "repeated augmentation, R copies of a sample each augmented on its "
                             "own. task image: timm's aug_repeats (an epoch keeps its length: N / R images, R times; a "
                             "batch counts images). task video: PySlowFast's AUG.NUM_SAMPLE (a step takes batch_size "
                             "videos x R copies, each copy its own frames and augmentation, labels repeated; an "
                             "epoch reads every video once and keeps its steps; lr_base_batch counts videos)")
    repeated_aug_same_frames: bool = _key(False, "augmentation", "task video, repeated_aug > 1: the copies share one "
                                          "frame sample and differ only in augmentation (mmaction's "
                                          "RepeatAugDataset(sample_once=True), PySlowFast's single decode)")
    augment: dict = _run_key("augment", "augmentation", "pipelines.AugmentConfig fields (train_crop, flip, jitter, "
                             "erase, rand_augment, eval_scale, ...), each checked against its declared type")
    epochs: int = _key(30, "schedule", "epochs to train")
    max_steps: int = _key(0, "schedule", "stop after this many optimizer steps (benchmarks); 0: no limit")
    optimizer: str = _key("sgd", "optimizer", "sgd | adamw | lamb")
    lr: float = _key(0.01, "optimizer", "peak learning rate (for lr_base_batch when that is set)")
    lr_base_batch: int = _key(0, "optimizer", ">0: lr is for this total batch and scales linearly with the real one")
    weight_decay: float = _key(5e-4, "optimizer", "weight decay")
    weight_decay_mult: list = _key([], "optimizer", "[[pattern, mult], ...] or {pattern: mult}: weight_decay x mult "
                                   "(0 allowed) for the parameters whose name matches the fnmatch pattern (first "
                                   "match wins; mmcv's custom_keys decay_mult); parameters that get no decay keep none")
    decay_norm_bias: bool = _key(False, "optimizer", "norms, biases and other 1-D parameters decay too (torch.optim's "
                                 "default: IBM's train.py, mmaction without paramwise_cfg); off: timm's default, they "
                                 "get no decay. The model's no_weight_decay() names get none either way")
    momentum: float = _key(0.9, "optimizer", "sgd momentum")
    nesterov: bool = _key(True, "optimizer", "sgd: Nesterov momentum (IBM's recipes: off)")
    betas: list = _key([], "optimizer", "adamw, lamb: [beta1, beta2], e.g. ILA's [0.9, 0.98]; []: the optimizer's "
                       "own (0.9, 0.999)")
    lr_mult: list = _key([], "optimizer", "[[pattern, mult], ...] or {pattern: mult}: lr x mult for the parameters "
                         "whose name matches the fnmatch pattern (first match wins), e.g. {\"fc.*\": 10} (TSM's "
                         "fc_lr5)")
    layer_decay: float = _key(0.0, "optimizer", "block i's lr x layer_decay**(depth - i), the stem first, the head "
                              "at lr (BEiT/mmaction; the model's group_matcher); 0: off")
    sched: str = _key("cosine", "schedule", "cosine | step (every decay_epochs) | multistep (at lr_steps) | none")
    sched_per_epoch: bool = _key(False, "schedule", "the schedule, warmup included, moves at epoch starts only "
                                 "(timm's t_in_epochs, as IBM's train.py, SIFAR's main.py and timm's train.py step "
                                 "it; epoch counts then whole); off: every step")
    warmup_epochs: float = _key(0.0, "schedule", "linear warmup length in epochs")
    warmup_lr: float = _key(1e-6, "schedule", "the warmup's first rate")
    warmup_ratio: float = _key(0.0, "schedule", ">0: the warmup starts at warmup_ratio x lr (the lr after "
                               "lr_base_batch scaling) instead of at warmup_lr (mmcv's warmup_ratio, 0.1 in "
                               "mmaction's recipes)")
    min_lr: float = _key(0.0, "schedule", "the rate the cosine schedule ends at")
    decay_epochs: float = _key(10.0, "schedule", "step schedule: epochs between decays")
    decay_rate: float = _key(0.1, "schedule", "step/multistep: the lr factor at each decay")
    lr_steps: list = _key([], "schedule", "multistep: the epochs at which the lr decays, e.g. [20, 40]")
    loss: str = _key("ce", "optimizer", "ce: softmax cross-entropy | bce: binary cross-entropy per class (timm's "
                     "--bce-loss) on the mixed targets with mixup/cutmix, else on one-hot targets smoothed by "
                     "label_smoothing")
    label_smoothing: float = _key(0.0, "optimizer", "label smoothing of the loss's targets")
    aux_loss_weight: float = _key(1.0, "optimizer", "weight of a model's auxiliary loss (ILA's alignment loss)")
    mixup: float = _key(0.0, "augmentation", "mixup alpha; 0: off")
    cutmix: float = _key(0.0, "augmentation", "cutmix alpha; 0: off")
    mixup_prob: float = _key(1.0, "augmentation", "probability of mixing a batch (mixup or cutmix)")
    grad_accum: int = _key(1, "optimizer", "steps whose gradients are summed before one optimizer step")
    clip_grad: float = _key(0.0, "optimizer", "gradient norm clipping; 0: off")
    ema: bool = _key(False, "optimizer", "keep an exponential moving average of the weights (evaluated and saved)")
    ema_decay: float = _key(0.9998, "optimizer", "the EMA's decay per step")
    sync_bn: bool = _key(False, "runtime", "synchronise BatchNorm statistics across processes")
    amp: str = _key("bf16", "runtime", "mixed precision: bf16 | fp16 | none")
    channels_last: bool = _key(True, "runtime", "channels-last memory format for convolutional models on a GPU")
    compile: bool = _key(False, "runtime", "torch.compile the model")
    eval_every: int = _key(1, "evaluation", "validate every N epochs; 0: no validation")
    eval_clips: int = _key(1, "evaluation", "temporal clips per video in validation")
    eval_crops: int = _key(1, "evaluation", "spatial crops per clip in validation (1, 3, 5 or 10)")
    eval_twice_sample: bool = _key(False, "evaluation", "tsn: mmaction's twice_sample, eval_clips more views at the "
                                   "segments' starts")
    output: str = _key("runs", "runtime", "folder the run folders go in")
    name: str = _key("", "runtime", "run folder name; '': MODEL_DATASET")
    resume: str = _key("auto", "runtime", "auto (the run folder's last good checkpoint) | none | path to a checkpoint")
    seed: int = _run_key("seed", "runtime", "random seed")
    device: str = _key("auto", "runtime", "auto | cpu | cuda")
    progress: bool = _key(True, "runtime", "show progress bars")
    log_every: int = _key(20, "runtime", "log the training metrics every N steps")
    ckpt_every_steps: int = _key(0, "runtime", ">0: also checkpoint every N optimizer steps inside an epoch "
                                 "(resumes exactly)")
    keep_best: int = _key(0, "evaluation", ">0: keep the K best checkpoints by val_top1 "
                          "(best_eEPOCH_top1_SCORE.pt), for averaging")
    save_every: int = _key(0, "runtime", ">0: keep a checkpoint every N epochs (epoch_EPOCH.pt)")

    def run_dir(self) -> str:
        return os.path.join(self.output, self.name or f"{self.model}_{self.dataset or 'data'}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {"task": tuple(TASKS), "sampling": ("", "tsn", "dense", "frame_uniform"),
           "protocol": ("vidkit", "ibm", "sifar", "mmaction", "ila"), "optimizer": ("sgd", "adamw", "lamb"),
           "loss": ("ce", "bce"), "sched": ("cosine", "step", "multistep", "none"), "amp": ("bf16", "fp16", "none"),
           "device": ("auto", "cpu", "cuda"), "data_path": ("auto", "frames", "video")}
_TYPES = typing.get_type_hints(TrainConfig)


def apply(cfg: TrainConfig, values: dict, source: str, text: bool = False) -> TrainConfig:
    """`values` into `cfg`, each checked against its key's declared type, strictly (config_types). `text`: the
    values were typed on a command line, and a string is read as its key's type (`--lr 1e-3`, `--ema false`)."""
    for key, value in values.items():
        head, _, sub = key.partition(".")
        if head not in _TYPES:
            close = [k for k in _TYPES if k.startswith(head[:3])][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
        kind = _TYPES[head]
        if text and isinstance(value, str):
            value = read_text(key, value, None if sub or head in SHAPES else kind)
        if sub:  # --augment.flip true; its type is checked with the others of its dict (check)
            if kind is not dict:
                raise ConfigError(f"{source}: config key {head!r} has no sub-keys ({key!r})")
            check_finite(key, value)
            getattr(cfg, head)[sub] = value
            continue
        value = SHAPES[head](key, value) if head in SHAPES else check_type(key, value, kind)
        if head in CHOICES and value not in CHOICES[head]:
            raise ConfigError(f"{source}: config key {key!r} must be one of {CHOICES[head]}, got {value!r}")
        setattr(cfg, head, dict(value) if kind is dict else list(value) if kind is list else value)
    return cfg


def parse_overrides(argv: list[str]) -> tuple[str | None, dict]:
    """`--config FILE --key value --flag --key=value` -> (FILE, {key: value}); `--no-flag` sets False."""
    config, values, i = None, {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: options look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            base = key.partition(".")[0]
            if _TYPES.get(base) is bool and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
                value = "true"
            elif key.startswith("no_") and _TYPES.get(key[3:]) is bool:
                key, value = key[3:], "false"
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"option --{key} needs a value")
        if key == "config":
            config = value
        else:
            values[key] = value
        i += 1
    return config, values


def load_config(argv: list[str]) -> TrainConfig:
    config_path, overrides = parse_overrides(argv)
    cfg = TrainConfig()
    if config_path:
        if not os.path.isfile(config_path):
            raise ConfigError(f"config file not found: {config_path}")
        with open(config_path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{config_path}: expected a mapping of config keys")
        apply(cfg, values, config_path)
    apply(cfg, overrides, "command line", text=True)
    check(cfg)
    return cfg


def _pattern_mults(key: str, value, zero_ok: bool = False) -> list:
    """lr_mult, weight_decay_mult as [[pattern, mult], ...]; {pattern: mult} (YAML keeps its order) is the same
    list. A decay may be switched off (mult 0), a learning rate not (that is freezing: frozen_stages)."""
    pairs = list(value.items()) if isinstance(value, dict) else value
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise ConfigError(f"config key {key!r}: expected {{pattern: mult}} or [[pattern, mult], ...], got {value!r}")
    out = []
    for pattern, mult in pairs:
        mult = check_type(f"{key}.{pattern}", mult, float)
        if not isinstance(pattern, str) or not pattern or mult < 0 or (mult == 0 and not zero_ok):
            raise ConfigError(f"config key {key!r}: each entry is a name pattern and a multiplier "
                              f"{'>= 0' if zero_ok else '> 0'}, got {pattern!r}: {mult!r}")
        out.append([pattern, mult])
    return out


def _epoch_list(key: str, value) -> list:
    """lr_steps: increasing epochs > 0."""
    if not isinstance(value, list):
        raise ConfigError(f"config key {key!r}: expected a list of epochs, got {value!r}")
    steps = [check_type(key, v, float) for v in value]
    if any(v <= 0 for v in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError(f"config key {key!r} must be increasing epochs > 0, got {value!r}")
    return steps


def _betas(key: str, value) -> list:
    """betas: [] or two coefficients in [0, 1)."""
    if not isinstance(value, list) or len(value) not in (0, 2):
        raise ConfigError(f"config key {key!r}: expected [beta1, beta2] (or [] for the optimizer's), got {value!r}")
    betas = [check_type(key, v, float) for v in value]
    if not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"config key {key!r} must be two numbers in [0, 1), got {value!r}")
    return betas


# Keys whose value has a structure of its own: checked and normalised by these instead of by type alone.
SHAPES = {"lr_mult": _pattern_mults, "weight_decay_mult": lambda k, v: _pattern_mults(k, v, zero_ok=True),
          "lr_steps": _epoch_list, "betas": _betas}

# Bounds of the numeric keys, checked before anything is built.
RULES = {
    "num_classes": (lambda v: v >= 0, ">= 0 (0: the dataset's classes)"),
    "num_frames": (lambda v: v >= 0, ">= 0 (0: the model's)"),
    "frame_stride": (lambda v: v >= 0, ">= 0 (0: the model's)"),
    "frames_per_group": (lambda v: v >= 1, ">= 1"),
    "repeated_aug": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "py_workers": (lambda v: v >= 0, ">= 0 (0: a share of the cores)"),
    "threads": (lambda v: v >= 0, ">= 0 (0: a share of the cores)"),
    "hw_decoder_load": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "preallocate_width_hint": (lambda v: v >= 0, ">= 0 (0: the dataset's largest frame)"),
    "preallocate_height_hint": (lambda v: v >= 0, ">= 0 (0: the dataset's largest frame)"),
    "epochs": (lambda v: v >= 1, ">= 1"),
    "max_steps": (lambda v: v >= 0, ">= 0 (0: no limit)"),
    "lr": (lambda v: v > 0, "> 0"),
    "lr_base_batch": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "warmup_lr": (lambda v: v >= 0, ">= 0"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1) (0: warmup_lr)"),
    "min_lr": (lambda v: v >= 0, ">= 0"),
    "decay_epochs": (lambda v: v > 0, "> 0"),
    "decay_rate": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "aux_loss_weight": (lambda v: v >= 0, ">= 0"),
    "mixup": (lambda v: v >= 0, ">= 0"),
    "cutmix": (lambda v: v >= 0, ">= 0"),
    "mixup_prob": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "grad_accum": (lambda v: v >= 1, ">= 1"),
    "clip_grad": (lambda v: v >= 0, ">= 0 (0: off)"),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eval_every": (lambda v: v >= 0, ">= 0 (0: no validation)"),
    "eval_clips": (lambda v: v >= 1, ">= 1"),
    "log_every": (lambda v: v >= 1, ">= 1"),
    "ckpt_every_steps": (lambda v: v >= 0, ">= 0 (0: at epoch ends only)"),
    "frozen_stages": (lambda v: v >= -1, ">= -1 (-1: nothing frozen)"),
    "layer_decay": (lambda v: 0 <= v <= 1, "in [0, 1] (0: off)"),
    "keep_best": (lambda v: v >= 0, ">= 0 (0: off)"),
    "save_every": (lambda v: v >= 0, ">= 0 (0: off)"),
}


def check(cfg: TrainConfig) -> None:
    """Every rule a value can break, before anything is built: ranges, then rules that involve more than one key."""
    for key, (ok, rule) in RULES.items():
        if not ok(getattr(cfg, key)):
            raise ConfigError(f"config key {key!r} must be {rule}, got {getattr(cfg, key)!r}")
    task = task_of(cfg)
    if not cfg.data:
        raise ConfigError(f"config key 'data' is required: {task.data_hint}")
    task.check_keys(cfg)
    copies = task.copies_per_sample(cfg)
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.batch_size * copies % 2:
        raise ConfigError(f"config key 'batch_size' must be even with mixup/cutmix (they pair clips), "
                          f"got {cfg.batch_size}" + (f" x repeated_aug {copies}" if copies > 1 else ""))
    _check_recipe_keys(cfg)
    _check_pipeline_keys(cfg)
    cfg.model = _canonical_model(cfg.model)
    _check_model_args(cfg)


def _check_recipe_keys(cfg: TrainConfig) -> None:
    """The optimisation and checkpoint keys that only make sense together."""
    if (cfg.sched == "multistep") != bool(cfg.lr_steps):
        raise ConfigError(f"config key 'lr_steps' is for sched multistep, and it needs them: got sched {cfg.sched} "
                          f"with lr_steps {cfg.lr_steps}")
    if cfg.lr_steps and cfg.lr_steps[-1] >= cfg.epochs:
        raise ConfigError(f"config key 'lr_steps' {cfg.lr_steps}: every decay must come before the last epoch "
                          f"({cfg.epochs})")
    if cfg.keep_best and not cfg.eval_every:
        raise ConfigError(f"config key 'keep_best' ranks checkpoints by validation: it needs eval_every > 0, "
                          f"got keep_best {cfg.keep_best} with eval_every 0")
    modes = [k for k in ("norm_eval", "partial_bn", "frozen_bn") if getattr(cfg, k)]
    if len(modes) > 1:
        raise ConfigError(f"config keys {' and '.join(modes)}: choose one BatchNorm mode")
    _check_optimizer_keys(cfg)
    _check_schedule_keys(cfg)


def _check_optimizer_keys(cfg: TrainConfig) -> None:
    """Momentum, betas and the weight decay options: each only where it does something."""
    if cfg.optimizer == "sgd" and cfg.nesterov and cfg.momentum == 0:
        raise ConfigError("config key 'nesterov' needs momentum > 0 (pass --no-nesterov for plain SGD)")
    if cfg.betas and cfg.optimizer == "sgd":
        raise ConfigError(f"config key 'betas' is for adamw and lamb, not sgd (its key is momentum), got {cfg.betas}")
    for key in ("weight_decay_mult", "decay_norm_bias"):
        if getattr(cfg, key) and not cfg.weight_decay:
            raise ConfigError(f"config key {key!r} shapes weight_decay, which is 0")


def _check_schedule_keys(cfg: TrainConfig) -> None:
    """warmup_ratio replaces warmup_lr; per-epoch schedules count whole epochs."""
    if cfg.warmup_ratio and not cfg.warmup_epochs:
        raise ConfigError(f"config key 'warmup_ratio' {cfg.warmup_ratio} needs warmup_epochs > 0")
    if cfg.warmup_ratio and cfg.warmup_lr != TrainConfig.warmup_lr:
        raise ConfigError(f"config keys 'warmup_ratio' and 'warmup_lr' both set the warmup's first rate: choose one "
                          f"(got {cfg.warmup_ratio} and {cfg.warmup_lr})")
    if not cfg.sched_per_epoch:
        return
    if cfg.sched == "none":
        raise ConfigError("config key 'sched_per_epoch' steps a schedule: sched is none")
    epochs = {"warmup_epochs": [cfg.warmup_epochs], "lr_steps": cfg.lr_steps,
              "decay_epochs": [cfg.decay_epochs] if cfg.sched == "step" else []}
    for key, values in epochs.items():
        if any(v != int(v) for v in values):
            raise ConfigError(f"config key {key!r} must be whole epochs with sched_per_epoch, got "
                              f"{getattr(cfg, key)!r}")


def _check_sampling_keys(cfg: TrainConfig) -> None:
    """frames_per_group, repeated augmentation and twice sampling: each only where it does something."""
    from pipelines.sampling import check_groups

    samples_frames = task_of(cfg).samples_frames
    if cfg.repeated_aug_same_frames and (cfg.repeated_aug == 1 or not samples_frames):
        raise ConfigError(f"config key 'repeated_aug_same_frames' shares the frames of a video's copies: it needs "
                          f"task video and repeated_aug > 1, got task {cfg.task} with repeated_aug {cfg.repeated_aug}")
    if cfg.frames_per_group > 1 and not samples_frames:
        raise ConfigError(f"config key 'frames_per_group' is for task video, got {cfg.frames_per_group}")
    if cfg.sampling and cfg.num_frames:  # otherwise the model's contract decides (train.setup.build_model)
        try:
            check_groups(cfg.num_frames, cfg.sampling, cfg.frames_per_group)
        except ValueError as e:
            raise ConfigError(f"config key 'frames_per_group': {e}") from None
    if cfg.eval_twice_sample and cfg.sampling == "dense":
        raise ConfigError("config key 'eval_twice_sample' (segment centres and starts) is for tsn sampling, "
                          "not dense")


def _check_pipeline_keys(cfg: TrainConfig) -> None:
    from pipelines.augment import EVAL_CROPS, AugmentConfig

    _check_sampling_keys(cfg)
    if cfg.eval_crops not in EVAL_CROPS:
        raise ConfigError(f"config key 'eval_crops' must be one of {EVAL_CROPS}, got {cfg.eval_crops}")
    fields = typing.get_type_hints(AugmentConfig)
    for sub, value in cfg.augment.items():
        if sub in fields:  # an unknown one: AugmentConfig refuses it below
            check_type(f"augment.{sub}", value, fields[sub])
    try:
        AugmentConfig(**cfg.augment)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config key 'augment': {e}") from None


def _canonical_model(name: str) -> str:
    """An alias trains (and names its run folder) as the model it stands for."""
    from models.registry import resolve_name

    try:
        return resolve_name(name)
    except ValueError as e:
        raise ConfigError(f"config key 'model': {e}") from None


def _check_model_args(cfg: TrainConfig) -> None:
    """Each model_args value against the type its builder's signature annotates (unannotated ones: the builder's
    own checks when it is built)."""
    from models.checkpoints import DATASET_CLASS_NAMES
    from models.registry import builder_arg_types

    declared = builder_arg_types(cfg.model)
    for sub, value in cfg.model_args.items():
        if sub in declared and not (sub == "class_names" and value == DATASET_CLASS_NAMES):
            check_type(f"model_args.{sub}", value, declared[sub])


def help_text() -> str:
    """Every config key with its type, default and description, grouped: `python -m train --help`."""
    out = []
    for group in GROUPS:
        out.append(f"\n{group}:")
        for f in dataclasses.fields(TrainConfig):
            if f.metadata["group"] != group:
                continue
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out.append(f"  --{f.name.replace('_', '-')} {_TYPES[f.name].__name__.upper()} (default {default!r})")
            out += textwrap.wrap(f.metadata["doc"], 110, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)


# Keys a resumed run may change: how long, how it is evaluated, and how it runs, not what it computes.
SAFE_ON_RESUME = ("epochs", "max_steps", "eval_every", "eval_clips", "eval_crops", "eval_twice_sample",
                  "val_split", "progress", "log_every", "py_workers", "threads", "hw_decoder_load",
                  "preallocate_width_hint", "preallocate_height_hint", "data_path", "resume", "output", "name",
                  "device", "ckpt_every_steps", "amp", "ema", "channels_last", "compile",
                  "keep_best", "save_every", "grad_checkpointing")


def config_changes(saved: dict, cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(safe, unsafe) differences between a checkpoint's saved config and `cfg`, as "key: old -> new" texts."""
    safe, unsafe = [], []
    defaults = TrainConfig().to_dict()
    for key, new in cfg.to_dict().items():
        old = saved.get(key, defaults[key])  # a key added since the checkpoint was written: its default
        if _same(key, old, new):
            continue
        text = f"{key}: {_short(old)} -> {_short(new)}"
        (safe if key in SAFE_ON_RESUME else unsafe).append(text)
    return safe, unsafe


def _same(key: str, old, new) -> bool:
    if key in ("data", "pretrained") and old and new and isinstance(old, str):
        return os.path.realpath(old) == os.path.realpath(new)
    return old == new


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def save_config(cfg: TrainConfig, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)


def from_dict(values: dict) -> TrainConfig:
    """A config saved in a run folder or checkpoint (keys the current version lacks are an error)."""
    return apply(TrainConfig(), values, "saved config")

