"""The training config: YAML recipe, then command-line overrides; every key checked and typed.

Only `train` and `eval` see this object; models and pipelines get explicit arguments built from it.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml


class ConfigError(ValueError):
    """A one-line message naming the offending key."""


@dataclass
class TrainConfig:
    # what to train on
    task: str = "video"  # video: a prepped dataset | image: an ImageNet-style folder (image pre-training)
    model: str = "i3d_resnet50"
    data: str = ""
    dataset: str = ""  # informational (ssv2, kinetics400, synthetic)
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 0  # 0: from the dataset's class list
    num_frames: int = 0  # 0: the model's default
    sampling: str = ""  # "" : the model's | tsn | dense (the model's input contract, overridden)
    frame_stride: int = 0  # dense sampling's stride (0: the model's)
    pretrained: str = ""
    model_args: dict = field(default_factory=dict)
    # data pipeline
    batch_size: int = 8  # per process
    py_workers: int = 2
    threads: int = 2
    data_path: str = "auto"  # frames | video | auto
    image_size: int = 0  # task image: training and evaluation crop (0: the model's crop size)
    repeated_aug: int = 1  # task image: repeated augmentation, copies of each image per epoch (timm's aug_repeats)
    augment: dict = field(default_factory=dict)  # pipelines.AugmentConfig fields
    # optimisation
    epochs: int = 30
    max_steps: int = 0  # stop after this many optimizer steps (benchmarks); 0: no limit
    optimizer: str = "sgd"
    lr: float = 0.01
    lr_base_batch: int = 0  # >0: lr is for this total batch and scales linearly with the real one
    weight_decay: float = 5e-4
    momentum: float = 0.9
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    decay_epochs: float = 10.0  # step schedule
    decay_rate: float = 0.1
    label_smoothing: float = 0.0
    aux_loss_weight: float = 1.0  # models with an auxiliary loss (ILA's alignment loss)
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    grad_accum: int = 1
    clip_grad: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9998
    sync_bn: bool = False
    amp: str = "bf16"  # bf16 | fp16 | none
    channels_last: bool = True
    compile: bool = False
    # evaluation during training
    eval_every: int = 1
    eval_clips: int = 1
    eval_crops: int = 1
    # bookkeeping
    output: str = "runs"
    name: str = ""
    resume: str = "auto"  # auto | none | path to a checkpoint
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True
    log_every: int = 20

    def run_dir(self) -> str:
        return os.path.join(self.output, self.name or f"{self.model}_{self.dataset or 'data'}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {"task": ("video", "image"), "sampling": ("", "tsn", "dense"), "optimizer": ("sgd", "adamw", "lamb"),
           "sched": ("cosine", "step", "none"), "amp": ("bf16", "fp16", "none"), "device": ("auto", "cpu", "cuda"),
           "data_path": ("auto", "frames", "video")}
_TYPES = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value, kind):
    if isinstance(value, str) and kind is not str:
        value = _from_text(key, value, kind)
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r}: expected {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def _from_text(key: str, text: str, kind):
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is dict:
            value = yaml.safe_load(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        return kind(text)
    except ValueError:
        raise ConfigError(f"config key {key!r}: expected {kind.__name__}, got {text!r}") from None


def apply(cfg: TrainConfig, values: dict, source: str) -> TrainConfig:
    for key, value in values.items():
        head, _, sub = key.partition(".")
        if head not in _TYPES:
            close = [k for k in _TYPES if k.startswith(head[:3])][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
        kind = _TYPES[head]
        if sub:  # --augment.flip true
            if kind is not dict:
                raise ConfigError(f"{source}: config key {head!r} has no sub-keys ({key!r})")
            getattr(cfg, head)[sub] = yaml.safe_load(value) if isinstance(value, str) else value
            continue
        value = _coerce(key, value, kind)
        if head in CHOICES and value not in CHOICES[head]:
            raise ConfigError(f"{source}: config key {key!r} must be one of {CHOICES[head]}, got {value!r}")
        setattr(cfg, head, dict(value) if kind is dict else value)
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
    apply(cfg, overrides, "command line")
    check(cfg)
    return cfg


def check(cfg: TrainConfig) -> None:
    """Rules that involve more than one key."""
    if not cfg.data:
        what = "an ImageNet-style folder (train/<class>/*.JPEG)" if cfg.task == "image" else \
            "the folder written by `python -m prep`"
        raise ConfigError(f"config key 'data' is required: {what}")
    if cfg.repeated_aug < 1 or (cfg.repeated_aug > 1 and cfg.task != "image"):
        raise ConfigError(f"config key 'repeated_aug' must be >= 1, and > 1 only with task image, "
                          f"got {cfg.repeated_aug} with task {cfg.task}")
    if cfg.task == "image" and (cfg.eval_clips, cfg.eval_crops) != (1, 1):
        raise ConfigError("config keys 'eval_clips'/'eval_crops': task image evaluates one centre crop per image")
    if cfg.image_size < 0 or (cfg.image_size and cfg.task != "image"):
        raise ConfigError(f"config key 'image_size' is for task image (videos follow the model's contract), "
                          f"got {cfg.image_size}")


def save_config(cfg: TrainConfig, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
    os.replace(tmp, path)


def from_dict(values: dict) -> TrainConfig:
    """A config saved in a run folder or checkpoint (keys the current version lacks are an error)."""
    return apply(TrainConfig(), values, "saved config")

