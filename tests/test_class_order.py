"""A run records its class names; resuming it, or fine-tuning its classifier as loaded, on data whose classes
differ in names or order (prepped again with another class list) is refused with the first difference, instead of
training label i of the data into the head's class i."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from prep import open_dataset
from prep.__main__ import main as prep_main
from prep.lists import class_order_change
from train.__main__ import main as train_main
from train.config import TrainConfig, apply
from train.setup import Dist, build_model

CPU = Dist(0, 1, 0, torch.device("cpu"))

BASE = ["--model", "tsn_tiny", "--batch-size", "4", "--py-workers", "1", "--threads", "1", "--amp", "none",
        "--optimizer", "adamw", "--lr", "0.002", "--eval-every", "0", "--max-steps", "1", "--no-progress"]


def _prep(source, out, classes_file) -> None:
    assert prep_main(["videos", "--list", f"train={source / 'train.txt'}", "--list", f"val={source / 'val.txt'}",
                      "--root", str(source), "--classes", str(classes_file), "--out", str(out), "--workers", "1",
                      "--no-progress"]) == 0


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same synthetic videos prepped twice: with the generator's class order and with it reversed."""
    root = tmp_path_factory.mktemp("order")
    assert prep_main(["synthetic", "--out", str(root / "a"), "--videos", "20", "--frames", "8", "--size", "32",
                      "--workers", "1", "--no-progress"]) == 0
    source = root / "a" / "source"
    names = (source / "classes.txt").read_text().splitlines()
    (root / "reversed.txt").write_text("".join(f"{n}\n" for n in reversed(names)))
    _prep(source, root / "b", root / "reversed.txt")
    assert open_dataset(str(root / "b"), "train").classes == names[::-1]
    return root / "a", root / "b"


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("train: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_resuming_on_data_prepped_again_in_another_class_order_is_refused(stores, tmp_path, capsys):
    a, b = stores
    data = tmp_path / "data"
    shutil.copytree(a, data)
    common = [*BASE, "--data", str(data), "--output", str(tmp_path / "runs"), "--name", "run"]
    assert train_main([*common, "--epochs", "1"]) == 0
    saved = torch.load(tmp_path / "runs" / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["classes"] == open_dataset(str(a), "train").classes  # the run records its class names
    shutil.rmtree(data)
    shutil.copytree(b, data)  # same path, prepped again with the classes reversed
    capsys.readouterr()
    assert train_main([*common, "--epochs", "2"]) == 2
    err = _one_error(capsys.readouterr().err)
    first, second = saved["classes"][0], saved["classes"][-1]
    assert f"label 0 is {first!r} in the checkpoint, {second!r} in the data" in err, err


@pytest.mark.slow
def test_fine_tuning_a_same_size_head_on_another_class_order_is_refused(stores, tmp_path, capsys):
    a, b = stores
    assert train_main([*BASE, "--data", str(a), "--output", str(tmp_path), "--name", "first", "--epochs", "1"]) == 0
    pretrained = str(tmp_path / "first" / "last.pt")
    capsys.readouterr()
    assert train_main([*BASE, "--data", str(b), "--output", str(tmp_path), "--name", "tuned", "--epochs", "1",
                       "--pretrained", pretrained]) == 2
    err = _one_error(capsys.readouterr().err)
    assert "config key 'pretrained'" in err and "label 0 is" in err and "--remap-head" in err, err
    assert not os.path.exists(tmp_path / "tuned" / "last.pt")
    # the same order fine-tunes
    assert train_main([*BASE, "--data", str(a), "--output", str(tmp_path), "--name", "same", "--epochs", "1",
                       "--pretrained", pretrained]) == 0
    # asked for, the classifier's rows follow the class names: the data's label i gets the row its name had
    learned = torch.load(pretrained, map_location="cpu", weights_only=True)
    reversed_classes = open_dataset(str(b), "train").classes
    cfg = apply(TrainConfig(), {"model": "tsn_tiny", "data": str(b), "pretrained": pretrained, "remap_head": True},
                "test")
    model = build_model(cfg, len(reversed_classes), CPU, reversed_classes)
    order = [learned["classes"].index(c) for c in reversed_classes]
    assert order != list(range(len(order)))
    for key in ("fc.weight", "fc.bias"):
        assert torch.equal(model.state_dict()[key], learned["model"][key][order])


def test_the_first_difference_in_words():
    assert class_order_change(["a", "b"], ["a", "b"]) is None
    assert class_order_change(None, ["a"]) is None  # an authors' file records no classes
    assert class_order_change(["a", "b"], ["b", "a"]) == "label 0 is 'a' in the checkpoint, 'b' in the data"
    assert "label 2 ('c') is missing from the data" in class_order_change(["a", "b", "c"], ["a", "b"])
