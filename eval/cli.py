"""The command-line options and helpers `python -m eval` shares with its subcommands `eval features` and
`eval predict`: the checkpoint, data and test-view options, the overrides they make, and how a summary names its
views. Light: no torch, so that `--help` and an argument error answer at once."""
from __future__ import annotations

import argparse

from prep.cli import COUNT, POSITIVE_FLOAT, POSITIVE_INT, add_debug_option
from prep.remote import add_cache_args

# besides bad input (ValueError, OSError...), what eval's commands report in one line: a split whose every video is
# damaged, non-finite scores, a pipeline that cannot be built
EXPECTED = (RuntimeError,)



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
