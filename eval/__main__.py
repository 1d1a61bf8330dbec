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

Subcommands: `python -m eval features` (the same views, pre-logit embeddings instead of scores: eval/embedding.py),
`python -m eval ensemble` (fuses saved scores: eval/fusion.py), `python -m eval predict VIDEO...` (classifies
video files as they are, through prep and this evaluation: eval/predict.py) and `python -m eval views` (the frames
and crops a test protocol gives one video: eval/views.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from prep.cli import run_main
from runtime.printing import printable

from .cli import EXPECTED, add_view_args, augment_overrides, views_label


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    add_view_args(p)
    p.add_argument("--save-views", action="store_true", help="also save every view's scores (scores_views.npy)")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:  # each subcommand maps its own failures (prep.cli.run_main)
        return SUBCOMMANDS[argv[0]](argv[1:])
    return run_main("eval", _evaluate, argv, expected=EXPECTED)


def _evaluate(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from runtime.dist import setup_distributed

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
