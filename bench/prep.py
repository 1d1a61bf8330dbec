"""`make bench-prep`: our prep against the classic per-video ffmpeg-to-JPEG-folder extraction.

Both run on the same videos with the same number of processes (one decode thread each):
  baseline: ffmpeg -i VIDEO -vf scale=-2:256 -q:v 2 DIR/%05d.jpg   (one folder per video)
  ours:     python -m prep videos ... --short-side 256 --workers N  (a few LMDB shards + manifest)
Prints one table: frames/s, bytes on disk, files created, and the ratios.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time

import av
import numpy as np
from PIL import Image

from prep import open_dataset
from prep.decode import DecodeOptions
from prep.runner import JobOptions, run_prep
from prep.synthetic import generate
from prep.tasks import number_tasks, parse_video_lists


def _ffmpeg_one(args) -> int:
    video, out_dir = args
    os.makedirs(out_dir, exist_ok=True)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", video,
           "-vf", "scale=-2:256", "-q:v", "2", os.path.join(out_dir, "%05d.jpg")]
    subprocess.run(cmd, check=True)
    return len(os.listdir(out_dir))


def run_ffmpeg(videos: list[str], out: str, workers: int) -> dict:
    jobs = [(v, os.path.join(out, os.path.splitext(os.path.basename(v))[0])) for v in videos]
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        frames = sum(pool.map(_ffmpeg_one, jobs, chunksize=1))
    return {"seconds": time.perf_counter() - start, "frames": frames, **disk_usage(out)}


def run_ours(list_file: str, root: str, out: str, workers: int, fmt: str, quality: int) -> dict:
    tasks, classes = parse_video_lists([f"train={list_file}"], root)
    start = time.perf_counter()
    summary = run_prep(number_tasks(tasks), classes, out, DecodeOptions(short_side=256, quality=quality),
                       JobOptions(fmt=fmt, workers=workers, progress=False))
    return {"seconds": time.perf_counter() - start, "frames": summary["frames_now"], **disk_usage(out)}


def _reference(video: str, size, interpolation: str) -> list[np.ndarray]:
    with av.open(video) as c:
        return [f.reformat(width=size[0], height=size[1], format="rgb24", interpolation=interpolation).to_ndarray()
                for f in c.decode(video=0)]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def quality_ffmpeg(videos: list[str], out: str, sample: int) -> float:
    """Mean PSNR of the JPEGs against the same frames decoded and scaled (bicubic, ffmpeg's default)."""
    scores = []
    for v in videos[:sample]:
        d = os.path.join(out, os.path.splitext(os.path.basename(v))[0])
        jpegs = [np.asarray(Image.open(os.path.join(d, n)).convert("RGB")) for n in sorted(os.listdir(d))]
        ref = _reference(v, jpegs[0].shape[1::-1], "BICUBIC")
        scores += [_psnr(a, b) for a, b in zip(ref, jpegs)]
    return float(np.mean(scores))


def quality_ours(root: str, out: str, sample: int) -> float:
    ds, scores = open_dataset(out), []
    for i in range(min(sample, len(ds))):
        rec = ds.record(i)
        ref = _reference(os.path.join(root, rec["id"]), rec["size"], "AREA")
        jpegs = [np.asarray(Image.open(io.BytesIO(b))) for b in ds.frames(i, range(rec["num_frames"]))]
        scores += [_psnr(a, b) for a, b in zip(ref, jpegs)]
    return float(np.mean(scores))


def disk_usage(path: str) -> dict:
    files = size = 0
    for d, _, names in os.walk(path):
        for n in names:
            if n.endswith("-lock"):
                continue  # LMDB's reader-lock file holds no data
            files += 1
            size += os.stat(os.path.join(d, n)).st_blocks * 512
    return {"files": files, "bytes": size}


def table(rows: dict[str, dict]) -> str:
    base = rows["ffmpeg -q:v 2 -> JPEG folders"]
    lines = [f"{'method':<32}{'frames':>8}{'seconds':>9}{'frames/s':>10}{'PSNR dB':>9}{'MB on disk':>12}{'files':>8}"
             f"{'fps ratio':>11}{'bytes ratio':>13}{'files ratio':>13}"]
    for name, r in rows.items():
        fps = r["frames"] / r["seconds"]
        lines.append(f"{name:<32}{r['frames']:>8}{r['seconds']:>9.1f}{fps:>10.0f}{r['psnr']:>9.1f}{r['bytes'] / 1e6:>12.1f}"
                     f"{r['files']:>8}{fps / (base['frames'] / base['seconds']):>11.2f}"
                     f"{r['bytes'] / base['bytes']:>13.3f}{r['files'] / base['files']:>13.5f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prep", description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each generated video")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--height", type=int, default=320, help="Kinetics-like short side")
    p.add_argument("--width", type=int, default=568)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--format", choices=("lmdb", "arrow"), default="lmdb")
    p.add_argument("--quality", type=int, nargs="+", default=[90, 80], help="JPEG qualities to run prep at")
    p.add_argument("--psnr-videos", type=int, default=3, help="videos whose every frame is checked for PSNR")
    p.add_argument("--dir", default="data/bench-prep")
    args = p.parse_args(argv)
    if not shutil.which("ffmpeg"):
        print("bench-prep: error: ffmpeg not found (Debian: apt-get install ffmpeg)", file=sys.stderr)
        return 2
    src = os.path.join(args.dir, "source")
    made = generate(src, videos=args.videos, frames=int(args.seconds * args.fps), size=(args.height, args.width),
                    fps=args.fps, codec="h264", val_fraction=0.0, workers=args.workers, progress=True)
    videos = [os.path.join(src, line.rsplit(maxsplit=1)[0]) for line in open(made["train"]) if line.strip()]
    shutil.rmtree(os.path.join(args.dir, "out"), ignore_errors=True)
    ff = os.path.join(args.dir, "out", "ffmpeg")
    rows = {"ffmpeg -q:v 2 -> JPEG folders": run_ffmpeg(videos, ff, args.workers)}
    rows["ffmpeg -q:v 2 -> JPEG folders"]["psnr"] = quality_ffmpeg(videos, ff, args.psnr_videos)
    for q in args.quality:
        out = os.path.join(args.dir, "out", f"ours_q{q}")
        row = run_ours(made["train"], src, out, args.workers, args.format, q)
        row["psnr"] = quality_ours(src, out, args.psnr_videos)
        rows[f"prep -> {args.format} shards, q{q}"] = row
    print(f"\n{len(videos)} H.264 videos {args.width}x{args.height}, {args.seconds:g} s at {args.fps} fps; "
          f"short side 256; {args.workers} processes, 1 decode thread each")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
