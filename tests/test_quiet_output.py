"""What the commands print carries no noise: no timm warning at each start, numbers at the precision they have,
help texts not cut mid-sentence."""
from __future__ import annotations

import logging

import pytest
import torch

from eval.__main__ import main as eval_main
from eval.metrics import accuracy_report
from train.config import TrainConfig
from runtime.printing import printable
from train.setup import build_scheduler


def test_printable_keeps_the_precision_a_number_has():
    row = {"lr": 0.1 * 3, "loss": 2.1029868125915527, "top5": 30.000001192092896, "steps": 7, "name": "x",
           "views": [0.1 + 0.2], "none": None}
    assert printable(row) == {"lr": 0.3, "loss": 2.10299, "top5": 30.0, "steps": 7, "name": "x", "views": [0.3],
                              "none": None}


def test_accuracies_are_exact_ratios_of_video_counts():
    labels = torch.arange(10) % 4
    scores = torch.nn.functional.one_hot(labels, 4).float()
    scores[:7] = torch.nn.functional.one_hot((labels[:7] + 1) % 4, 4).float()  # 3 of 10 right
    report = accuracy_report(scores, labels, ["a", "b", "c", "d"])
    assert report["top1"] == 30.0 and report["top5"] == 100.0
    assert report["per_class"][0]["accuracy"] == 100 * 1 / 3
    assert report["mean_class_acc"] == sum(r["accuracy"] for r in report["per_class"]) / 4


@pytest.mark.parametrize("per_epoch,epochs", [(True, 1), (False, 1)])
def test_a_one_step_cosine_schedule_starts_without_timms_warning(caplog, per_epoch, epochs):
    cfg = TrainConfig(model="tsn_tiny", data="", epochs=epochs, sched_per_epoch=per_epoch, sched="cosine")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    optimizer.param_groups[0]["initial_lr"] = 0.1
    with caplog.at_level(logging.INFO):
        scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=1)
    assert scheduler is not None and not caplog.records
    assert logging.getLogger("timm.scheduler.cosine_lr").level == logging.NOTSET  # left as it was


def test_ensemble_help_is_not_cut_mid_sentence(capsys):
    with pytest.raises(SystemExit):
        eval_main(["ensemble", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "fuse the saved scores of several models on the same split" in text
    assert "(for an unlabelled split, the same submission files and no accuracy)." in text
