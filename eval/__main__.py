"""python -m eval --ckpt RUN/best.pt [--data PREPPED] [--split val] [--clips 3] [--crops 3] [protocol options]

Multi-view evaluation (CLIPS temporal clips x CROPS spatial crops per video); torchrun-compatible, each
video scored exactly once across ranks. Writes metrics.json, per_class.csv, predictions.json, confusion.csv (the
whole matrix) and confusion.png (the matrix up to 60 classes; above, per-class accuracy sorted and the most confused
pairs) next to the checkpoint (or --out). A split prepped without labels (a test set) gets no accuracy:
predictions.json and the submission files submission.csv (id, top-5 class names) and submission_ssv2.csv
(`id;class`, the format of Something-Something v2's answer key) instead of per_class.csv and the confusion files.

Protocol options (default: what the run trained with, else the model's contract): --frames, --sampling,
--frame-stride choose the frames of a clip (a run's frames_per_group is kept), --twice adds mmaction's twice-sample
views (the segments' starts); --eval-scale resizes the short side to crop x scale and
--eval-crop full takes crops as large as that short side (`python -m models zoo` prints each released
checkpoint's settings).

Subcommands: `python -m eval features` (the same views, pre-logit embeddings instead of scores: eval/features.py),
`python -m eval ensemble` (fuses saved scores: eval/ensemble.py), `python -m eval predict VIDEO...` (classifies
video files as they are, through prep and this evaluation: eval/predict.py) and `python -m eval views` (the frames
and crops a test protocol gives one video: eval/views.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from prep.cli import COUNT, POSITIVE_FLOAT, POSITIVE_INT, add_debug_option, run_main
from prep.remote import add_cache_args
from train.printing import printable

# besides bad input (ValueError, OSError...), what eval's commands report in one line: a split whose every video is
# damaged, non-finite scores, a pipeline that cannot be built
EXPECTED = (RuntimeError,)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    add_view_args(p)
    p.add_argument("--save-views", action="store_true", help="also save every view's scores (scores_views.npy)")
    return p


def add_view_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    """The checkpoint, data and test-view options `python -m eval` shares with `python -m eval features` (and,
    without the data options --data, --split and --out, with `python -m eval predict`)."""
    p.add_argument("--ckpt", required=True, help="checkpoint written by `python -m train`, or a released file of the "
                   "source projects (`python -m models zoo` lists them)")
    if data:
        p.add_argument("--data", default="", help="prepped dataset (default: the one the run trained on)")
        p.add_argument("--split", default="val")
        p.add_argument("--out", default="", help="report folder")
        add_cache_args(p)  # --data s3://BUCKET/PREFIX is read through a node-local cache
    p.add_argument("--protocol", default="", help="whose test views: ibm, sifar, mmaction, ila, vidkit (the "
                   "toolkit's), or a zoo key, which also sets the released row's frames, views, resize and crop "
                   "(default: the zoo row an authors' file is named after, else the run's; `python -m eval views` "
                   "prints what a protocol gives a video)")
    p.add_argument("--frames", type=POSITIVE_INT, default=None, help="frames per clip (default: the checkpoint's or model's)")
    p.add_argument("--sampling", choices=("tsn", "dense", "frame_uniform"), default="",
                   help="frame sampling (default: the checkpoint's; frame_uniform is mmaction's)")
    p.add_argument("--frame-stride", type=COUNT, default=0, help="dense sampling's stride (default: the checkpoint's)")
    p.add_argument("--eval-scale", type=POSITIVE_FLOAT, default=None,
                   help="short side = crop size x this (default: the run's augment.eval_scale, else 256/224)")
    p.add_argument("--eval-crop", choices=("contract", "full"), default=None,
                   help="crop side: the model's crop size, or the whole short side (default: the run's, else contract)")
    p.add_argument("--clips", type=POSITIVE_INT, default=None, help="temporal clips per video (default: the protocol's "
                   "zoo row, else 1)")
    p.add_argument("--crops", type=int, choices=(1, 3, 5, 10), default=None,
                   help="spatial crops per clip (default: the protocol's zoo row, else 1)")
    p.add_argument("--twice", action="store_true", help="tsn sampling: mmaction's twice_sample (TSM's test), CLIPS "
                   "more temporal views at the segments' starts, averaged with the others (2 x CLIPS x CROPS views)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8)
    p.add_argument("--py-workers", type=COUNT, default=0, help="DALI source processes (0: a share of the cores)")
    p.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even if the run kept an EMA")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-progress", action="store_true")
    add_debug_option(p)


def augment_overrides(args: argparse.Namespace) -> dict:
    """The pipelines.AugmentConfig fields given on the command line (they override the run's)."""
    given = {"eval_scale": args.eval_scale, "eval_crop": args.eval_crop}
    return {k: v for k, v in given.items() if v is not None}


def views_label(summary: dict) -> str:
    """The test views as the printed summary lines say them, from a run's summary."""
    protocol = summary.get("protocol") or {}
    name = protocol.get("zoo_key") or protocol.get("protocol", "")
    return f"{summary['clips']}x{summary['crops']}" + (" x2 twice-sampled" if summary.get("twice_sample") else "") + \
        (f", {name}" if name else "")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:  # each subcommand maps its own failures (prep.cli.run_main)
        return SUBCOMMANDS[argv[0]](argv[1:])
    return run_main("eval", _evaluate, argv, expected=EXPECTED)


def _evaluate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from train.setup import setup_distributed

    from .run import MissingData, evaluate

    d = setup_distributed(args.device)
    try:
        summary = evaluate(args.ckpt, d, data=args.data, split=args.split, clips=args.clips, crops=args.crops,
                           batch_size=args.batch_size, out_dir=args.out, amp=args.amp, py_workers=args.py_workers,
                           use_ema=not args.no_ema, progress=not args.no_progress, num_frames=args.frames,
                           sampling=args.sampling, frame_stride=args.frame_stride, augment=augment_overrides(args),
                           save_views=args.save_views, twice=args.twice, protocol=args.protocol)
    except MissingData as e:
        raise MissingData(f"{e}: pass --data (a prepped store of the classes it was trained on)") from None
    if d.main:
        damaged = f", {len(summary['damaged'])} damaged videos left out" if summary["damaged"] else ""
        views = views_label(summary)
        if summary["top1"] is None:  # an unlabelled split
            print(f"{summary['model']}: no labels in split {args.split!r}, no accuracy: predictions of "
                  f"{summary['videos']} videos ({views} views{damaged}) -> "
                  f"{summary['submission']['csv']}, {summary['submission']['ssv2']}")
        else:
            print(f"{summary['model']}: top-1 {summary['top1']:.2f}  top-5 {summary['top5']:.2f}  "
                  f"mean class {summary['mean_class_acc']:.2f}  ({summary['videos']} videos{damaged}, "
                  f"{views} views) -> {summary['out_dir']}")
        print(json.dumps(printable(summary)))
    return 0


def _ensemble(argv) -> int:
    from .ensemble import main as ensemble_main

    return ensemble_main(argv)


def _features(argv) -> int:
    from .features import main as features_main

    return features_main(argv)


def _predict(argv) -> int:
    from .predict import main as predict_main

    return predict_main(argv)


def _views(argv) -> int:
    from .views import main as views_main

    return views_main(argv)


SUBCOMMANDS = {"ensemble": _ensemble, "features": _features, "predict": _predict, "views": _views}

if __name__ == "__main__":
    sys.exit(main())
