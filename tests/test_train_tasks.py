"""The task object (train/tasks.py): the config checks and the trainer ask the run's task, video or image, instead of
testing its name. The rules each task brings are those the config had before, one line each."""
from __future__ import annotations

import pytest

from train.config import ConfigError, TrainConfig, check, load_config
from train.tasks import TASKS, ImageTask, VideoTask, task_of


def _refused(*argv) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(list(argv))
    return str(e.value)


def test_each_task_is_found_by_its_name_and_an_unknown_one_is_refused():
    assert isinstance(task_of(TrainConfig(task="video")), VideoTask)
    assert isinstance(task_of(TrainConfig(task="image")), ImageTask)
    assert "must be one of ('video', 'image'), got 'audio'" in str(pytest.raises(ConfigError, task_of,
                                                                                   TrainConfig(task="audio")).value)
    assert "must be one of ('video', 'image')" in _refused("--task", "audio", "--data", "x")


@pytest.mark.parametrize("task, hint", [("video", "the folder written by `python -m prep`"),
                                        ("image", "an ImageNet-style folder (train/<class>/*.JPEG)")])
def test_the_missing_data_line_names_what_the_task_reads(task, hint):
    assert _refused("--task", task) == f"config key 'data' is required: {hint}"


def test_the_image_task_rules():
    assert "task image evaluates one centre crop per image" in _refused("--task", "image", "--data", "x",
                                                                         "--eval-clips", "2")
    assert "task image evaluates one" in _refused("--task", "image", "--data", "x", "--eval-twice-sample")
    assert "'image_size' is for task image" in _refused("--task", "image", "--data", "x", "--image-size", "-1")
    assert "'frames_per_group' is for task video" in _refused("--task", "image", "--data", "x",
                                                               "--frames-per-group", "2")
    assert "needs task video" in _refused("--task", "image", "--data", "x", "--repeated-aug", "2",
                                          "--repeated-aug-same-frames")
    # repeated copies of an image are not counted apart: an odd batch with 2 copies is still odd for mixup...
    assert "even with mixup" in _refused("--task", "image", "--data", "x", "--mixup", "0.8", "--batch-size", "3",
                                         "--repeated-aug", "2")


def test_the_video_task_rules():
    assert "'image_size' is for task image" in _refused("--data", "x", "--image-size", "224")
    # ...while a video step takes batch_size x copies clips: 3 x 2 pairs up
    cfg = load_config(["--data", "x", "--mixup", "0.8", "--batch-size", "3", "--repeated-aug", "2",
                       "--model", "tsn_tiny"])
    assert (cfg.batch_size, cfg.repeated_aug) == (3, 2)


def test_the_config_checks_ask_the_task_object(monkeypatch):
    """A stand-in task registered under a new name: the checks call it, and refuse with its words."""
    calls = []

    class Recorded(VideoTask):
        name = "recorded"
        data_hint = "a recorded store"

        def check_keys(self, cfg):
            calls.append("check_keys")
            if cfg.eval_clips > 1:
                raise ConfigError("recorded: one clip only")

        def copies_per_sample(self, cfg):
            calls.append("copies_per_sample")
            return 1

    monkeypatch.setitem(TASKS, "recorded", Recorded())
    with pytest.raises(ConfigError, match="is required: a recorded store"):
        check(TrainConfig(task="recorded", model="tsn_tiny"))
    with pytest.raises(ConfigError, match="recorded: one clip only"):
        check(TrainConfig(task="recorded", model="tsn_tiny", data="x", eval_clips=2))
    check(TrainConfig(task="recorded", model="tsn_tiny", data="x", mixup=0.8, batch_size=2, repeated_aug=3))
    assert calls == ["check_keys", "check_keys", "copies_per_sample"]
