"""The work of `python -m eval features` (its command line is eval/features.py): the pre-logit embedding of every
video over `python -m eval`'s test views, averaged per video or kept per view, with damaged videos left out and
listed."""
from __future__ import annotations

import logging
import os

import torch

from .dump import FEATURES, FEATURES_INDEX, save_features
from .plan import ViewOptions, plan_frames, settle
from .run import check_out_dir, damaged_rows, default_out_dir, load_model, open_with_data, views_loader
from .score import average_views, autocast, check_coverage

log = logging.getLogger("eval")


def embedder(model, device: torch.device, amp: str):
    """clips -> (B, model.num_features) float32 pre-logit embeddings."""
    if not hasattr(model, "forward_head") or not hasattr(model, "num_features"):
        raise ValueError(f"{type(model).__name__} has no forward_head / num_features: no pre-logit embedding")
    model.eval()

    def embed(clips: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            out = model.forward_head(model.forward_features(clips), pre_logits=True)
        return out.float()

    return embed


def extract_features(ckpt_path: str, d, data: str = "", split: str = "val", clips: int | None = None,
                     crops: int | None = None,
                     batch_size: int = 8, out_dir: str = "", amp: str = "bf16", py_workers: int = 0,
                     use_ema: bool = True, progress: bool = True, num_frames: int | None = None, sampling: str = "",
                     frame_stride: int = 0, augment: dict | None = None, per_view: bool = False,
                     twice: bool = False, protocol: str = "") -> dict:
    """Embed every video of a split over `python -m eval`'s views (`twice`: its twice_sample, 2 x clips temporal
    views); returns the index written beside features.npy (plus `out_dir`)."""
    rec, cfg, data, dataset = open_with_data(ckpt_path, use_ema, data, split, progress and d.main)
    # the classifier is not used, so the file's own head is kept whatever the dataset's classes; only a text
    # classifier needs class names to be built at all
    classes = dataset.classes if "class_names" in rec.needs else None
    options = ViewOptions(protocol, clips, crops, twice, num_frames, sampling, frame_stride, dict(augment or {}))
    model, rec = load_model(ckpt_path, d.device, use_ema, classes, plan_frames(rec, ckpt_path, options), rec)
    plan = settle(rec, ckpt_path, cfg, options, cfg.get("image_size") or model.input_contract.crop_size)
    out_dir = out_dir or default_out_dir(ckpt_path, "features", split, plan)
    check_out_dir(out_dir, (FEATURES, FEATURES_INDEX), [("--ckpt", ckpt_path)], "--out")  # before the embedding, not after
    contract = plan.contract(model.input_contract)
    dataset, short, loader = views_loader(cfg, dataset, contract, split, plan, batch_size, d, py_workers, augment)
    views = loader.num_views
    result = average_views(embedder(model, d.device, amp), loader, len(dataset), model.num_features, d.device,
                           progress and d.main, keep_views=views if per_view else 0)
    damaged = check_coverage(result, views)
    index = {"model": rec.model, "origin": rec.origin, "checkpoint": ckpt_path, "data": data, "split": split,
             "clips": plan.clips, "crops": plan.crops, "twice_sample": plan.twice, "views": views,
             "per_view": per_view, "dim": model.num_features,
             "damaged": damaged_rows(damaged, dataset.rows, loader), "left_out": short,
             "protocol": plan.row(contract)}
    if damaged and d.main:
        log.warning("%d of %d videos could not be read and are left out (listed in features_index.json)",
                    len(damaged), len(dataset))
    if d.main:
        os.makedirs(out_dir, exist_ok=True)
        left_out = set(damaged)
        readable = [i for i in range(len(dataset)) if i not in left_out]
        features = result.views if per_view else result.scores
        save_features(out_dir, features[readable], [dataset.rows[i] for i in readable], dataset.classes, index)
        index["out_dir"] = out_dir
    return index
