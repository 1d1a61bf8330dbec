"""python -m eval features --ckpt CKPT [--data DIR] [--split val] [--clips N --crops M] [--twice] [--per-view]
[--out DIR]

Pre-logit embeddings of every video: the clip embedding the model's classifier takes (`forward_features`, then
`forward_head(pre_logits=True)`; for ILA's text classifier the normalised video embedding), of the same test
views as `python -m eval`, averaged per video (or every view's with --per-view). Writes features.npy (float32,
videos x D, or videos x views x D) and features_index.json (ids, labels, class names, model, checkpoint, split,
views, twice_sample) next to the checkpoint (or --out). A video with an unreadable view is left out and listed
under "damaged". --twice adds mmaction's twice-sample views (tsn sampling), as it does for `python -m eval`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import torch

from pipelines.augment import AugmentConfig
from prep.cli import run_main

from .cli import EXPECTED, add_view_args, augment_overrides, views_label
from .dump import FEATURES, FEATURES_INDEX, save_features
from .plan import ViewOptions, plan_frames, settle
from .run import (MissingData, check_out_dir, damaged_rows, default_out_dir, evaluated_set, load_model,
                  open_with_data, split_loader)
from .score import autocast, average_views, check_coverage

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
    dataset, short = evaluated_set(dataset, plan.min_frames)
    loader = split_loader(cfg, dataset, contract, split, plan, batch_size, d, py_workers,
                     AugmentConfig(**{**(cfg.get("augment") or {}), **(augment or {})}))
    loader.set_epoch(0)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval features", description=__doc__.split("\n\n")[0])
    add_view_args(p)
    p.add_argument("--per-view", action="store_true", help="keep every view's embedding (videos x views x D) "
                   "instead of their mean")
    return p


def main(argv=None) -> int:
    return run_main("eval features", _main, argv, expected=EXPECTED)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from runtime.dist import setup_distributed

    d = setup_distributed(args.device)
    try:
        index = extract_features(
            args.ckpt, d, data=args.data, split=args.split, clips=args.clips, crops=args.crops,
            batch_size=args.batch_size, out_dir=args.out, amp=args.amp, py_workers=args.py_workers,
            use_ema=not args.no_ema, progress=not args.no_progress, num_frames=args.frames, sampling=args.sampling,
            frame_stride=args.frame_stride, augment=augment_overrides(args), per_view=args.per_view,
            twice=args.twice, protocol=args.protocol)
    except MissingData as e:
        raise MissingData(f"{e}: pass --data (a prepped store to embed)") from None
    if d.main:
        damaged = f", {len(index['damaged'])} damaged videos left out" if index["damaged"] else ""
        print(f"{index['model']}: {index['dim']}-d embeddings ({views_label(index)} views{damaged}) -> "
              f"{os.path.join(index['out_dir'], FEATURES)}")
        print(json.dumps(index))
    return 0


if __name__ == "__main__":
    sys.exit(main())
