"""Evaluate a checkpoint with multi-view testing and write the report files."""
from __future__ import annotations

import json
import os

import torch

import models
import pipelines
from pipelines.images import ImageLoader, open_image_folder
from prep import open_dataset
from train import checkpoint as ckpt
from train.setup import Dist

from .metrics import accuracy_report, write_per_class_csv, write_predictions
from .plots import plot_confusion
from .score import check_coverage, score_videos


def load_model(path: str, device: torch.device, use_ema: bool = True):
    state = ckpt.load(path)
    model = models.create_model(state["model_name"], num_classes=state["num_classes"],
                                num_frames=state["contract"]["num_frames"], **state["config"].get("model_args", {}))
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    model.load_state_dict(weights)
    model.input_contract = models.InputContract(**state["contract"])  # as trained (sampling overrides too)
    return model.to(device).eval(), state


def evaluate(ckpt_path: str, d: Dist, data: str = "", split: str = "val", clips: int = 1, crops: int = 1,
             batch_size: int = 8, out_dir: str = "", amp: str = "bf16", py_workers: int = 2,
             use_ema: bool = True, progress: bool = True) -> dict:
    model, state = load_model(ckpt_path, d.device, use_ema)
    cfg = state["config"]
    data = data or cfg["data"]
    dataset, loader = _open(cfg, state["classes"], model.input_contract, data, split, clips, crops, batch_size,
                            d, py_workers, progress)
    loader.set_epoch(0)
    scores, counts = score_videos(model, loader, len(dataset), state["num_classes"], d.device, amp,
                                  progress=progress and d.main)
    check_coverage(counts, clips * crops)
    labels = torch.tensor(dataset.labels)
    report = accuracy_report(scores, labels, state["classes"])
    summary = {"model": state["model_name"], "checkpoint": ckpt_path, "data": data, "split": split,
               "clips": clips, "crops": crops, "videos": report["videos"], "top1": report["top1"],
               "top5": report["top5"], "mean_class_acc": report["mean_class_acc"]}
    if d.main:
        out_dir = out_dir or os.path.join(os.path.dirname(ckpt_path), f"eval_{split}_{clips}x{crops}")
        _write_reports(out_dir, summary, report, scores, dataset.rows, state["classes"])
        summary["out_dir"] = out_dir
    return summary


def _open(cfg: dict, classes, contract, data, split, clips, crops, batch_size, d: Dist, py_workers, progress):
    """(dataset, loader): a prepped video split, or for an image pre-training run its image folder."""
    if cfg.get("task", "video") == "image":
        if (clips, crops) != (1, 1):
            raise ValueError(f"an image pre-training checkpoint is evaluated on one centre crop per image, "
                             f"not {clips} clips x {crops} crops")
        dataset = open_image_folder(data, split, classes=classes, progress=progress and d.main)
        return dataset, ImageLoader(dataset, contract, batch_size, False, device_id=d.device_id, rank=d.rank,
                                    world_size=d.world, seed=cfg["seed"], num_threads=cfg["threads"],
                                    image_size=cfg.get("image_size", 0))
    dataset = open_dataset(data, split)
    return dataset, pipelines.build_loader(
        dataset, split, contract, batch_size=batch_size, training=False, clips=clips, crops=crops,
        device_id=d.device_id, rank=d.rank, world_size=d.world, seed=cfg["seed"], num_threads=cfg["threads"],
        py_workers=py_workers, path=cfg.get("data_path", "auto"))


def _write_reports(out_dir, summary, report, scores, records, classes) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=1)
    write_per_class_csv(report, os.path.join(out_dir, "per_class.csv"))
    write_predictions(scores, records, classes, os.path.join(out_dir, "predictions.json"))
    plot_confusion(report["confusion"], classes, os.path.join(out_dir, "confusion.png"),
                   title=f"{summary['model']}: top-1 {summary['top1']:.1f}% ({summary['clips']}x{summary['crops']} views)")
