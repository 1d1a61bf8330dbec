"""`make bench-data`: training clips of our DALI pipeline against what a user would run instead.

All methods produce the same training batches: TSN sampling of 8 frames, TSN multi-scale crop + horizontal
flip, resized to 224, normalized, batch 16, with the same sampling and crop-box code (pipelines.sampling,
pipelines.augment) and the same number of worker processes:
  dali cpu       our pipeline on the JPEG-frame shards, CPU decoding (only each JPEG's crop box is decoded)
  dali mixed     the same with nvJPEG on the GPU (only with CUDA), plus a bare nvJPEG decode of the same frames: a
                 DALI pipeline with the same source and one fn.decoders.image(device="mixed") over the B x T frames
                 of each batch and nothing else, the ceiling the full pipeline is measured against (goal >= 0.8)
  the seeds' loaders, step for step (bench.baselines): IBM action-recognition-pytorch's VideoDataSet and
                 transforms on the same shards (per-frame PIL decode, crop, resize, float conversion and
                 normalisation in the workers), mmaction2's decord and PyAV video pipelines on the source videos
  lean baselines: DataLoaders decoding with PIL (shards), PyAV, decord or torchcodec (videos), uint8 out of the
                 workers and normalized in the main process, the strongest arrangement we could build on each
DALI's CPU threads match the baselines' worker processes; its Python source workers (which only read stored bytes)
are a quarter of them, as `pipelines.resources.host_threads` gives a rank by default.

Every row reports wall clips/s and frames per CPU-second: the CPU time of this process (all its threads) and of
every worker process (live ones read from /proc/<pid>/stat, exited ones from RUSAGE_CHILDREN), over the timed
batches only. CPU time hardly moves when other processes share the cores, so on a shared machine the per-CPU-second
ratios are the ones to trust. The decode bound is a decode-only run of the same frames on one thread: DALI's
crop-window decode (the training path's decoder), with PIL's whole-frame decode beside it.
Datasets: synthetic videos shaped like Kinetics (H.264, 568x320, 10 s at 30 fps) and Something-Something v2
(VP9, 426x240, 4 s at 12 fps), prepped at short side 256. Small sets are replayed (manifest rows repeated)
so that one epoch spans the timed batches; everything reads from the page cache alike.
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import resource
import sys
import time
import warnings
from collections import defaultdict
from typing import NamedTuple

import numpy as np
import torch

from bench.baselines import (AUGMENT, BASELINES, CONTRACT, SEEDS, BaselineClips, clip_plan, crop_box, missing,
                             normalized)
from pipelines import build_loader
from pipelines.resources import HW_DECODER_LOAD, host_threads, image_decoder_args, largest_frame
from pipelines.sampling import ClipSpec
from prep import open_dataset
from prep.cli import POSITIVE_FLOAT, POSITIVE_INT, add_debug_option, run_main
from prep.decode import DecodeOptions
from prep.runner import JobOptions, run_prep
from prep.synthetic import generate
from prep.tasks import number_tasks, parse_video_lists

__all__ = ["AUGMENT", "CONTRACT", "DATASETS", "BaselineClips", "bare_ratios", "make_dataset", "measure",
           "normalized", "parse_args", "table", "time_batches", "tree_cpu_seconds"]

DATASETS = {  # name -> synthetic.generate arguments
    "kinetics": {"codec": "h264", "size": (320, 568), "frames": 300, "fps": 30},
    "ssv2": {"codec": "vp9", "size": (240, 426), "frames": 48, "fps": 12},
}


# --------------------------------------------------------------------------------------------- data


def make_dataset(cache: str, name: str, videos: int, workers: int) -> tuple[str, str]:
    """(source folder, prepped folder) of one dataset, generated and prepped once per cache."""
    src, out = os.path.join(cache, name, "source"), os.path.join(cache, name, "prepped")
    if not os.path.exists(os.path.join(src, "train.txt")):
        generate(src, videos=videos, classes=4, val_fraction=0, workers=workers, progress=False, **DATASETS[name])
    with open(os.path.join(src, "train.txt")) as f:
        cached = sum(1 for line in f if line.strip())
    if cached != videos:
        print(f"{name}: using the {cached} videos cached in {src}, not {videos} (another --cache makes new ones)",
              file=sys.stderr)
    if not os.path.exists(os.path.join(out, "manifest.jsonl")):
        tasks, classes = parse_video_lists([f"train={src}/train.txt"], src, os.path.join(src, "classes.txt"))
        run_prep(number_tasks(tasks), classes, out, DecodeOptions(short_side=256),
                 JobOptions(workers=workers, progress=False))
    return src, out


def replayed(out: str, samples: int):
    """The train split with its rows repeated until it holds at least `samples` clips."""
    ds = open_dataset(out, "train")
    ds.rows = ds.rows * -(-samples // len(ds.rows))
    return ds


# --------------------------------------------------------------------------------------------- CPU time

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process's threads and of its reaped children) from /proc; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(b")") + 2:].split()  # fields[0] is stat's 3rd field; the name may hold spaces
    return int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICK  # utime, stime, cutime, cstime


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads), its exited children, and every live descendant.

    getrusage's RUSAGE_CHILDREN counts a child only once it has exited and been waited for, so DataLoader and DALI
    workers, alive throughout a measurement, are read from /proc/<pid>/stat. A worker that exits in between moves
    from the /proc sum into RUSAGE_CHILDREN with its whole time, so differences stay right."""
    if not os.path.isdir("/proc/self"):
        raise RuntimeError("counting worker CPU time needs Linux's /proc")
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    children = defaultdict(list)
    seconds = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _proc_stat(int(name))) is not None:
            children[stat[0]].append(int(name))
            seconds[int(name)] = stat[1]
    total, todo = 0.0, list(children[os.getpid()])
    while todo:
        pid = todo.pop()
        total += seconds[pid]
        todo += children[pid]
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + total


# --------------------------------------------------------------------------------------------- timing


class Rate(NamedTuple):
    clips_per_s: float  # wall clock
    frames_per_cpu_s: float  # frames over the CPU time of this process and its workers


def measure_batches(batches, warmup: int, count: int, sync=None, max_seconds: float = float("inf"),
                    min_count: int = 1, step: int = 1) -> Rate:
    """Rates over up to `count` batches after `warmup` batches; stops after `max_seconds` once `min_count`
    batches are timed (the slow video decoders would otherwise dominate the run), and only after a multiple of
    `step` batches: N DataLoader workers make N batches side by side, so a window that ends between two rounds
    would count the CPU time of a round it did not take."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    if sync:
        sync()
    cpu, start, clips = tree_cpu_seconds(), time.perf_counter(), 0
    for n in range(count):
        clips += len(next(iterator)["clips"])
        if n + 1 >= min_count and (n + 1) % step == 0 and time.perf_counter() - start > max_seconds:
            break
    if sync:
        sync()
    wall, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    return Rate(clips / wall, clips * CONTRACT.num_frames / max(cpu, 1e-9))


def time_batches(batches, warmup: int, count: int, sync=None) -> float:
    """Clips per second (wall) over `count` batches after `warmup` batches."""
    return measure_batches(batches, warmup, count, sync).clips_per_s


def _timed(batches, args, sync=None, step: int = 1) -> Rate:
    """measure_batches with the run's settings; warm-up and counts in whole rounds of `step` batches."""
    rounds = lambda n: -(-n // step) * step  # noqa: E731
    return measure_batches(batches, rounds(args.warmup), rounds(args.batches), sync, args.max_seconds,
                           rounds(args.min_batches), step)


def run_dali(ds, args, device_id=None) -> Rate:
    threads, py_workers = host_threads(cores=args.workers, local_ranks=1)
    loader = build_loader(ds, "train", CONTRACT, args.batch_size, True, device_id=device_id,
                          num_threads=threads, py_workers=py_workers, augment=AUGMENT)
    try:
        return _timed(loader, args, torch.cuda.synchronize if device_id is not None else None)
    finally:
        loader.close()


def run_baseline(ds, source_root: str, name: str, args) -> Rate:
    """One of bench.baselines.BASELINES in a DataLoader with args.workers processes."""
    dataset = BASELINES[name][3](ds, source_root)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True, prefetch_factor=2,
                                         pin_memory=args.gpu)
    batches = normalized(loader, torch.device("cuda" if args.gpu else "cpu"))
    try:
        return _timed(batches, args, torch.cuda.synchronize if args.gpu else None, step=args.workers)
    finally:
        batches.close()  # shuts the workers down now, before the next method's CPU time is counted
        del batches
        gc.collect()


def run_bare_decode(ds, args, device: str = "mixed") -> Rate:
    """DALI with the training pipeline's parallel source (one sample per frame), decoding the frames with one
    fn.decoders.image(device) and nothing else: the ceiling of the frame path on this decoder."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines.sampling import EpochPlan
    from pipelines.readers import reader_of
    from pipelines.source import ClipSource, DamageLog

    plan = EpochPlan(len(ds), args.batch_size, True)
    source = ClipSource(ds, plan, ClipSpec.of(CONTRACT), AUGMENT, reader_of("frames"), DamageLog(os.devnull))
    threads, py_workers = host_threads(cores=args.workers, local_ranks=1)
    decoder = image_decoder_args(device, HW_DECODER_LOAD, largest_frame(ds.rows))
    on_gpu = device == "mixed"

    @pipeline_def(batch_size=args.batch_size * source.samples_per_clip, num_threads=threads,
                  device_id=0 if on_gpu else None, py_num_workers=py_workers,
                  py_start_method="spawn" if on_gpu else "fork")
    def decode_only():
        jpeg, _, _ = fn.external_source(source=source, num_outputs=source.num_outputs, batch=False, parallel=True)
        return fn.decoders.image(jpeg, device=device, output_type=types.RGB, **decoder)

    pipe = decode_only()
    with warnings.catch_warnings():  # the training source on purpose: that DALI drops its meta and params is the point
        warnings.filterwarnings("ignore", r"The external source node .* outputs at the indices 1, 2 are not used")
        pipe.build()

    def batches():
        while True:
            pipe.run()
            yield {"clips": range(args.batch_size)}

    try:
        return _timed(batches(), args, torch.cuda.synchronize if on_gpu else None)
    finally:
        del pipe
        gc.collect()


# --------------------------------------------------------------------------------------------- decode bound


def bound_frames(ds, clips: int) -> tuple[list[bytes], np.ndarray]:
    """The JPEG bytes of the first `clips` training clips' frames, and each frame's relative crop box (x0, y0, x1,
    y1), drawn as the pipeline and the baselines draw them."""
    jpegs, boxes = [], []
    for i in range(min(clips, len(ds))):
        indices, params = clip_plan(ds.rows[i], i)
        frames = ds.frames(i, indices)
        jpegs += frames
        boxes += [crop_box(params)] * len(frames)
    return jpegs, np.asarray(boxes, dtype=np.float32)


def crop_decode_rate(jpegs: list[bytes], boxes: np.ndarray, batch: int, seconds: float) -> Rate:
    """DALI's CPU crop-window decode (fn.decoders.image_slice, the training path's decoder) of `jpegs` on one
    thread, fed from memory, for at least `seconds` of CPU time."""
    from nvidia.dali import fn, pipeline_def, types

    n = len(jpegs) // batch * batch
    if n == 0:
        raise ValueError(f"the decode bound needs at least {batch} frames, got {len(jpegs)}")
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in jpegs[:n]]
    feeds = [(arrays[k:k + batch], list(boxes[k:k + batch, 0:2]), list(boxes[k:k + batch, 2:4]))
             for k in range(0, n, batch)]

    def feed():
        while True:
            yield from feeds

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def crop_decode():
        jpeg, start, end = fn.external_source(source=feed, num_outputs=3)
        return fn.decoders.image_slice(jpeg, rel_start=start, rel_end=end, device="cpu", output_type=types.RGB)

    pipe = crop_decode()
    pipe.build()
    pipe.run()  # warm-up: allocations
    cpu, start, frames = tree_cpu_seconds(), time.perf_counter(), 0
    while frames < n or tree_cpu_seconds() - cpu < seconds:
        pipe.run()
        frames += batch
    wall, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    del pipe
    gc.collect()
    return Rate(frames / CONTRACT.num_frames / wall, frames / cpu)


def pil_decode_rate(jpegs: list[bytes], seconds: float) -> Rate:
    """PIL's whole-frame decode of `jpegs` in this thread, for at least `seconds` of CPU time."""
    from PIL import Image

    cpu, start, frames = time.process_time(), time.perf_counter(), 0
    while frames < len(jpegs) or time.process_time() - cpu < seconds:
        for blob in jpegs:
            with Image.open(io.BytesIO(blob)) as image:
                image.load()
        frames += len(jpegs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Rate(frames / CONTRACT.num_frames / wall, frames / cpu)


# --------------------------------------------------------------------------------------------- report


def _methods(ds, src: str, args) -> list[tuple[str, str, object, str]]:
    """(method, role, run or None, note) of one dataset, in table order."""
    methods = [("dali cpu (frame shards)", "ours", lambda: run_dali(ds, args), "")]
    if args.gpu:
        methods += [("dali mixed / GPU (frame shards)", "gpu", lambda: run_dali(ds, args, device_id=0), ""),
                    ("bare nvJPEG decode, same frames", "bare", lambda: run_bare_decode(ds, args), "")]
    for name, (label, role, _, _) in BASELINES.items():
        why = missing(name)
        run = None if why else (lambda name=name: run_baseline(ds, src, name, args))
        methods.append((label, "skipped" if why else role, run, why or ""))
    jpegs, boxes = bound_frames(ds, args.bound_clips)
    methods += [("bound: DALI crop-window decode, 1 thread", "bound",
                 lambda: crop_decode_rate(jpegs, boxes, args.batch_size * CONTRACT.num_frames, args.bound_seconds),
                 "decode only"),
                ("PIL whole-frame decode, 1 thread", "info", lambda: pil_decode_rate(jpegs, args.bound_seconds),
                 "decode only")]
    return methods


def measure(name: str, args) -> list[dict]:
    """One row per method on one dataset: dataset, method, role (ours|gpu|bare|seeds|baseline|bound|info|skipped),
    rate (wall clips/s) and cpu_rate (frames per CPU-second), each the best of args.repeats, and note."""
    src, out = make_dataset(args.cache, name, args.videos, args.workers)
    ds = replayed(out, (args.warmup + args.batches + 2 * args.workers + 2) * args.batch_size)  # whole rounds
    methods = _methods(ds, src, args)
    best = {method: Rate(0.0, 0.0) for method, _, run, _ in methods if run}
    for _ in range(args.repeats):  # interleaved, best of: other load on the machine only ever slows a run down
        for k, (method, role, run, note) in enumerate(methods):
            if not run:
                continue
            try:
                rate = run()
            except Exception as e:  # e.g. torchcodec without FFmpeg's shared libraries: a row, not a crash
                why = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
                methods[k] = (method, "skipped", None, f"failed: {type(e).__name__}: {why}")
                print(f"  {name:<9} {method:<42} {methods[k][3]}", file=sys.stderr, flush=True)
                continue
            best[method] = Rate(*map(max, best[method], rate))
            print(f"  {name:<9} {method:<42} {rate.clips_per_s:8.1f} clips/s {rate.frames_per_cpu_s:8.0f} "
                  f"frames/CPU-s", file=sys.stderr, flush=True)
    return [{"dataset": name, "method": method, "role": role,
             "rate": best[method].clips_per_s if run else None,
             "cpu_rate": best[method].frames_per_cpu_s if run else None, "note": note}
            for method, role, run, note in methods]


def _rate(rows, dataset: str, role: str, key: str = "rate") -> float:
    return max(r[key] for r in rows if r["dataset"] == dataset and r["role"] == role)


def bare_ratios(rows: list[dict]) -> dict[str, float]:
    """Per dataset, the full GPU training pipeline's rate over the bare nvJPEG decode's (rows with both)."""
    return {d: _rate(rows, d, "gpu") / _rate(rows, d, "bare") for d in dict.fromkeys(r["dataset"] for r in rows)
            if any(r["role"] == "gpu" and r["dataset"] == d for r in rows)
            and any(r["role"] == "bare" and r["dataset"] == d for r in rows)}


BASELINE_ROLES = ("seeds", "baseline")


def references(rows: list[dict], dataset: str) -> dict:
    """The rows one dataset's ratios divide by: the seeds' loader, the fastest baseline by wall clock and by CPU
    time (over the seeds' and the lean baselines), and the decode bound; None where not measured."""
    mine = [r for r in rows if r["dataset"] == dataset and r["rate"] is not None]
    bases = [r for r in mine if r["role"] in BASELINE_ROLES]
    seeds = [r for r in mine if r["method"] == BASELINES[SEEDS][0]]
    bound = [r for r in mine if r["role"] == "bound"]
    return {"seeds": seeds[0] if seeds else None, "bound": bound[0] if bound else None,
            "fastest_wall": max(bases, key=lambda r: r["rate"]) if bases else None,
            "fastest_cpu": max(bases, key=lambda r: r["cpu_rate"]) if bases else None}


def _ratio(value: float, reference: dict | None, key: str) -> str:
    return f"{value / reference[key]:.2f}x" if reference else "-"


HEADER = (f"{'dataset':<9} {'method':<42} {'clips/s':>8} {'frames/CPU-s':>12} {'vs seeds CPU':>12} "
          f"{'wall':>6} {'vs fastest CPU':>14} {'wall':>6} {'of bound':>8}  note")


def table(rows: list[dict], frames: int) -> tuple[str, float]:
    """The printed table and the headline speedup: our best pipeline over the fastest baseline, wall clock, lowest
    over datasets (the GPU pipeline when measured, else the CPU one). `frames` is kept for callers."""
    lines, speedups = [HEADER], []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        ref = references(rows, dataset)
        headline = "gpu" if any(r["role"] == "gpu" for r in rows) else "ours"
        if ref["fastest_wall"] and any(r["role"] == headline and r["dataset"] == dataset for r in rows):
            speedups.append(_rate(rows, dataset, headline) / ref["fastest_wall"]["rate"])
        for r in (r for r in rows if r["dataset"] == dataset):
            if r["rate"] is None:
                lines.append(f"{dataset:<9} {r['method']:<42} {'-':>8} {'-':>12} {'':>12} {'':>6} {'':>14} "
                             f"{'':>6} {'':>8}  {r['note']}")
                continue
            share = f"{100 * r['cpu_rate'] / ref['bound']['cpu_rate']:.0f}%" if ref["bound"] else "-"
            if r["role"] in ("bound", "info"):  # one thread, decode only: no loader to compare it with
                lines.append(f"{dataset:<9} {r['method']:<42} {r['rate']:8.1f} {r['cpu_rate']:12.0f} {'':>12} "
                             f"{'':>6} {'':>14} {'':>6} {share:>8}  {r['note']}")
                continue
            lines.append(f"{dataset:<9} {r['method']:<42} {r['rate']:8.1f} {r['cpu_rate']:12.0f} "
                         f"{_ratio(r['cpu_rate'], ref['seeds'], 'cpu_rate'):>12} "
                         f"{_ratio(r['rate'], ref['seeds'], 'rate'):>6} "
                         f"{_ratio(r['cpu_rate'], ref['fastest_cpu'], 'cpu_rate'):>14} "
                         f"{_ratio(r['rate'], ref['fastest_wall'], 'rate'):>6} {share:>8}  {r['note']}")
    return "\n".join(lines), min(speedups) if speedups else float("nan")


def summary(rows: list[dict]) -> list[str]:
    """One line per dataset: our CPU pipeline against the seeds' loader, the fastest baseline and the bound."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        ref = references(rows, dataset)
        ours = [r for r in rows if r["dataset"] == dataset and r["role"] == "ours" and r["rate"] is not None]
        if not ours or not all(ref.values()):
            continue
        cpu = ours[0]["cpu_rate"]
        lines.append(f"{dataset}: dali cpu per CPU-second = {cpu / ref['seeds']['cpu_rate']:.2f}x the seeds' loader, "
                     f"{cpu / ref['fastest_cpu']['cpu_rate']:.2f}x the fastest baseline "
                     f"({ref['fastest_cpu']['method']}), {100 * cpu / ref['bound']['cpu_rate']:.0f}% of the "
                     f"crop-window decode bound")
    return lines


# the run's size: small enough for a few minutes on 2 cores; --full takes the second set
SMALL = {"videos": 8, "batches": 12, "warmup": 2, "repeats": 1, "max_seconds": 5.0, "min_batches": 2,
         "bound_clips": 64, "bound_seconds": 2.5}
FULL = {"videos": 64, "batches": 50, "warmup": 5, "repeats": 3, "max_seconds": 120.0, "min_batches": 10,
        "bound_clips": 256, "bound_seconds": 5.0}
_SIZE_HELP = {
    "videos": "distinct videos generated per dataset (multiple of 4)",
    "batches": "timed batches per method (at most)",
    "warmup": "batches read before timing starts",
    "max_seconds": "stop timing a method after this long once --min-batches are timed",
    "min_batches": "timed batches per method (at least; DataLoaders time whole rounds of --workers batches)",
    "repeats": "runs per method, interleaved; the best one counts",
    "bound_clips": "clips whose frames the decode-bound runs decode",
    "bound_seconds": "CPU seconds of each decode-bound run",
}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="kinetics,ssv2", help="comma-separated: kinetics, ssv2")
    for key, text in _SIZE_HELP.items():  # None: taken from SMALL or, with --full, FULL; a value given wins
        p.add_argument(f"--{key.replace('_', '-')}", type=POSITIVE_INT if isinstance(SMALL[key], int) else POSITIVE_FLOAT,
                       default=None,
                       help=f"{text} (default {SMALL[key]}, --full {FULL[key]})")
    p.add_argument("--full", action="store_true", help="a bigger run (the --full values above)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--workers", type=POSITIVE_INT, default=os.cpu_count() or 1, help="loader workers, the same for all")
    p.add_argument("--cache", default="data/bench-data", help="where generated and prepped videos are kept")
    p.add_argument("--cpu", action="store_true", help="skip the GPU rows even with CUDA present")
    add_debug_option(p)
    args = p.parse_args(argv)
    for key in _SIZE_HELP:
        if getattr(args, key) is None:
            setattr(args, key, (FULL if args.full else SMALL)[key])
    unknown = set(args.datasets.split(",")) - set(DATASETS)
    if unknown:
        p.error(f"unknown datasets {sorted(unknown)}: choose from {sorted(DATASETS)}")
    if min(args.batches, args.min_batches, args.batch_size, args.workers, args.repeats) < 1:
        p.error("--batches, --min-batches, --batch-size, --workers and --repeats must be >= 1")
    args.gpu = torch.cuda.is_available() and not args.cpu
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for name in args.datasets.split(","):
        rows += measure(name, args)
    text, speedup = table(rows, CONTRACT.num_frames)
    print(f"\ntraining clips of 8x224 (TSN, multi-scale crop + flip), batch {args.batch_size}, {args.workers} "
          f"workers each, best of {args.repeats} x {args.min_batches}-{args.batches} timed batches "
          f"(up to {args.max_seconds:g} s); device: {torch.cuda.get_device_name(0) if args.gpu else 'CPU only'}")
    print("frames/CPU-s counts this process and its worker processes; 'vs seeds' divides by the "
          f"{BASELINES[SEEDS][0]} row, 'vs fastest' by the fastest seeds' or lean baseline, 'of bound' by the "
          "one-thread crop-window decode of the same frames, all per dataset")
    print(text)
    for line in summary(rows):
        print(line)
    for dataset, ratio in bare_ratios(rows).items():
        print(f"{dataset}: mixed pipeline / bare nvJPEG decode of the same frames: {ratio:.2f} (goal >= 0.8)")
    print(f"speedup vs fastest baseline (wall): {speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.data", main))
