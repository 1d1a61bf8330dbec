"""`make demo` says which stage it is in and, while training, how long the rest of the training should take."""
from __future__ import annotations

import re

import pytest

from train.demo import main as demo_main


@pytest.mark.slow
def test_demo_announces_its_stages_and_the_training_time_left(tmp_path, capsys):
    assert demo_main(["--videos", "20", "--frames", "8", "--size", "32", "--epochs", "2", "--models", "tsn_tiny",
                      "--data", str(tmp_path / "data"), "--out", str(tmp_path / "runs"), "--clips", "1", "--crops",
                      "1", "--workers", "1", "--batch-size", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    stages = re.findall(r"^\[demo\] stage (\d) of 3: (\w+)", out, re.M)
    assert stages == [("1", "generate"), ("2", "train"), ("3", "evaluate")]
    assert re.search(r"^\[demo\] tsn_tiny: epoch 1 of 2, about \d+ s of training left$", out, re.M)
    assert re.search(r"^\[demo\] done in [\d.]+ min \([\d.]+ CPU-min\)", out, re.M)
