"""`python -m bench.store`: what each way of storing a dataset costs on disk and per decoded training clip.

Stores of the same synthetic videos (bench.data's Kinetics-like H.264 and SSv2-like VP9 sets):
  frames              prep's default: JPEG frames at short side 256 (quality 90)
  video (source)      --store video: the source bytes as they are (the encoder's keyframe interval, B-frames)
  video --reencode    --store video --reencode h264|vp9: short side 256, a keyframe every 8 frames, no B-frames
For each: MB on disk (shards) against the source files and the frames store; the frames DALI's video decoder
decodes per training clip (TSN, 8 frames): it does not seek, so for a source stream every frame up to the last
sampled one, for a re-encoded one (which the source cuts to the clip, pipelines.gops) the frames from each sampled
frame's keyframe to it; and the measured CPU decode time per clip, one thread: DALI's CPU decoders
(fn.decoders.image for JPEG, fn.decoders.video for VP9) on the pipeline's own source, else (H.264, which DALI
decodes on the GPU only) PyAV decoding the same frames DALI would be handed.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import av
import numpy as np

from bench.data import CONTRACT, DATASETS, make_dataset
from bench.gpu_check import Settings, disk_mb, prepped
from pipelines import AugmentConfig
from pipelines.gops import CONTAINERS, cut_stream, needed_frames
from pipelines.sampling import ClipSpec, clip_indices, sample_rng
from prep import open_dataset
from prep.cli import POSITIVE_INT, add_debug_option, run_main

CODEC_OF = {name: spec["codec"] for name, spec in DATASETS.items()}


def decoded_per_clip(row: dict, indices) -> int:
    """Frames DALI's video decoder decodes for one clip of this stored video."""
    if row.get("store") != "video":
        return len(indices)  # one JPEG per frame
    if row.get("gop") and row.get("codec") in CONTAINERS:
        return len(needed_frames(indices, row["gop"]))
    return int(max(indices)) + 1


def clips(ds, count: int, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """(video, frame indices) of `count` training clips."""
    spec = ClipSpec.of(CONTRACT)
    out = []
    for k in range(count):
        video = k % len(ds)
        out.append((video, clip_indices(ds.rows[video]["num_frames"], spec, True, sample_rng(seed, 0, k))))
    return out


def pyav_ms_per_clip(ds, sample) -> float:
    """PyAV, one thread, decoding what DALI's decoder would: the stream (cut to the clip when re-encoded) from its
    first frame up to the last frame wanted."""
    start = time.perf_counter()
    for video, indices in sample:
        row, data = ds.rows[video], ds.video(video)
        if row.get("gop") and row.get("codec") in CONTAINERS:
            data, indices = cut_stream(data, indices, row["gop"], row["codec"])
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1
            for n, frame in enumerate(container.decode(stream)):
                frame.to_ndarray(format="rgb24")
                if n >= max(indices):
                    break
    return 1000 * (time.perf_counter() - start) / len(sample)


def dali_ms_per_clip(ds, path: str, batch: int, batches: int) -> float:
    """DALI's CPU decoder alone (one thread, one source worker), on the pipeline's own source."""
    from bench.data import time_batches
    from nvidia.dali import fn, pipeline_def

    from pipelines.readers import reader_of
    from pipelines.sampling import EpochPlan
    from pipelines.source import ClipSource, DamageLog

    reader = reader_of(path)
    source = ClipSource(ds, EpochPlan(len(ds), batch, True), ClipSpec.of(CONTRACT), AugmentConfig(), reader,
                        DamageLog(os.devnull))

    @pipeline_def(batch_size=batch * source.samples_per_clip, num_threads=1, device_id=None, py_num_workers=1)
    def decode_only():
        outputs = fn.external_source(source=source, num_outputs=source.num_outputs, batch=False, parallel=True)
        return reader.decode(reader.split(outputs)[0], "cpu", {})

    pipe = decode_only()
    pipe.build()

    def run():
        while True:
            pipe.run()
            yield {"clips": range(batch)}

    return 1000 / time_batches(run(), 2, batches)


def measure(name: str, args) -> list[dict]:
    src, frames = make_dataset(args.cache, name, args.videos, args.workers)
    s = Settings(device_id=None, cache=args.cache, workers=args.workers)
    base = os.path.dirname(frames)
    stores = [("frames (JPEG q90, 256)", frames),
              (f"video: source {CODEC_OF[name]}", prepped(s, src, os.path.join(base, "video"), "video"))]
    stores += [(f"video --reencode {c} (256)", prepped(s, src, os.path.join(base, f"reencoded-{c}"), "video",
                                                      reencode=c)) for c in ("h264", "vp9")]
    source_mb = disk_mb(os.path.join(src, "videos"))
    frames_mb = disk_mb(os.path.join(frames, "shards"))
    rows = []
    for label, out in stores:
        ds = open_dataset(out, "train")
        ds.rows = ds.rows * -(-(args.batch * (args.batches + 3)) // len(ds.rows))
        sample = clips(ds, args.clips)
        video = ds.store == "video"
        codec = ds.rows[0].get("codec", "jpeg")
        decoded = np.mean([decoded_per_clip(ds.rows[v], i) for v, i in sample])
        on_cpu = not video or codec in ("vp8", "vp9")
        ms = dali_ms_per_clip(ds, ds.store, args.batch, args.batches) if on_cpu else pyav_ms_per_clip(ds, sample)
        rows.append({"dataset": name, "store": label, "mb": disk_mb(os.path.join(out, "shards")),
                     "vs_source": disk_mb(os.path.join(out, "shards")) / source_mb,
                     "vs_frames": disk_mb(os.path.join(out, "shards")) / frames_mb, "decoded": float(decoded),
                     "ms": ms, "decoder": "DALI cpu" if on_cpu else "PyAV (DALI: GPU only)"})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'dataset':<9} {'store':<28} {'MB':>7} {'vs source':>10} {'vs frames':>10} {'decoded/clip':>13} "
             f"{'CPU ms/clip':>12}  decoder"]
    lines += [f"{r['dataset']:<9} {r['store']:<28} {r['mb']:>7.1f} {r['vs_source']:>9.2f}x {r['vs_frames']:>9.2f}x "
              f"{r['decoded']:>13.1f} {r['ms']:>12.1f}  {r['decoder']}" for r in rows]
    return "\n".join(lines)


def seek_probe(source: str, repeats: int = 5) -> list[tuple[int, str, float]]:
    """(keyframe interval, frames asked for, ms) of DALI's CPU video decoder on `source` re-encoded as VP9 with a
    keyframe every 8 frames and with one keyframe only: whether the decoder seeks to the keyframe before a frame."""
    from prep.video_store import reencode

    rows = []
    for gop in (8, 10_000):
        encoded = np.frombuffer(reencode(source, 256, "vp9", gop=gop)[0], np.uint8)
        for frames in ([0], [_count_frames(encoded) - 1]):
            pipe = _one_video_pipeline(encoded, frames)
            pipe.run()
            start = time.perf_counter()
            for _ in range(repeats):
                pipe.run()
            rows.append((gop, str(frames), 1000 * (time.perf_counter() - start) / repeats))
    return rows


def _one_video_pipeline(encoded: np.ndarray, frames: list[int]):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        return fn.decoders.video(fn.external_source(source=lambda info: encoded, batch=False),
                                 frames=np.array(frames, np.int32), device="cpu")

    pipe = decode()
    pipe.build()
    return pipe


def _count_frames(encoded: np.ndarray) -> int:
    with av.open(io.BytesIO(encoded.tobytes())) as container:
        return sum(1 for p in container.demux(video=0) if p.size)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.store", description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="kinetics,ssv2")
    p.add_argument("--videos", type=POSITIVE_INT, default=8, help="distinct videos per dataset (multiple of 4)")
    p.add_argument("--clips", type=POSITIVE_INT, default=32, help="clips for the decoded-frames count and PyAV timing")
    p.add_argument("--batch", type=POSITIVE_INT, default=8, help="clips per DALI batch")
    p.add_argument("--batches", type=POSITIVE_INT, default=6, help="timed DALI batches")
    p.add_argument("--workers", type=POSITIVE_INT, default=os.cpu_count() or 1, help="prep processes")
    p.add_argument("--cache", default="data/bench-data", help="shared with bench.data")
    p.add_argument("--probe-seek", action="store_true",
                   help="only time DALI's CPU video decoder on the first and the last frame of one video")
    add_debug_option(p)
    args = p.parse_args(argv)
    if args.probe_seek:
        src, _ = make_dataset(args.cache, "kinetics", args.videos, args.workers)
        video = os.path.join(src, Path(src, "train.txt").read_text().split()[0])
        for gop, frames, ms in seek_probe(video):
            print(f"keyframe every {gop:>5} frames: frames={frames:<6} {ms:6.1f} ms")
        return 0
    rows = [r for name in args.datasets.split(",") for r in measure(name, args)]
    print(f"TSN 8-frame training clips, one decode thread; {args.videos} videos per dataset")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.store", main))
