"""Accuracy figures from per-video scores."""
from __future__ import annotations

import csv
import os

import torch

from prep.outputs import atomic_write, write_json


def accuracy_report(scores: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    num_classes = scores.shape[1]
    k = min(5, num_classes)
    topk = scores.topk(k, dim=1).indices
    top1 = (topk[:, 0] == labels).float()
    top5 = (topk == labels.unsqueeze(1)).any(1).float()
    conf = confusion_matrix(topk[:, 0], labels, num_classes)
    # percentages from whole counts in float64: 3 of 10 is 30.0, not float32's 30.000001192092896
    support, right = conf.sum(1).tolist(), conf.diag().tolist()
    per_class = [100 * r / max(s, 1) for r, s in zip(right, support)]
    present = [a for a, s in zip(per_class, support) if s]
    videos = int(labels.numel())
    return {
        "videos": videos,
        "top1": 100 * int(top1.sum()) / videos if videos else float("nan"),
        "top5": 100 * int(top5.sum()) / videos if videos else float("nan"),
        "mean_class_acc": sum(present) / len(present) if present else 0.0,
        "per_class": [{"class": classes[c] if c < len(classes) else str(c), "support": support[c],
                       "accuracy": per_class[c]} for c in range(num_classes)],
        "confusion": conf,
    }


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    flat = labels.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def write_per_class_csv(report: dict, path: str) -> None:
    with atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["class", "support", "accuracy"])
        for row in report["per_class"]:
            w.writerow([row["class"], row["support"], f"{row['accuracy']:.2f}"])


def write_confusion_csv(conf: torch.Tensor, classes: list[str], path: str) -> None:
    """The whole confusion matrix: a row per true class, a column per predicted class, video counts; the first
    row and column name the classes."""
    names = [classes[c] if c < len(classes) else str(c) for c in range(conf.shape[0])]
    with atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *names])
        w.writerows([name, *row] for name, row in zip(names, conf.tolist()))


def write_predictions(scores: torch.Tensor, records: list[dict], classes: list[str], path: str, k: int = 5) -> None:
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    out = []
    for rec, vals, idx in zip(records, top.values.tolist(), top.indices.tolist()):
        out.append({"id": rec["id"], "label": rec["label"], "pred": idx[0],
                    "top": [{"class": classes[i] if i < len(classes) else str(i), "score": round(v, 5)}
                            for i, v in zip(idx, vals)]})
    write_json(path, out)  # scores are checked finite before; never write non-JSON


SUBMISSION, SSV2_SUBMISSION = "submission.csv", "submission_ssv2.csv"


def write_submissions(scores: torch.Tensor, records: list[dict], classes: list[str], out_dir: str,
                      k: int = 5) -> dict:
    """An unlabelled split's answers, best class first: submission.csv (header `id,top1..top5`, class names) and
    submission_ssv2.csv (`id;class name` per line, no header), the format of the answer key Something-Something v2
    now ships (labels/test-answers.csv), so a submission is scored against it line by line. (TSM's test script
    wrote its SSv2 submissions as `id;i1;...;i5`, class indices: not this format.) Returns {"csv", "ssv2"} paths."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices.tolist()
    names = [[classes[i] for i in row] for row in top]
    paths = {"csv": os.path.join(out_dir, SUBMISSION), "ssv2": os.path.join(out_dir, SSV2_SUBMISSION)}
    with atomic_write(paths["csv"], "w") as f:
        w = csv.writer(f)
        w.writerow(["id"] + [f"top{i + 1}" for i in range(len(top[0]) if top else k)])
        w.writerows([rec["id"], *row] for rec, row in zip(records, names))
    with atomic_write(paths["ssv2"], "w") as f:
        csv.writer(f, delimiter=";", lineterminator="\n").writerows([rec["id"], row[0]] for rec, row in
                                                                    zip(records, names))
    return paths
