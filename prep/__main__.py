"""python -m prep {videos,ssv2,kinetics400,kinetics700,diving48,ucf101,hmdb51,synthetic,synthetic-images,merge,
verify} ...
(see --help of each)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

from .cli import COUNT, JPEG_QUALITY, POSITIVE_FLOAT, POSITIVE_INT, add_debug_option, range_checked, run_main
from .decoded import DecodeOptions
from . import remote, remote_upload
from .presets import diving48_tasks, hmdb51_tasks, kinetics700_tasks, restrict_to_classes, ucf101_tasks
from .runner import JobOptions, check_out, merge, parse_part, part_lock, rejects_report, run_prep
from .store import DEFAULT_CHUNK_BYTES
from .tasks import kinetics_tasks, number_tasks, parse_video_lists, ssv2_tasks


SUBSET_PRESETS = {"ssv2": ssv2_tasks, "kinetics400": kinetics_tasks, "kinetics700": kinetics700_tasks}
SPLIT_ID_PRESETS = {"ucf101": ucf101_tasks, "hmdb51": hmdb51_tasks}
DEFAULT_MAX_REJECTED = 5.0  # percent: a few unreadable downloads are normal; more means wrong paths or lists


@range_checked
def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", text.strip().upper())
    size = int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")) if m else 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"size must look like 1G, 500M or 1048576 (at least 1 byte), got {text!r}")
    return size


def _percent(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 5 or 0.5, got {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, got {text!r}")
    return value


def _job_args(p: argparse.ArgumentParser, short_side: int = 256) -> None:
    p.add_argument("--out", required=True, help="output folder (shards, manifest, rejects), or s3://BUCKET/PREFIX "
                   "(prepped in a staging folder under --cache-dir, then uploaded, the manifest last)")
    p.add_argument("--format", choices=("lmdb", "arrow"), default="lmdb")
    p.add_argument("--store", choices=("frames", "video"), default="frames",
                   help="JPEG frames (default) or the encoded video bytes (GPU-decode path)")
    p.add_argument("--reencode", nargs="?", const="h264", default="", choices=("h264", "vp9"),
                   help="with --store video: re-encode each video once to --short-side with a keyframe every few "
                        "frames and no B-frames, in a codec every NVDEC decodes (h264, the default) or vp9 (DALI's "
                        "CPU video decoder); without it the source bytes are kept")
    p.add_argument("--short-side", type=COUNT, default=short_side, help="resize the short side to this (0: keep)")
    p.add_argument("--fps", type=POSITIVE_FLOAT, default=None, help="keep about this many frames per second (default: all)")
    p.add_argument("--quality", type=JPEG_QUALITY, default=90, help="JPEG quality")
    p.add_argument("--chroma", choices=("auto", "444", "422", "420"), default="auto",
                   help="JPEG chroma subsampling (auto: 420, or 444 when the short side is under 128 px)")
    p.add_argument("--encoder", choices=("yuv", "pil"), default="yuv",
                   help="yuv: scale the decoded planes and encode them with libjpeg-turbo (exact colours, 1.2-1.9x "
                        "the frames per CPU-second, docs/benchmarks.md); pil: the first encoder (swscale RGB, then "
                        "Pillow), about 6%% fewer bytes with Huffman optimisation")
    p.add_argument("--min-frames", type=POSITIVE_INT, default=4, help="reject videos with fewer clean frames")
    p.add_argument("--workers", type=POSITIVE_INT, default=os.cpu_count() or 1)
    p.add_argument("--part", type=parse_part, default=(0, 1), metavar="I/N",
                   help="do only part I of N (0-based): one per machine or Slurm array task; then `merge` OUT")
    p.add_argument("--take-over", action="store_true", help="with an s3:// --out: take over the claim of a part "
                   "whose writer is gone (killed, its machine lost); the refusal names the holder")
    p.add_argument("--shard-size", type=parse_size, default=parse_size("1G"), help="cap per shard file")
    p.add_argument("--chunk-size", type=parse_size, default=DEFAULT_CHUNK_BYTES,
                   help="a longer video's frames are written in pieces of about this size (bounds memory)")
    p.add_argument("--no-progress", action="store_true")
    remote.add_cache_args(p)
    p.add_argument("--max-rejected", type=_percent, default=DEFAULT_MAX_REJECTED, metavar="PERCENT",
                   help="exit with status 1 when more than this share of the videos is rejected (the rejected are "
                        f"listed in OUT/rejects.jsonl; default {DEFAULT_MAX_REJECTED:g}%%)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prep", description="Decode videos once into shards.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("videos", help="a video list: lines 'relative/path label' (or 'relative/path' alone: an "
                       "unlabelled test list); a label with spaces after a tab or in double quotes (prep/lists.py)")
    p.add_argument("--list", action="append", required=True, metavar="[SPLIT=]LIST",
                   help="repeatable; the split defaults to train/val/test from the file name")
    p.add_argument("--root", required=True, help="folder the list's paths are relative to")
    p.add_argument("--classes", help="class names, one per line (line = label; no blank, padded or repeated "
                   "line); default: from the lists")
    p.add_argument("--num-classes", type=POSITIVE_INT, help="numeric labels run 0..N-1 (default: inferred from the lists)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="store list entries that lie outside --root (absolute paths, ../); rejected by default")
    _job_args(p)
    for name, helptext in (("ssv2", "Something-Something v2 (labels.json, train.json, validation.json, or their "
                            "something-something-v2-*.json release names)"),
                           ("kinetics400", "Kinetics-400 (CSV: label,youtube_id,time_start,time_end,split)"),
                           ("kinetics700", "Kinetics-700 (CSVs as Kinetics-400)"),
                           ("diving48", "Diving48 (Diving48_V2_train.json, _test.json, rgb/<vid_name>.mp4)"),
                           ("ucf101", "UCF101 (ucfTrainTestlist/, UCF-101/<Class>/<video>.avi)"),
                           ("hmdb51", "HMDB51 (testTrainMulti_7030_splits/, <class>/<video>.avi)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--root", required=True)
        p.add_argument("--videos", help="video folder if not under --root")
        if name in SUBSET_PRESETS:
            p.add_argument("--subset", metavar="FILE", help="only these classes (one per line), labelled in "
                           "the file's order, e.g. mini-Kinetics-200 or mini-SSv2-87")
        if name in SPLIT_ID_PRESETS:
            p.add_argument("--split-id", type=int, choices=(1, 2, 3), default=1, help="which official split")
        _job_args(p)
    p = sub.add_parser("synthetic", help="generate the built-in synthetic dataset and prep it")
    p.add_argument("--root", help="where the generated videos go (default OUT/source)")
    p.add_argument("--videos", type=POSITIVE_INT, default=400)
    p.add_argument("--frames", type=POSITIVE_INT, default=24)
    p.add_argument("--size", type=POSITIVE_INT, default=64)
    p.add_argument("--codec", choices=("h264", "vp9"), default="h264")
    p.add_argument("--seed", type=COUNT, default=0)
    _job_args(p, short_side=0)
    p = sub.add_parser("synthetic-images", help="write a synthetic ImageNet-style folder (one class per shape) "
                       "for image pre-training (`make pretrain-image`); images are read in place, not prepped")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class", type=POSITIVE_INT, default=200, help="training images per class")
    p.add_argument("--val-per-class", type=COUNT, default=40)
    p.add_argument("--size", type=POSITIVE_INT, default=64)
    p.add_argument("--seed", type=COUNT, default=0)
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("merge", help="join the manifests of the parts of a --part job")
    p.add_argument("out", help="the parts' --out: a folder, or s3://BUCKET/PREFIX (the store appears on the server "
                   "with its manifest, written last)")
    p = sub.add_parser("verify", help="decode every stored frame and check checksums")
    p.add_argument("out", help="prepped folder, or s3://BUCKET/PREFIX (downloaded into the cache)")
    p.add_argument("--workers", type=POSITIVE_INT, default=os.cpu_count() or 1)
    remote.add_cache_args(p)
    for p in sub.choices.values():
        add_debug_option(p)
    return parser


def _tasks_for(args):
    if args.command == "videos":
        return parse_video_lists(args.list, args.root, args.classes, num_classes=args.num_classes,
                                 allow_outside_root=args.allow_outside_root)
    if args.command in SUBSET_PRESETS:
        tasks, classes = SUBSET_PRESETS[args.command](args.root, args.videos)
        return restrict_to_classes(tasks, classes, args.subset) if args.subset else (tasks, classes)
    if args.command in SPLIT_ID_PRESETS:
        return SPLIT_ID_PRESETS[args.command](args.root, args.videos, args.split_id)
    if args.command == "diving48":
        return diving48_tasks(args.root, args.videos)
    from .synthetic import generate

    root = args.root or os.path.join(args.out, "source")
    made = generate(root, videos=args.videos, frames=args.frames, size=args.size, codec=args.codec,
                    seed=args.seed, workers=args.workers, progress=not args.no_progress)
    classes_file = os.path.join(root, "classes.txt")
    return parse_video_lists([f"train={made['train']}", f"val={made['val']}"], root, classes_file)


def _inputs(args) -> list[tuple[str, str]]:
    """The files a prep command reads, as (option, path)."""
    lists = [item.split("=", 1)[1] if "=" in item and not os.path.exists(item) else item
             for item in getattr(args, "list", None) or []]
    return [("--list", p) for p in lists] + [(f"--{k}", getattr(args, k, None) or "") for k in ("classes", "subset")]


def _prep(args) -> dict:
    if not remote.is_remote(args.out):
        if args.take_over:
            raise ValueError("--take-over is for an s3:// --out: a local part's lock ends with its process")
        return _prep_local(args)
    url = args.out  # checked and this part claimed before any work; prep runs in a local staging folder, then uploads
    with remote_upload.destination(url, args.part, args.take_over) as (args.out, args.run):
        summary = _prep_local(args)
        summary["upload"] = remote_upload.upload_store(args.out, url, args.part)
    return summary


def _prep_local(args) -> dict:
    check_out(args.out, _inputs(args))
    with part_lock(args.out, args.part):  # before anything is written, the synthetic videos included
        tasks, classes = _tasks_for(args)
        if not tasks:
            raise ValueError("no videos to prep: the lists or annotation files are empty")
        if args.reencode and args.store != "video":
            raise ValueError("--reencode re-encodes stored videos: it needs --store video")
        decode = DecodeOptions(short_side=args.short_side, fps=args.fps, quality=args.quality, chroma=args.chroma,
                               encoder=args.encoder, store=args.store, min_frames=args.min_frames, reencode=args.reencode)
        job = JobOptions(fmt=args.format, shard_bytes=args.shard_size, workers=args.workers, part=args.part,
                         progress=not args.no_progress, chunk_bytes=args.chunk_size,
                         dataset="" if args.command == "videos" else args.command, run=getattr(args, "run", ""))
        return run_prep(number_tasks(tasks), classes, args.out, decode, job)


def main(argv=None) -> int:
    return run_main("prep", _main, argv)


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "verify":
        from .verify import report

        return report(args.out, workers=args.workers)
    if args.command == "merge":
        summary = remote_upload.merge_remote(args.out) if remote.is_remote(args.out) else merge(args.out)
    elif args.command == "synthetic-images":
        from .synthetic_images import generate_image_folder

        summary = generate_image_folder(args.out, args.per_class, args.val_per_class, args.size, args.seed,
                                        progress=not args.no_progress)
    else:
        summary = _prep(args)
    print(json.dumps(summary))
    return _report_rejects(args, summary) if "max_rejected" in args else 0


def _report_rejects(args, summary: dict) -> int:
    """The rejected videos, on stderr; 1 when they are more than --max-rejected of the run."""
    lines, within = rejects_report(args.out, args.part, summary["stored"], summary["rejected"], args.max_rejected)
    for line in lines:
        print(line, file=sys.stderr)
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
