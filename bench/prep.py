"""`make bench-prep`: prep's JPEG encoders against the classic per-video ffmpeg-to-JPEG-folder extraction.

At each source size (320p, 720p and 1080p by default) the same synthetic H.264 videos go through, with the same
number of processes and one thread each:
  ffmpeg    ffmpeg -threads 1 -filter_threads 1 -i VIDEO -vf scale=-2:256 -q:v 2 DIR/%05d.jpg  (a folder per video)
  prep pil  prep's first path: swscale to RGB, Pillow encodes with optimized Huffman tables  (encoder="pil")
  prep yuv  prep's default: scaled in YUV to JPEG's colours, libjpeg-turbo encodes the planes (simplejpeg)
Prints per method: frames per CPU-second (the process and all its children, from getrusage: what a busy machine
barely changes), wall frames/s, PSNR, JPEG bytes per frame, and the ratios to ffmpeg. PSNR is against each frame
scaled by the method's own filter (area: prep, bicubic: ffmpeg) from an exact RGB image; in brackets, against
swscale's fast RGB output, the first reference (the pil path's own encoder input). `--profile` adds where a frame's
time goes, stage by stage (decode, scale + convert, encode, write), in both prep paths and in ffmpeg.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image

from prep import open_dataset
from prep.cli import COUNT, JPEG_QUALITY, POSITIVE_FLOAT, POSITIVE_INT, add_debug_option, int_range, run_main
from prep.decode import DecodeOptions, PilJpeg, make_encoder, target_size
from prep.runner import JobOptions, run_prep
from prep.store import FrameSpool
from prep.synthetic import generate
from prep.tasks import number_tasks, parse_video_lists

FFMPEG = "ffmpeg -q:v 2"


def cpu_seconds() -> float:
    """User + system time of this process and of every child it has waited for (and theirs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _ffmpeg_one(args) -> int:
    video, out_dir, short_side = args
    os.makedirs(out_dir, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-filter_threads", "1", "-i", video,
           "-vf", f"scale=-2:{short_side}", "-q:v", "2", os.path.join(out_dir, "%05d.jpg")]
    subprocess.run(cmd, check=True)
    return len(os.listdir(out_dir))


def run_ffmpeg(videos: list[str], out: str, workers: int, short_side: int) -> dict:
    jobs = [(v, os.path.join(out, os.path.splitext(os.path.basename(v))[0]), short_side) for v in videos]
    cpu, start = cpu_seconds(), time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:  # leaving it reaps the workers: their CPU time is counted
        frames = sum(pool.map(_ffmpeg_one, jobs, chunksize=1))
    jpeg = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(out) for n in names)
    return {"wall": time.perf_counter() - start, "cpu": cpu_seconds() - cpu, "frames": frames, "jpeg_bytes": jpeg,
            **disk_usage(out)}


def run_ours(list_file: str, root: str, out: str, *, job: JobOptions, decode: DecodeOptions) -> dict:
    tasks, classes = parse_video_lists([f"train={list_file}"], root)
    cpu, start = cpu_seconds(), time.perf_counter()
    summary = run_prep(number_tasks(tasks), classes, out, decode, job)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    ds = open_dataset(out)
    jpeg = sum(len(b) for i in range(len(ds)) for b in ds.frames(i, range(ds.record(i)["num_frames"])))
    return {"wall": wall, "cpu": cpu, "frames": summary["frames_now"], "jpeg_bytes": jpeg, **disk_usage(out)}


def disk_usage(path: str) -> dict:
    files = size = 0
    for d, _, names in os.walk(path):
        for n in names:
            if n.endswith("-lock"):
                continue  # LMDB's reader-lock file holds no data
            files += 1
            size += os.stat(os.path.join(d, n)).st_blocks * 512
    return {"files": files, "disk": size}


# ----------------------------------------------------------------------------------------------------------------
# quality

_EXACT = Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND


@functools.lru_cache(maxsize=4)  # the prep rows share theirs
def references(video: str, size: tuple[int, int], interpolation: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each frame scaled by the method's own filter, twice: from an exact RGB image (chroma upsampled at full
    resolution, accurate rounding), and by swscale's fast RGB output (the reference bench.prep used first: the
    pil path's own input to the encoder, so it sees only that path's JPEG loss)."""
    w, h = size
    exact, fast = [], []
    with av.open(video) as c:
        for f in c.decode(video=0):
            rgb = f.reformat(format="rgb24", interpolation=_EXACT | Interpolation.BICUBIC)
            exact.append(rgb.reformat(width=w, height=h, interpolation=_EXACT | Interpolation[interpolation])
                         .to_ndarray())
            fast.append(f.reformat(width=w, height=h, format="rgb24", interpolation=interpolation).to_ndarray())
    return exact, fast


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def _scores(video: str, jpegs: list[bytes], interpolation: str) -> tuple[list[float], list[float]]:
    got = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
    exact, fast = references(video, tuple(got[0].shape[1::-1]), interpolation)
    return [psnr(a, b) for a, b in zip(exact, got)], [psnr(a, b) for a, b in zip(fast, got)]


def quality_ffmpeg(videos: list[str], out: str, sample: int) -> tuple[float, float]:
    """Mean PSNR over every frame of the first `sample` videos (bicubic references: ffmpeg's default scaler)."""
    exact, fast = [], []
    for v in videos[:sample]:
        d = os.path.join(out, os.path.splitext(os.path.basename(v))[0])
        jpegs = [Path(d, n).read_bytes() for n in sorted(os.listdir(d))]
        e, f = _scores(v, jpegs, "BICUBIC")
        exact, fast = exact + e, fast + f
    return float(np.mean(exact)), float(np.mean(fast))


def quality_ours(root: str, out: str, sample: int) -> tuple[float, float]:
    ds, exact, fast = open_dataset(out), [], []
    for i in range(min(sample, len(ds))):
        rec = ds.record(i)
        e, f = _scores(os.path.join(root, rec["id"]), ds.frames(i, range(rec["num_frames"])), "AREA")
        exact, fast = exact + e, fast + f
    return float(np.mean(exact)), float(np.mean(fast))


# ----------------------------------------------------------------------------------------------------------------
# where the time goes

STAGES = ("decode", "scale", "encode", "write")


def profile_stages(videos: list[str], decode: DecodeOptions) -> dict:
    """CPU seconds per stage over every frame of `videos`, in this process, with prep's decoder settings. The pil
    path also encodes each frame without optimized Huffman tables: `plain` seconds and bytes against `bytes`."""
    spent, frames = {**dict.fromkeys(STAGES, 0.0), "plain": 0.0, "bytes": 0, "plain_bytes": 0}, 0
    with tempfile.TemporaryDirectory() as tmp:
        for video in videos:
            spool, digest, crcs = FrameSpool(tmp), hashlib.sha1(), []
            with av.open(video) as c:
                stream = c.streams.video[0]
                stream.thread_type, stream.codec_context.thread_count = "AUTO", 1  # as prep.decode
                stream.codec_context.options = {"err_detect": "careful"}
                frames_in, encoder = c.decode(stream), None
                while True:
                    t0 = time.process_time()
                    frame = next(frames_in, None)
                    t1 = time.process_time()
                    spent["decode"] += t1 - t0
                    if frame is None:
                        break
                    if encoder is None:
                        encoder = make_encoder(*target_size(frame.width, frame.height, decode.short_side), decode)
                        plain = (PilJpeg(*encoder.size, encoder.chroma, encoder.quality, optimize=False)
                                 if isinstance(encoder, PilJpeg) else None)
                    scaled = encoder.scale(frame)
                    t2 = time.process_time()
                    jpeg = encoder.encode(scaled)
                    t3 = time.process_time()
                    spent["scale"] += t2 - t1
                    spent["encode"] += t3 - t2
                    spent["bytes"] += len(jpeg)
                    if plain is not None:
                        spent["plain_bytes"] += len(plain.encode(scaled))
                        spent["plain"] += time.process_time() - t3
                        t3 = time.process_time()
                    spool.append(jpeg)  # what prep.decode does with each frame
                    crcs.append(zlib.crc32(jpeg))
                    digest.update(jpeg)
                    spent["write"] += time.process_time() - t3
                    frames += 1
            spool.finish().discard()
    return {"frames": frames, **spent}


FFMPEG_STEPS = {  # each run adds one step to the one before; their differences are the steps' costs
    "start": ["-frames:v", "1", "-f", "null", "-"],  # start the process, open the file, decode one frame
    "decode": ["-f", "null", "-"],
    "scale": ["-vf", "scale=-2:{s}", "-f", "null", "-"],
    "encode+write": ["-vf", "scale=-2:{s}", "-q:v", "2", "{out}/%05d.jpg"],
}


def profile_ffmpeg(videos: list[str], frames: int, short_side: int) -> dict:
    """CPU ms per frame of each step of ffmpeg's extraction, one video after another."""
    spent, before = {}, 0.0
    with tempfile.TemporaryDirectory() as out:
        for step, tail in FFMPEG_STEPS.items():
            cpu = cpu_seconds()
            for video in videos:
                for name in os.listdir(out):
                    os.remove(os.path.join(out, name))
                subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-filter_threads", "1",
                                "-i", video, *(t.format(s=short_side, out=out) for t in tail)], check=True)
            total = 1e3 * (cpu_seconds() - cpu) / frames
            spent[step], before = total - before, total
    return spent


# ----------------------------------------------------------------------------------------------------------------
# the tables


def table(rows: dict[str, dict]) -> str:
    base = rows[FFMPEG]
    base_cpu, base_wall = base["frames"] / base["cpu"], base["frames"] / base["wall"]
    lines = [f"{'method':<22}{'frames':>7}{'fr/CPU-s':>10}{'wall fr/s':>10}{'PSNR dB':>9}{'(fast ref)':>11}"
             f"{'KB/frame':>10}{'MB disk':>9}{'files':>7}{'CPU ratio':>11}{'wall ratio':>11}{'bytes ratio':>12}"]
    for name, r in rows.items():
        per_cpu, per_wall = r["frames"] / r["cpu"], r["frames"] / r["wall"]
        lines.append(f"{name:<22}{r['frames']:>7}{per_cpu:>10.0f}{per_wall:>10.0f}{r['psnr'][0]:>9.2f}"
                     f"{r['psnr'][1]:>11.2f}{r['jpeg_bytes'] / r['frames'] / 1e3:>10.2f}{r['disk'] / 1e6:>9.1f}"
                     f"{r['files']:>7}{per_cpu / base_cpu:>11.2f}{per_wall / base_wall:>11.2f}"
                     f"{(r['jpeg_bytes'] / r['frames']) / (base['jpeg_bytes'] / base['frames']):>12.3f}")
    return "\n".join(lines)


def profile_table(profiles: dict[str, dict], end_to_end: dict[str, dict]) -> str:
    """ms of CPU per frame by stage; `rest`: the end-to-end run's CPU per frame beyond the stages (the writer
    process, handing the frames over, the pool)."""
    lines = [f"{'path':<22}" + "".join(f"{s:>9}" for s in STAGES) + f"{'sum':>9}{'prep run':>10}{'rest':>8}"]
    for name, p in profiles.items():
        ms = {s: 1e3 * p[s] / p["frames"] for s in STAGES}
        total = sum(ms.values())
        run = end_to_end.get(name)
        whole = 1e3 * run["cpu"] / run["frames"] if run else float("nan")
        lines.append(f"{name:<22}" + "".join(f"{ms[s]:>9.3f}" for s in STAGES)
                     + f"{total:>9.3f}{whole:>10.3f}{whole - total:>8.3f}")
        if p["plain_bytes"]:
            extra = 1e3 * (p["encode"] - p["plain"]) / p["frames"]
            lines.append(f"  optimized Huffman tables: {extra:+.3f} ms a frame to encode, "
                         f"{100 * (p['bytes'] / p['plain_bytes'] - 1):+.1f}% bytes")
    return "\n".join(lines)


def sources(args, height: int) -> tuple[str, str, list[str], str]:
    """The synthetic videos at `height` (16:9), made once: (root, list file, videos, description)."""
    width = int(round(height * 16 / 9 / 2)) * 2
    crf = "" if args.crf is None else f"-crf{args.crf}"
    src = os.path.join(args.dir, f"source{height}p-{args.videos}x{args.seconds:g}s{args.fps}{crf}")
    train = os.path.join(src, "train.txt")
    if not os.path.exists(train):  # generation is seeded: a finished one (lists come last) is reused
        generate(src, videos=args.videos, frames=int(args.seconds * args.fps), size=(height, width), fps=args.fps,
                 codec="h264", val_fraction=0.0, workers=args.workers, progress=False, crf=args.crf)
    videos = [os.path.join(src, line.rsplit(maxsplit=1)[0]) for line in Path(train).read_text().splitlines()
              if line.strip()]
    mbps = sum(os.path.getsize(v) for v in videos) * 8 / (len(videos) * args.seconds) / 1e6
    return src, train, videos, (f"{len(videos)} H.264 videos {width}x{height} ({mbps:.1f} Mbit/s on average), "
                                f"{args.seconds:g} s at {args.fps} fps")


def measure(args, src: str, train: str, videos: list[str], outs: str) -> dict[str, dict]:
    """Every method `--repeat` times, interleaved (a burst of load elsewhere hits them alike); the least CPU time
    and the least wall time of each are kept. Then PSNR of each method's (deterministic) output."""
    job = JobOptions(fmt=args.format, workers=args.workers, progress=False)
    methods = {(FFMPEG, "ffmpeg"): lambda out: run_ffmpeg(videos, out, args.workers, args.short_side)}
    for encoder, q in [("pil", q) for q in args.pil_quality] + [("yuv", q) for q in args.quality]:
        decode = DecodeOptions(short_side=args.short_side, quality=q, encoder=encoder)
        methods[f"prep {encoder} q{q}", f"{encoder}_q{q}"] = functools.partial(run_ours, train, src, job=job,
                                                                                 decode=decode)
    rows = {}
    for repeat in range(args.repeat):
        for (name, folder), run in methods.items():
            shutil.rmtree(os.path.join(outs, f"{folder}-{repeat - 1}"), ignore_errors=True)
            row = run(os.path.join(outs, f"{folder}-{repeat}"))  # a new folder: readers of the last stay valid
            best = rows.setdefault(name, row)
            best["cpu"], best["wall"] = min(best["cpu"], row["cpu"]), min(best["wall"], row["wall"])
    for name, folder in methods:
        out = os.path.join(outs, f"{folder}-{args.repeat - 1}")
        quality = quality_ffmpeg(videos, out, args.psnr_videos) if name == FFMPEG else \
            quality_ours(src, out, args.psnr_videos)
        rows[name]["psnr"] = quality
    return rows


def bench_size(args, height: int) -> dict[str, dict]:
    src, train, videos, what = sources(args, height)
    outs = os.path.join(args.dir, f"out{height}p")
    shutil.rmtree(outs, ignore_errors=True)
    rows = measure(args, src, train, videos, outs)
    print(f"\n{what} -> short side {args.short_side}; {args.workers} processes, 1 thread each; prep into "
          f"{args.format} shards; best of {args.repeat}")
    print(table(rows), flush=True)
    if args.profile:
        profile(args, videos[:args.profile], rows)
    return rows


def profile(args, videos: list[str], rows: dict[str, dict]) -> None:
    """The stage profile of each prep path (at its first quality) and of ffmpeg, printed."""
    profiles = {}
    for encoder, q in [("yuv", args.quality[0])] + [("pil", q) for q in args.pil_quality[:1]]:
        decode = DecodeOptions(short_side=args.short_side, quality=q, encoder=encoder)
        profiles[f"prep {encoder} q{q}"] = profile_stages(videos, decode)
    print(f"CPU ms per frame by stage ({len(videos)} videos, one process):")
    print(profile_table(profiles, rows), flush=True)
    ff = profile_ffmpeg(videos, next(iter(profiles.values()))["frames"], args.short_side)
    print(f"{FFMPEG:<22}" + "".join(f"{k}={v:.3f}  " for k, v in ff.items()) + f"sum={sum(ff.values()):.3f}",
          flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prep", description=__doc__.splitlines()[0])
    p.add_argument("--heights", type=POSITIVE_INT, nargs="+", default=[320, 720, 1080], help="source heights (16:9)")
    p.add_argument("--videos", type=POSITIVE_INT, default=10, help="videos per size (a multiple of 10)")
    p.add_argument("--seconds", type=POSITIVE_FLOAT, default=4.0, help="length of each generated video")
    p.add_argument("--fps", type=POSITIVE_INT, default=30)
    p.add_argument("--crf", type=int_range(0, 63), default=None, help="x264 CRF of the generated videos (default: prep.synthetic's)")
    p.add_argument("--short-side", type=COUNT, default=256)
    p.add_argument("--workers", type=POSITIVE_INT, default=os.cpu_count() or 1)
    p.add_argument("--format", choices=("lmdb", "arrow"), default="lmdb")
    p.add_argument("--quality", type=JPEG_QUALITY, nargs="+", default=[90, 80], help="JPEG qualities of the yuv encoder")
    p.add_argument("--pil-quality", type=JPEG_QUALITY, nargs="*", default=[90], help="JPEG qualities of the pil encoder")
    p.add_argument("--repeat", type=POSITIVE_INT, default=1, help="runs of each method, interleaved; the best is kept")
    p.add_argument("--psnr-videos", type=COUNT, default=2, help="videos whose every frame is checked for PSNR")
    p.add_argument("--profile", type=COUNT, default=10, help="videos to profile stage by stage (0: none)")
    p.add_argument("--dir", default="data/bench-prep")
    add_debug_option(p)
    args = p.parse_args(argv)
    if not shutil.which("ffmpeg"):
        print("bench-prep: error: ffmpeg not found (Debian: apt-get install ffmpeg)", file=sys.stderr)
        return 2
    if not args.quality or args.videos % 10 or args.psnr_videos < 1 or args.profile < 0 or args.repeat < 1:
        p.error("--quality needs a value, --videos a multiple of 10, --psnr-videos and --repeat >= 1, --profile >= 0")
    for height in args.heights:
        bench_size(args, height)
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.prep", main))
