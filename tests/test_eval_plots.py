"""The confusion report: the matrix as a picture for a few classes; for many, per-class accuracy sorted and the most
confused pairs with their full names; the whole matrix as CSV."""
from __future__ import annotations

import csv

import matplotlib.pyplot as plt
import torch

from eval import plots
from eval.metrics import confusion_matrix, write_confusion_csv

LONG = "Pretending to be tearing something that is not tearable (a class name longer than 28 characters)"


def _confusion(n: int, videos: int = 2000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n, (videos,), generator=g)
    wrong = torch.rand(videos, generator=g) < 0.3
    pred = torch.where(wrong, torch.randint(0, n, (videos,), generator=g), labels)
    pred[:40], labels[:40] = 1, 0  # class 0 is mostly taken for class 1: the most confused pair
    return confusion_matrix(pred, labels, n)


def _texts(fig) -> list[str]:
    texts = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels() + ax.get_xticklabels() + ax.texts]
    plt.close(fig)
    return texts


def test_many_classes_get_sorted_accuracy_and_confused_pairs_with_full_names(tmp_path):
    n = 400
    conf = _confusion(n)
    classes = [LONG] + [f"class {i}" for i in range(1, n)]
    texts = _texts(plots.confusion_summary(conf, classes))
    assert any(t.startswith(f"{LONG} -> class 1 (") for t in texts)  # the pair, names uncut
    assert sum(t.startswith(f"{LONG} (") for t in texts) == 1  # among the least accurate classes
    assert len(texts) < 100  # not 400 overlapping tick labels
    plots.plot_confusion(conf, classes, str(tmp_path / "confusion.png"))
    assert (tmp_path / "confusion.png").stat().st_size > 10_000


def test_most_confused_pairs_are_the_largest_off_diagonal_cells():
    conf = torch.tensor([[5, 3, 0], [7, 9, 1], [0, 2, 8]])
    assert plots.most_confused(conf, 3) == [(1, 0, 7), (0, 1, 3), (2, 1, 2)]
    assert plots.most_confused(torch.eye(3, dtype=torch.long) * 4) == []


def test_a_few_classes_keep_the_matrix(tmp_path):
    conf = _confusion(10, videos=200)
    texts = _texts(plots._matrix_figure(conf, [f"c{i}" for i in range(10)], ""))
    assert texts.count("c3") == 2  # a row and a column of the matrix


def test_the_whole_matrix_is_written_as_csv(tmp_path):
    conf = _confusion(70, videos=500)
    classes = [f"name, with a comma {i}" for i in range(70)]
    write_confusion_csv(conf, classes, str(tmp_path / "confusion.csv"))
    with open(tmp_path / "confusion.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == classes and [r[0] for r in rows[1:]] == classes
    assert torch.equal(torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]]), conf)
