"""`python -m bench.stages`: where the CPU training pipeline's time goes, stage by stage, in frames per CPU-second.

The frame path of a training batch (TSN multi-scale crop + flip to 8x224, bench.data's setting) is rebuilt one stage
at a time from the pipeline's own functions (pipelines.pipeline.decode_frames, augment.train_transform,
augment.normalize) and run side by side in this process, interleaved, best of --repeats:
  decode                    the crop-window decode (fn.decoders.image_slice) alone: the bound
  + resize (fn.resize)      the window brought to 224 by fn.resize, antialiased: the path before resize_window's warp
  + resize + normalise      ... then crop_mirror_normalize: the whole frame path before
  + resize_window           the window brought to 224 by augment.resize_window (OpenCV's warp, fn.resize beyond it)
  + resize_window + normal. the whole frame path now
These stage graphs take the same frames and parameter vectors, fed from memory on --threads threads (one by
default, as the decode bound of bench.data). Below them the full loader (build_loader: parallel source workers
reading the shards, the whole graph) before (exact_resize) and now, whose CPU time counts its workers too.
Every rate is frames over CPU seconds (this process, its threads and its live and exited children), which load from
other processes barely moves; the share is a row's rate over the decode row's.

Datasets: "kinetics", bench.data's synthetic Kinetics-like videos (flat shapes: ~9 KB JPEG frames, cheap to
decode), and "photo", H.264 videos panning across the photograph matplotlib bundles (grace_hopper.jpg), prepped
the same way (~30 KB frames, closer to real video frames' decode cost).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys

import numpy as np

from bench.data import AUGMENT, CONTRACT, make_dataset, replayed, tree_cpu_seconds
from pipelines import build_loader
from prep.cli import COUNT, POSITIVE_FLOAT, POSITIVE_INT, add_debug_option, run_main
from prep.decode import DecodeOptions
from prep.runner import JobOptions, run_prep
from prep.synthetic import encode_video
from prep.tasks import number_tasks, parse_video_lists

STAGES = ("decode", "resize", "normalise")
PHOTO_SIZE = (568, 320)  # width, height: Kinetics' common 16:9 size, prepped to 454x256 like bench.data's set


# --------------------------------------------------------------------------------------------- data


def _photo_frames(count: int, phase: float):
    """Frames of a slow pan and zoom across matplotlib's bundled photograph (RGB, PHOTO_SIZE)."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:  # PIL closes what it opens
        photo = image.convert("RGB")
    width, height = photo.size
    for t in range(count):
        u = (t / count + phase) % 1.0
        box_w = width * (0.8 + 0.2 * u)
        box_h = box_w * PHOTO_SIZE[1] / PHOTO_SIZE[0]
        y = (height - box_h) * u
        x = (width - box_w) * (1 - u)
        yield np.asarray(photo.resize(PHOTO_SIZE, Image.BICUBIC, box=(x, y, x + box_w, y + box_h)))


def make_photo_dataset(cache: str, videos: int, workers: int) -> str:
    """The prepped folder of `videos` photo-pan videos (150 frames at 30 fps), made and prepped once per cache."""
    src, out = os.path.join(cache, "photo", "source"), os.path.join(cache, "photo", "prepped")
    if not os.path.exists(os.path.join(src, "train.txt")):
        os.makedirs(os.path.join(src, "videos"), exist_ok=True)
        names = [f"videos/photo_{k:03d}.mp4" for k in range(videos)]
        for k, name in enumerate(names):
            encode_video(os.path.join(src, name), _photo_frames(150, k / max(1, videos)), fps=30)
        with open(os.path.join(src, "classes.txt"), "w") as f:
            f.write("photo\n")
        with open(os.path.join(src, "train.txt"), "w") as f:
            f.writelines(f"{name} photo\n" for name in names)
    if not os.path.exists(os.path.join(out, "manifest.jsonl")):
        tasks, classes = parse_video_lists([f"train={src}/train.txt"], src, os.path.join(src, "classes.txt"))
        run_prep(number_tasks(tasks), classes, out, DecodeOptions(short_side=256),
                 JobOptions(workers=workers, progress=False))
    return out


def _prepped(name: str, args) -> str:
    if name == "photo":
        return make_photo_dataset(args.cache, args.videos, args.workers)
    return make_dataset(args.cache, name, args.videos, args.workers)[1]


def training_frames(loader, clips: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The JPEG frames and parameter vectors (one per frame, its clip's) of the loader's first `clips` clips of
    epoch 0, drawn as its source draws them."""
    source = loader.clip_source(0)
    jpegs, params = [], []
    for video in range(min(clips, loader.num_videos)):
        *frames, _, vector = source.sample(video, 0, 0)
        jpegs += frames
        params += [vector] * len(frames)
    return jpegs, params


# --------------------------------------------------------------------------------------------- stages


def stage_pipeline(graph, stage: str, jpegs, params, batch: int, threads: int):
    """A built DALI pipeline running the frame path up to `stage` on `jpegs`/`params`, cycled from memory."""
    from nvidia.dali import fn, pipeline_def

    from pipelines.augment import normalize, output_layout, train_transform
    from pipelines.pipeline import decode_frames

    n = len(jpegs) // batch * batch
    if n == 0:
        raise ValueError(f"the stages need at least {batch} frames, got {len(jpegs)}")
    feeds = [(jpegs[k:k + batch], params[k:k + batch]) for k in range(0, n, batch)]

    def feed():
        while True:
            yield from feeds

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=1,
                  enable_conditionals=stage != "decode" and not graph.exact_resize)
    def frame_path():
        jpeg, vector = fn.external_source(source=feed, num_outputs=2)
        data = decode_frames(jpeg, vector, graph, cropped=True)
        if stage == "decode":
            return data
        data, mirror = train_transform(data, vector, graph.crop_size, graph.augment, True, graph.exact_resize)
        if stage == "resize":
            return data
        return normalize(data, graph.mean, graph.std, output_layout(graph.layout, per_frame=True), graph.dali_dtype,
                         mirror)

    pipe = frame_path()
    pipe.build()
    return pipe


def run_stage(pipe, frames_per_run: int, frames: int, seconds: float) -> float:
    """Frames per CPU-second of `pipe` over at least `frames` frames and `seconds` CPU seconds, after a warm-up."""
    pipe.run()
    cpu, done = tree_cpu_seconds(), 0
    while done < frames or tree_cpu_seconds() - cpu < seconds:
        pipe.run()
        done += frames_per_run
    return done / (tree_cpu_seconds() - cpu)


def run_loader(loader, warmup: int, batches: int) -> float:
    """Frames per CPU-second of the full loader (its workers included) over `batches` batches after `warmup`."""
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    cpu, clips = tree_cpu_seconds(), 0
    for _ in range(batches):
        clips += len(next(iterator)["clips"])
    return clips * CONTRACT.num_frames / (tree_cpu_seconds() - cpu)


# --------------------------------------------------------------------------------------------- report


def _rows(name: str, args) -> list[tuple[str, object]]:
    """(row label, run) of one dataset, in table order; run() -> frames per CPU-second."""
    ds = replayed(_prepped(name, args), (args.warmup + args.batches + 2) * args.batch_size)

    def loader(exact: bool):
        made = build_loader(ds, "train", CONTRACT, args.batch_size, True, num_threads=args.threads, py_workers=1,
                            augment=AUGMENT)
        made.graph = dataclasses.replace(made.graph, exact_resize=exact)
        return made

    probe = loader(False)
    jpegs, params = training_frames(probe, args.clips)
    batch = args.batch_size * CONTRACT.num_frames
    rows = []
    for exact, label in ((True, "fn.resize"), (False, "resize_window")):
        graph = dataclasses.replace(probe.graph, exact_resize=exact)
        for stage in STAGES[int(not exact):]:  # one decode row: it does not depend on the resize
            pipe = stage_pipeline(graph, stage, jpegs, params, batch, args.threads)
            title = {"decode": "decode (crop window)", "resize": f"+ resize ({label})",
                     "normalise": f"+ resize ({label}) + normalise"}[stage]
            rows.append((title, lambda pipe=pipe: run_stage(pipe, batch, len(jpegs), args.seconds)))
    probe.close()
    for exact, label in ((True, "before: fn.resize"), (False, "now: resize_window")):
        made = loader(exact)
        rows.append((f"full loader ({label})", lambda made=made: run_loader(made, args.warmup, args.batches)))
    return rows


def measure(name: str, args) -> list[dict]:
    rows = _rows(name, args)
    best = [0.0] * len(rows)
    for _ in range(args.repeats):  # interleaved, best of: other load on the machine only ever slows a run down
        for k, (label, run) in enumerate(rows):
            best[k] = max(best[k], run())
            print(f"  {name:<9} {label:<40} {best[k]:8.0f} frames/CPU-s", file=sys.stderr, flush=True)
    gc.collect()
    return [{"dataset": name, "stage": label, "rate": rate} for (label, _), rate in zip(rows, best)]


def table(rows: list[dict]) -> str:
    """Markdown: frames per CPU-second, ms per frame, and the share of the decode bound, per stage."""
    lines = ["| dataset | stage | frames / CPU-s | ms / frame | share of decode bound |", "|---|---|---|---|---|"]
    bound = {r["dataset"]: r["rate"] for r in rows if r["stage"].startswith("decode")}
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['stage']} | {r['rate']:.0f} | {1000 / r['rate']:.3f} | "
                     f"{r['rate'] / bound[r['dataset']]:.2f} |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["kinetics", "photo"], choices=["kinetics", "photo"])
    p.add_argument("--cache", default="data/bench-data",
                   help="where the generated and prepped datasets are kept (bench.data's, which has the kinetics set)")
    p.add_argument("--videos", type=POSITIVE_INT, default=16, help="videos per generated dataset")
    p.add_argument("--workers", type=POSITIVE_INT, default=2, help="processes for generating and prepping the datasets")
    p.add_argument("--threads", type=POSITIVE_INT, default=1, help="DALI CPU threads of every row")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="clips per batch (x8 frames)")
    p.add_argument("--clips", type=POSITIVE_INT, default=64, help="clips whose frames the stage rows cycle through")
    p.add_argument("--seconds", type=POSITIVE_FLOAT, default=3.0, help="CPU seconds per stage run, at least")
    p.add_argument("--warmup", type=COUNT, default=2, help="loader batches before timing")
    p.add_argument("--batches", type=POSITIVE_INT, default=12, help="timed loader batches")
    p.add_argument("--repeats", type=POSITIVE_INT, default=3, help="interleaved runs per row; the best is kept")
    add_debug_option(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [row for name in args.datasets for row in measure(name, args)]
    print(f"frames per CPU-second, {args.threads} DALI thread(s), batch {args.batch_size} x {CONTRACT.num_frames} "
          f"frames at {CONTRACT.crop_size}, best of {args.repeats}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.stages", main))
