"""`make bench-data`: training clips/s of our DALI pipeline against PyTorch DataLoader baselines.

All methods produce the same training batches: TSN sampling of 8 frames, TSN multi-scale crop + horizontal
flip, resized to 224, normalized, batch 16, with the same sampling and crop-box code (pipelines.sampling,
pipelines.augment) and the same number of worker processes:
  dali cpu       our pipeline on the JPEG-frame shards, CPU decoding (fn.decoders.image "cpu")
  dali mixed     the same with nvJPEG on the GPU (only with CUDA), plus a bare nvJPEG decode of the same frames: a
                 DALI pipeline with the same source and one fn.decoders.image(device="mixed") over the B x T frames
                 of each batch and nothing else, the ceiling the full pipeline is measured against (goal >= 0.8)
  torch + PIL    DataLoader reading the same shards, PIL decoding and augmenting each frame
  torch + PyAV   DataLoader decoding the original video files per sample (decode up to the last frame needed)
  torch + decord / torchcodec   the same through those readers when importable (never installed here)
DALI's CPU threads match the baselines' worker processes; its Python source workers (which only read stored bytes)
are a quarter of them, as `pipelines.resources.host_threads` gives a rank by default.
The baselines' workers return uint8 clips, normalized in the main process (on the GPU when there is one):
the strongest arrangement for them, since shipping float32 between processes costs 4x the bytes.
The DALI CPU path decodes only the crop box of each JPEG (fn.decoders.image_slice) in training.
Datasets: synthetic videos shaped like Kinetics (H.264, 568x320, 10 s at 30 fps) and Something-Something v2
(VP9, 426x240, 4 s at 12 fps), prepped at short side 256. Small sets are replayed (manifest rows repeated)
so that one epoch spans the timed batches; everything reads from the page cache alike.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

from models.registry import InputContract
from pipelines import AugmentConfig, build_loader
from pipelines.augment import train_params
from pipelines.resources import HW_DECODER_LOAD, host_threads, image_decoder_args, largest_frame
from pipelines.sampling import ClipSpec, clip_indices, sample_rng
from prep import open_dataset
from prep.decode import DecodeOptions
from prep.runner import JobOptions, run_prep
from prep.synthetic import generate
from prep.tasks import number_tasks, parse_video_lists

DATASETS = {  # name -> synthetic.generate arguments
    "kinetics": {"codec": "h264", "size": (320, 568), "frames": 300, "fps": 30},
    "ssv2": {"codec": "vp9", "size": (240, 426), "frames": 48, "fps": 12},
}
CONTRACT = InputContract("NCTHW", num_frames=8, crop_size=224)
AUGMENT = AugmentConfig(flip=True)  # multi-scale crop (the default) + flip


# --------------------------------------------------------------------------------------------- data


def make_dataset(cache: str, name: str, videos: int, workers: int) -> tuple[str, str]:
    """(source folder, prepped folder) of one dataset, generated and prepped once per cache."""
    src, out = os.path.join(cache, name, "source"), os.path.join(cache, name, "prepped")
    if not os.path.exists(os.path.join(src, "train.txt")):
        generate(src, videos=videos, classes=4, val_fraction=0, workers=workers, progress=False, **DATASETS[name])
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


# --------------------------------------------------------------------------------------------- baselines


def augment_frames(images: list[Image.Image], params: np.ndarray) -> torch.Tensor:
    """The DALI training transform in PIL: crop box resized to 224 (antialiased bilinear), flip; uint8 CTHW.
    Normalizing waits for the main process (`normalized`): shipping uint8 from the workers is 4x less copying."""
    width, height = images[0].size
    box = tuple(float(v) for v in params[:4] * [width, height, width, height])
    size = CONTRACT.crop_size
    arrays = []
    for image in images:
        image = image.resize((size, size), Image.BILINEAR, box=box)
        if params[4]:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(3, 0, 1, 2)  # C, T, H, W


def normalized(loader, device: torch.device):
    """Batches of float clips normalized on `device`, as a training loop would receive them."""
    mean = torch.tensor(CONTRACT.mean, device=device).view(1, 3, 1, 1, 1) * 255
    std = torch.tensor(CONTRACT.std, device=device).view(1, 3, 1, 1, 1) * 255
    for clips, labels in loader:
        clips = clips.to(device, non_blocking=True).float().sub_(mean).div_(std)
        yield {"clips": clips, "labels": labels.to(device, non_blocking=True)}


class BaselineClips(torch.utils.data.Dataset):
    """Training clips decoded by `reader` ("pil", "pyav", "decord", "torchcodec"), sampled as the pipeline does."""

    def __init__(self, ds, source_root: str, reader: str, seed: int = 0):
        self.ds, self.root, self.reader, self.seed = ds, source_root, reader, seed
        self.spec = ClipSpec.of(CONTRACT)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        row = self.ds.rows[i]
        rng = sample_rng(self.seed, 0, i)
        indices = clip_indices(row["num_frames"], self.spec, True, rng)
        params = train_params(rng, *row["size"], AUGMENT)
        images = _READERS[self.reader](self, i, row, indices)
        return augment_frames(images, params), row["label"]

    def _pil(self, i, row, indices):
        import io

        return [Image.open(io.BytesIO(b)).convert("RGB") for b in self.ds.frames(i, indices)]

    def _pyav(self, i, row, indices):
        import av

        wanted, last, found = set(indices.tolist()), int(indices.max()), {}
        with av.open(os.path.join(self.root, row["id"])) as container:
            stream = container.streams.video[0]
            stream.thread_count = 1  # parallelism comes from the DataLoader workers, as for the others
            for n, frame in enumerate(container.decode(stream)):
                if n in wanted:
                    found[n] = frame.to_image()
                if n >= last:
                    break
        return [found[j] for j in indices.tolist()]

    def _decord(self, i, row, indices):
        import decord

        reader = decord.VideoReader(os.path.join(self.root, row["id"]), num_threads=1)
        return [Image.fromarray(a) for a in reader.get_batch(indices.tolist()).asnumpy()]

    def _torchcodec(self, i, row, indices):
        from torchcodec.decoders import VideoDecoder

        frames = VideoDecoder(os.path.join(self.root, row["id"]), num_ffmpeg_threads=1).get_frames_at(
            indices.tolist()).data
        return [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]


_READERS = {"pil": BaselineClips._pil, "pyav": BaselineClips._pyav, "decord": BaselineClips._decord,
            "torchcodec": BaselineClips._torchcodec}


def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------- timing


def time_batches(batches, warmup: int, count: int, sync=None) -> float:
    """Clips per second over `count` batches after `warmup` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    start, clips = time.perf_counter(), 0
    for _ in range(count):
        clips += len(next(iterator)["clips"])
    if sync:
        sync()
    return clips / (time.perf_counter() - start)


def run_dali(ds, args, device_id=None) -> float:
    threads, py_workers = host_threads(cores=args.workers, local_ranks=1)
    loader = build_loader(ds, "train", CONTRACT, args.batch_size, True, device_id=device_id,
                          num_threads=threads, py_workers=py_workers, augment=AUGMENT)
    try:
        sync = torch.cuda.synchronize if device_id is not None else None
        return time_batches(loader, args.warmup, args.batches, sync)
    finally:
        loader.close()


def run_baseline(ds, source_root: str, reader: str, args) -> float:
    loader = torch.utils.data.DataLoader(BaselineClips(ds, source_root, reader), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.workers, drop_last=True, prefetch_factor=2,
                                         pin_memory=args.gpu)
    device = torch.device("cuda" if args.gpu else "cpu")
    return time_batches(normalized(loader, device), args.warmup, args.batches,
                        torch.cuda.synchronize if args.gpu else None)


def run_bare_decode(ds, args, device: str = "mixed") -> float:
    """DALI with the training pipeline's parallel source (one sample per frame), decoding the frames with one
    fn.decoders.image(device) and nothing else: the ceiling of the frame path on this decoder."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines.sampling import EpochPlan
    from pipelines.source import ClipSource, DamageLog

    plan = EpochPlan(len(ds), args.batch_size, True)
    source = ClipSource(ds, plan, ClipSpec.of(CONTRACT), AUGMENT, "frames", DamageLog(os.devnull))
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
    pipe.build()

    def batches():
        while True:
            pipe.run()
            yield {"clips": range(args.batch_size)}

    return time_batches(batches(), args.warmup, args.batches, torch.cuda.synchronize if on_gpu else None)


# --------------------------------------------------------------------------------------------- report


def measure(name: str, args) -> list[dict]:
    """One row per method on one dataset: dataset, method, role (ours|gpu|bare|baseline|skipped), rate
    (clips/s, best of args.repeats), note."""
    src, out = make_dataset(args.cache, name, args.videos, args.workers)
    ds = replayed(out, (args.warmup + args.batches + 2) * args.batch_size)

    methods = [("dali cpu (frame shards)", "ours", lambda: run_dali(ds, args))]
    if args.gpu:
        methods += [("dali mixed / GPU (frame shards)", "gpu", lambda: run_dali(ds, args, device_id=0)),
                    ("bare nvJPEG decode, same frames", "bare", lambda: run_bare_decode(ds, args))]
    for reader, module, label in (("pil", "PIL", "PIL (frame shards)"), ("pyav", "av", "PyAV (video files)"),
                                  ("decord", "decord", "decord (video files)"),
                                  ("torchcodec", "torchcodec", "torchcodec (video files)")):
        run = (lambda reader=reader: run_baseline(ds, src, reader, args)) if importable(module) else None
        methods.append((f"torch + {label}", "baseline" if run else "skipped", run))
    best = {method: 0.0 for method, _, run in methods if run}
    for _ in range(args.repeats):  # interleaved, best of: other load on the machine only ever slows a run down
        for method, _, run in methods:
            if run:
                best[method] = max(best[method], run())
    return [{"dataset": name, "method": method, "role": role, "rate": best.get(method),
             "note": "" if run else "skipped: not installed"} for method, role, run in methods]


def _rate(rows, dataset: str, role: str) -> float:
    return max(r["rate"] for r in rows if r["dataset"] == dataset and r["role"] == role)


def bare_ratios(rows: list[dict]) -> dict[str, float]:
    """Per dataset, the full GPU training pipeline's rate over the bare nvJPEG decode's (rows with both)."""
    return {d: _rate(rows, d, "gpu") / _rate(rows, d, "bare") for d in dict.fromkeys(r["dataset"] for r in rows)
            if any(r["role"] == "gpu" and r["dataset"] == d for r in rows)
            and any(r["role"] == "bare" and r["dataset"] == d for r in rows)}


def table(rows: list[dict], frames: int) -> tuple[str, float]:
    """The printed table and the headline speedup: our best pipeline over the fastest baseline, lowest over
    datasets (the GPU pipeline when measured, else the CPU one)."""
    lines = [f"{'dataset':<9} {'method':<34} {'clips/s':>8} {'frames/s':>9} {'vs fastest baseline':>20}  note"]
    speedups = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        fastest = _rate(rows, dataset, "baseline")
        headline = "gpu" if any(r["role"] == "gpu" for r in rows) else "ours"
        speedups.append(_rate(rows, dataset, headline) / fastest)
        for r in (r for r in rows if r["dataset"] == dataset):
            if r["rate"] is None:
                lines.append(f"{dataset:<9} {r['method']:<34} {'-':>8} {'-':>9} {'-':>20}  {r['note']}")
                continue
            lines.append(f"{dataset:<9} {r['method']:<34} {r['rate']:8.1f} {r['rate'] * frames:9.0f} "
                         f"{r['rate'] / fastest:19.2f}x  {r['note']}")
    return "\n".join(lines), min(speedups)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.data", description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="kinetics,ssv2", help="comma-separated: kinetics, ssv2")
    p.add_argument("--videos", type=int, default=16, help="distinct videos generated per dataset (multiple of 4)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per method")
    p.add_argument("--warmup", type=int, default=3, help="batches read before timing starts")
    p.add_argument("--repeats", type=int, default=2, help="runs per method, interleaved; the best one counts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="loader workers, the same for all")
    p.add_argument("--cache", default="data/bench-data", help="where generated and prepped videos are kept")
    p.add_argument("--cpu", action="store_true", help="skip the GPU rows even with CUDA present")
    args = p.parse_args(argv)
    unknown = set(args.datasets.split(",")) - set(DATASETS)
    if unknown:
        p.error(f"unknown datasets {sorted(unknown)}: choose from {sorted(DATASETS)}")
    args.gpu = torch.cuda.is_available() and not args.cpu
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    for name in args.datasets.split(","):
        rows += measure(name, args)
    text, speedup = table(rows, CONTRACT.num_frames)
    print(f"\ntraining clips of 8x224 (TSN, multi-scale crop + flip), batch {args.batch_size}, "
          f"{args.workers} workers each, best of {args.repeats} x {args.batches} timed batches; device: "
          f"{torch.cuda.get_device_name(0) if args.gpu else 'CPU only'}")
    print(text)
    for dataset, ratio in bare_ratios(rows).items():
        print(f"{dataset}: mixed pipeline / bare nvJPEG decode of the same frames: {ratio:.2f} (goal >= 0.8)")
    print(f"speedup vs fastest baseline: {speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
