"""What is trained on: a video task (clips of a prepped store) or an image task (image pre-training on an
ImageNet-style folder, one-frame clips). The config checks and the trainer ask the run's task (`task_of(cfg)`)
instead of testing its name; a new kind of task is one more class here.

This module is imported by the config checks, which `python -m train --help` loads: torch, DALI and the loaders are
imported by the methods that build a run, not at import.
"""
from __future__ import annotations

from .config_types import ConfigError


class VideoTask:
    name = "video"
    data_hint = "the folder written by `python -m prep`"
    samples_frames = True  # frames sampled from stored videos: frames_per_group and the sampling keys apply

    def check_keys(self, cfg) -> None:
        """The keys another task owns."""
        if cfg.image_size:
            raise ConfigError(f"config key 'image_size' is for task image (videos follow the model's contract), "
                              f"got {cfg.image_size}")

    def copies_per_sample(self, cfg) -> int:
        """Clips a step takes per sample of its batch (repeated_aug's copies; mixup pairs them)."""
        return cfg.repeated_aug

    def open_split(self, cfg, split: str, classes, progress: bool):
        from prep import open_dataset

        data = open_dataset(cfg.data, split, stream=split == cfg.train_split)  # s3://: shards as read
        if not data.labelled:  # a test split prepped without labels: nothing to learn or measure
            raise ConfigError(f"split {split!r} of {cfg.data} has no labels (an unlabelled test split): train "
                              f"and validate on labelled splits; score it with `python -m eval --split {split}`")
        return data

    def check_model(self, model, cfg, device) -> None:
        """Every model takes clips: nothing to check before the first step."""

    def check_split(self, rows: list[dict], contract, split: str, d) -> None:
        """One warning (rank 0) when the stored videos are shorter or smaller than the model's clip."""
        from .guard import check_stored_videos

        if d.main:
            check_stored_videos(rows, contract, split)

    def loader(self, cfg, data, split: str, contract, training: bool, d, augment, clips: int = 1, crops: int = 1):
        from pipelines.loader import build_loader

        return build_loader(
            data, split, contract, batch_size=cfg.batch_size, training=training, clips=clips,
            crops=crops, device_id=d.device_id, rank=d.rank, world_size=d.world,
            seed=cfg.seed, num_threads=cfg.threads, py_workers=cfg.py_workers,
            augment=augment, path=cfg.data_path, hw_decoder_load=cfg.hw_decoder_load,
            preallocate=(cfg.preallocate_width_hint, cfg.preallocate_height_hint),
            **video_loader_options(cfg, training))


class ImageTask:
    name = "image"
    data_hint = "an ImageNet-style folder (train/<class>/*.JPEG)"
    samples_frames = False

    def check_keys(self, cfg) -> None:
        if (cfg.eval_clips, cfg.eval_crops) != (1, 1) or cfg.eval_twice_sample:
            raise ConfigError("config keys 'eval_clips'/'eval_crops'/'eval_twice_sample': task image evaluates one "
                              "centre crop per image")
        if cfg.image_size < 0:
            raise ConfigError(f"config key 'image_size' is for task image (videos follow the model's contract), "
                              f"got {cfg.image_size}")

    def copies_per_sample(self, cfg) -> int:
        return 1  # repeated_aug keeps an epoch's length in images: a batch counts images, copies included

    def open_split(self, cfg, split: str, classes, progress: bool):
        """`classes`: the training split's class list, which the evaluation splits take (None for training)."""
        from pipelines.images import open_image_folder

        return open_image_folder(cfg.data, split, classes=classes, progress=progress)

    def check_model(self, model, cfg, device) -> None:
        check_one_frame(model, cfg.image_size or model.input_contract.crop_size, device)

    def check_split(self, rows: list[dict], contract, split: str, d) -> None:
        """Images take the model's crop whatever their size: nothing to warn about."""

    def loader(self, cfg, data, split: str, contract, training: bool, d, augment, clips: int = 1, crops: int = 1):
        from pipelines.images import ImageLoader

        return ImageLoader(data, contract, cfg.batch_size, training, device_id=d.device_id,
                           rank=d.rank, world_size=d.world, seed=cfg.seed,
                           num_threads=cfg.threads, augment=augment,
                           repeats=cfg.repeated_aug if training else 1, image_size=cfg.image_size)


TASKS = {task.name: task for task in (VideoTask(), ImageTask())}


def task_of(cfg):
    """The task object of a config (its `task` key)."""
    try:
        return TASKS[cfg.task]
    except KeyError:
        raise ConfigError(f"config key 'task' must be one of {tuple(TASKS)}, got {cfg.task!r}") from None


def video_loader_options(cfg, training: bool) -> dict:
    """The frame-sampling options of a video loader (pipelines.build_loader) for training or validation."""
    if training:
        return {"frames_per_group": cfg.frames_per_group, "repeats": cfg.repeated_aug,
                "same_frames": cfg.repeated_aug_same_frames, "protocol": cfg.protocol}
    return {"frames_per_group": cfg.frames_per_group, "twice": cfg.eval_twice_sample, "protocol": cfg.protocol}


def check_one_frame(model, size: int, device) -> None:
    """Image pre-training feeds one-frame clips: fail at start, in one line, for models that cannot take them
    (2D models built for a fixed number of segments, S3D's temporal pooling)."""
    import torch

    contract = model.input_contract
    shape = list(contract.replace(num_frames=1, crop_size=size).input_shape(1))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=device))
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"model {getattr(model, 'model_name', type(model).__name__)} cannot take a one-frame "
                         f"clip {tuple(shape)} for image pre-training: {str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)
