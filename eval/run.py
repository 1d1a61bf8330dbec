"""Evaluate a checkpoint with multi-view testing and write the report files.

Any checkpoint `models.from_checkpoint` knows is accepted: this toolkit's own (it records its data, classes
and input contract) and the source projects' released files (they record none of these: `--data` is
required, the dataset's classes must match the file's classifier, `--frames` sets the clip length).
"""
from __future__ import annotations

import dataclasses
import logging
import os

import torch

from models.checkpoints import CheckpointError, recognize_file
from models.factory import build_recognized
from pipelines.augment import AugmentConfig
from pipelines.images import ImageLoader, open_image_folder
from pipelines.loader import build_loader
from prep import open_dataset
from prep.outputs import check_writable, refuse_input_as_output, write_json
from runtime.dist import Dist

from .dump import INDEX, SCORES, VIEWS, save_scores
from .metrics import (SSV2_SUBMISSION, SUBMISSION, write_confusion_csv, write_per_class_csv, write_predictions,
                      write_submissions)
from .plan import TestPlan, ViewOptions, plan_frames, settle
from .plots import plot_confusion
from .run_config import run_config
from .score import check_coverage, readable_accuracy, score_videos

log = logging.getLogger("eval")
REPORT_FILES = ("metrics.json", "predictions.json", "per_class.csv", "confusion.png", SCORES, VIEWS, INDEX,
                SUBMISSION, SSV2_SUBMISSION)


def load_model(path: str, device: torch.device, use_ema: bool = True, classes: list | None = None,
               num_frames: int | None = None, rec=None):
    """(model in eval mode, its Recognized record). `classes`: the dataset's, for files without their own."""
    rec = rec or recognize_file(path, use_ema)
    overrides = {} if num_frames is None else {"num_frames": num_frames}
    if "class_names" in rec.needs and classes is not None:
        overrides["class_names"] = list(classes)
    if rec.classes is None and classes is not None and "num_classes" in rec.model_args:
        overrides["num_classes"] = len(classes)  # an origin that can adapt its head does; others refuse
    model = build_recognized(rec, path, **overrides)
    return model.to(device).eval(), rec


def open_with_data(ckpt_path: str, use_ema: bool, data: str, split: str, progress: bool) -> tuple:
    """(Recognized, run config, data path, split): a checkpoint and the split it is evaluated on; an authors'
    file records no dataset, so `data` must be given for it."""
    rec = recognize_file(ckpt_path, use_ema)
    cfg = run_config(rec)
    data = data or cfg["data"]
    if not data:
        raise MissingData(f"{ckpt_path} ({rec.origin}) records no dataset")
    return rec, cfg, data, _open_split(cfg, data, split, rec.classes, progress)


class MissingData(ValueError):
    """An authors' file records no dataset: the command's own data option must name one."""


def evaluate(ckpt_path: str, d: Dist, data: str = "", split: str = "val", clips: int | None = None,
             crops: int | None = None, batch_size: int = 8, out_dir: str = "", amp: str = "bf16", py_workers: int = 2,
             use_ema: bool = True, progress: bool = True, num_frames: int | None = None,
             save_views: bool = False, sampling: str = "", frame_stride: int = 0, augment: dict | None = None,
             twice: bool = False, protocol: str = "", out_option: str = "--out") -> dict:
    """Score every video over its views: `clips` temporal (x 2 with `twice`: mmaction's twice_sample, the
    segments' starts after their centres) x `crops` spatial, averaged, as the test protocol computes them
    (`protocol`: a pipelines.protocols name or a zoo key; default: eval.plan's order of precedence)."""
    options = ViewOptions(protocol, clips, crops, twice, num_frames, sampling, frame_stride, dict(augment or {}))
    rec, cfg, data, dataset = open_with_data(ckpt_path, use_ema, data, split, progress and d.main)
    classes = _split_classes(ckpt_path, rec, dataset, data)
    model, rec = load_model(ckpt_path, d.device, use_ema, classes, plan_frames(rec, ckpt_path, options), rec)
    column = _class_columns(ckpt_path, rec.classes, classes, model.num_classes)
    plan = settle(rec, ckpt_path, cfg, options, cfg.get("image_size") or model.input_contract.crop_size)
    out_dir = out_dir or default_out_dir(ckpt_path, "eval", split, plan)
    check_out_dir(out_dir, REPORT_FILES, [("--ckpt", ckpt_path)], out_option)  # before the scoring, not after it
    contract = plan.contract(model.input_contract)
    dataset, short, loader = views_loader(cfg, dataset, contract, split, plan, batch_size, d, py_workers, augment)
    views = loader.num_views
    result = score_videos(model, loader, len(dataset), model.num_classes, d.device, amp,
                          progress=progress and d.main, keep_views=views if save_views else 0)
    if column is not None:
        result.scores = result.scores[:, column]
        result.views = result.views[..., column] if result.views is not None else None
    report, damaged = _accuracy(result, dataset, classes, views)
    summary = {"model": rec.model, "origin": rec.origin, "checkpoint": ckpt_path, "data": data, "split": split,
               "clips": plan.clips, "crops": plan.crops, "twice_sample": plan.twice, "views": views,
               "videos": len(dataset) - len(damaged),
               **{k: report[k] if report else None for k in ("top1", "top5", "mean_class_acc")},
               "damaged": damaged_rows(damaged, dataset.rows, loader), "left_out": short,
               "protocol": {**plan.row(contract), "frames_per_group": cfg.get("frames_per_group", 1)}}
    if damaged and d.main:
        log.warning("%d of %d videos could not be read and are left out (listed in metrics.json)",
                    len(damaged), len(dataset))
    if d.main:
        left_out = set(damaged)
        readable = [i for i in range(len(dataset)) if i not in left_out]
        views = result.views[readable] if result.views is not None else None
        write_reports(out_dir, summary, report, result.scores[readable], [dataset.rows[i] for i in readable],
                      classes, views)
        summary["out_dir"] = out_dir
    return summary


def evaluated_set(dataset, min_frames: int) -> tuple:
    """(the videos the protocol scores, {"count", "why", "ids"} of those it leaves out): the authors' test of
    IBM's and SIFAR's rows leaves out videos under `min_frames` frames (their filter_video)."""
    if not min_frames or not hasattr(dataset, "where"):
        return dataset, {"count": 0}
    kept = dataset.where(lambda row: row["num_frames"] >= min_frames)
    ids = [r["id"] for r in dataset.rows if r["num_frames"] < min_frames]
    if ids:
        log.warning("%d of %d videos have fewer than %d frames and are left out, as the authors' test does",
                    len(ids), len(dataset), min_frames)
    if not len(kept):
        raise ValueError(f"every video of the split has fewer than {min_frames} frames, the protocol's minimum")
    return kept, {"count": len(ids), "why": f"fewer than {min_frames} frames (the authors' test leaves them out)",
                  "ids": ids[:100]}


def view_count(clips: int, crops: int, twice: bool) -> int:
    """Test views per video of the toolkit's own protocol: `clips` temporal (x 2 twice-sampled) x `crops`."""
    return clips * crops * (2 if twice else 1)


def default_out_dir(ckpt_path: str, kind: str, split: str, plan: TestPlan) -> str:
    """The report folder beside the checkpoint, named for the checkpoint and its views, so that neither two
    checkpoints of one run folder nor two protocols overwrite each other's reports."""
    stem = os.path.splitext(os.path.basename(ckpt_path))[0]
    name = f"{kind}_{split}_{stem}_{plan.label()}"
    return os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), name)


def check_out_dir(out_dir: str, names: tuple[str, ...], inputs: list[tuple[str, str]], option: str) -> None:
    """Before any work (every rank alike): files can be made in the report folder, and none of the report files
    `names` there is one of the `inputs` ((option, path) pairs); `option`: the caller's option that chose the
    folder."""
    check_writable(out_dir, option)
    refuse_input_as_output([(option, os.path.join(out_dir, name)) for name in names], inputs)


def _split_classes(path: str, rec, dataset, data: str) -> list[str]:
    """The dataset's classes; for an unlabelled split prepped without a class list, the checkpoint's."""
    if dataset.classes:
        return dataset.classes
    if not rec.classes:
        raise CheckpointError(f"{data} records no class names and {path} ({rec.origin}) has none either: prep the "
                              "split with `python -m prep ... --classes FILE` (the classes the model was trained on, "
                              "in its order)")
    return list(rec.classes)


def _accuracy(result, dataset, classes: list[str], views: int) -> tuple[dict | None, list[int]]:
    """(accuracy report, damaged videos); no report for an unlabelled split, whose files are its submission."""
    if not getattr(dataset, "labelled", True):  # an image folder is always labelled
        return None, check_coverage(result, views)
    return readable_accuracy(result, torch.tensor(dataset.labels), classes, views)


def _class_columns(path: str, ckpt_classes, data_classes: list, num_classes: int):
    """None when the model's classes are the dataset's; the model's column of each dataset class when the
    dataset's classes are a subset of the checkpoint's (by name); otherwise a one-line refusal."""
    if ckpt_classes is None:
        if num_classes != len(data_classes):
            raise CheckpointError(f"{path} classifies {num_classes} classes, the dataset has {len(data_classes)}")
        return None
    if list(ckpt_classes) == list(data_classes):
        return None
    missing = [c for c in data_classes if c not in ckpt_classes]
    if missing:
        raise CheckpointError(f"{path} was trained on other classes than the dataset's ({len(missing)} of "
                              f"{len(data_classes)} dataset classes unknown to it, e.g. {missing[0]!r})")
    log.warning("the dataset's %d classes are a subset of the checkpoint's %d: scoring them by name",
                len(data_classes), len(ckpt_classes))
    return torch.tensor([list(ckpt_classes).index(c) for c in data_classes])


def _open_split(cfg: dict, data: str, split: str, classes, progress: bool):
    if cfg.get("task", "video") == "image":
        return open_image_folder(data, split, classes=classes, progress=progress)
    return open_dataset(data, split)


def views_loader(cfg: dict, dataset, contract, split, plan: TestPlan, batch_size, d: Dist, py_workers,
                 augment: dict | None):
    """(the videos evaluated, those left out as too short, the loader of their test views): what `python -m eval`
    and `eval features` read, with the run's augmentation settings under the command line's."""
    dataset, short = evaluated_set(dataset, plan.min_frames)
    loader = split_loader(cfg, dataset, contract, split, plan, batch_size, d, py_workers,
                          AugmentConfig(**{**(cfg.get("augment") or {}), **(augment or {})}))
    loader.set_epoch(0)
    return dataset, short, loader


def split_loader(cfg: dict, dataset, contract, split, plan: TestPlan, batch_size, d: Dist, py_workers,
                 augment=None):
    """A prepped video split's loader (frames_per_group: the run's), or for an image pre-training run its image
    folder's."""
    if cfg.get("task", "video") == "image":
        if (plan.clips, plan.crops) != (1, 1) or plan.twice:
            raise ValueError(f"an image pre-training checkpoint is evaluated on one centre crop per image, "
                             f"not {plan.clips}{' x 2 (twice)' if plan.twice else ''} clips x {plan.crops} crops")
        short, side = plan.geometry  # the image loader resizes to crop x eval_scale and crops at the centre
        augment = dataclasses.replace(augment or AugmentConfig(), eval_scale=short / contract.crop_size,
                                      eval_crop="full" if side == short != contract.crop_size else "contract")
        return ImageLoader(dataset, contract, batch_size, False, device_id=d.device_id, rank=d.rank,
                           world_size=d.world, seed=cfg["seed"], num_threads=cfg["threads"],
                           image_size=cfg.get("image_size", 0), augment=augment)
    return build_loader(
        dataset, split, contract, batch_size=batch_size, training=False, clips=plan.clips, crops=plan.crops,
        device_id=d.device_id, rank=d.rank, world_size=d.world, seed=cfg["seed"], num_threads=cfg["threads"],
        py_workers=py_workers, path=cfg.get("data_path", "auto"), augment=augment,
        hw_decoder_load=cfg.get("hw_decoder_load", 0.9),
        preallocate=(cfg.get("preallocate_width_hint", 0), cfg.get("preallocate_height_hint", 0)),
        frames_per_group=cfg.get("frames_per_group", 1), **plan.loader_options())


def damaged_rows(damaged: list[int], rows: list[dict], loader) -> list[dict]:
    log_entries = loader.damage_log.entries() if hasattr(loader, "damage_log") else []
    reasons = {v: e["reason"] for e in log_entries for v in e["damaged"]}
    return [{"id": rows[i]["id"], "reason": reasons.get(i, "unreadable on another rank")} for i in damaged]


def write_reports(out_dir, summary, report, scores, records, classes, views=None) -> None:
    """metrics.json, per_class.csv, predictions.json, confusion.png/.csv and the score dump of one evaluation; for
    an unlabelled split (report None) the submission files instead of per_class.csv and confusion.png/.csv."""
    os.makedirs(out_dir, exist_ok=True)
    if report is None:
        summary["submission"] = write_submissions(scores, records, classes, out_dir)
    write_json(os.path.join(out_dir, "metrics.json"), summary, indent=1)
    write_predictions(scores, records, classes, os.path.join(out_dir, "predictions.json"))
    save_scores(out_dir, scores, records, classes, {k: summary[k] for k in ("model", "checkpoint", "split")
                                                     if k in summary}, views)
    if report is None:
        return
    write_per_class_csv(report, os.path.join(out_dir, "per_class.csv"))
    write_confusion_csv(report["confusion"], classes, os.path.join(out_dir, "confusion.csv"))
    plot_confusion(report["confusion"], classes, os.path.join(out_dir, "confusion.png"),
                   title=f"{summary['model']}: top-1 {summary['top1']:.1f}% ({summary.get('views', '?')} views)")
