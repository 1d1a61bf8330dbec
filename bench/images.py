"""`python -m bench.images`: training images/s of our DALI image pipeline against torchvision's ImageFolder.

Both sides produce the same ImageNet training batches from the same JPEG folder, with the same batch size and
the same degree of parallelism (`--threads`: DALI's CPU threads, the DataLoader's worker processes):
  dali cpu     pipelines.images.ImageLoader (device_id None): fused decode + random resized crop (only the crop
               window of each JPEG is decoded), bicubic resize to 224, optional RandAugment, flip, normalize
  dali mixed   the same with nvJPEG on the GPU (device_id 0; only with CUDA)
  torchvision  datasets.ImageFolder + transforms: RandomResizedCrop(224, bicubic, as ours), RandomHorizontalFlip,
               optional RandAugment, ToTensor, Normalize, in a DataLoader (shuffle, drop_last, batch collated in
               the workers), the stock ImageNet recipe
Every row delivers float batches on the training device (the GPU when the GPU row is measured).
The images are synthetic (prep.synthetic_images) at ImageNet-like sizes: 4:3 landscape, `--size` px short side
(320 by default), JPEG quality 90, generated once into `--root` and reused. They are flatter than photos
(a few KB each instead of ~110 KB), so entropy decoding, the same work on both sides, weighs less than it
would on ImageNet. A small set is replayed (its file list repeated) so that one epoch spans the timed batches;
everything reads from the page cache alike.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

from models.registry import InputContract
from pipelines import AugmentConfig, ImageLoader, open_image_folder
from pipelines.images import ImageFolder
from prep.cli import COUNT, JPEG_QUALITY, POSITIVE_INT, add_debug_option, run_main
from prep.synthetic_images import SHAPES, generate_image_folder

CONTRACT = InputContract("NCTHW", num_frames=1, crop_size=224)
ASPECT = 4 / 3  # width / height of the generated images, ImageNet's most common shape (500 x 375)


# --------------------------------------------------------------------------------------------- data


def image_size(short_side: int) -> tuple[int, int]:
    """(height, width) of the generated images."""
    return short_side, round(short_side * ASPECT)


def make_folder(root: str, short_side: int, quality: int, per_class: int) -> str:
    """The cached folder for these image settings, holding at least `per_class` training images per class."""
    folder = os.path.join(root, f"short{short_side}-q{quality}")
    generate_image_folder(folder, per_class, 1, image_size(short_side), seed=0, quality=quality, progress=False)
    return folder


def _image_number(path: str) -> int:
    return int(os.path.splitext(os.path.basename(path))[0].rsplit("_", 1)[1])  # <shape>_<index>.JPEG


def training_sets(root: str, per_class: int, samples: int, rand_augment: int):
    """(our ImageFolder, torchvision's ImageFolder) over the same `per_class` images per class (a cache made
    for a larger run holds more), both replayed in the same order until they hold at least `samples` images."""
    from torchvision import datasets

    ours = open_image_folder(root, "train", progress=False)
    keep = [i for i, f in enumerate(ours.files) if _image_number(f) < per_class]
    replay = -(-samples // len(keep))
    ours = ImageFolder(ours.root, ours.split, ours.classes, [ours.files[i] for i in keep] * replay,
                       np.tile(ours.labels[keep], replay))
    theirs = datasets.ImageFolder(ours.root, transform=baseline_transform(rand_augment))
    theirs.samples = [(os.path.join(ours.root, f), int(label)) for f, label in zip(ours.files, ours.labels)]
    theirs.imgs, theirs.targets = theirs.samples, [label for _, label in theirs.samples]
    return ours, theirs


def augment_config(rand_augment: int) -> AugmentConfig:
    return AugmentConfig(train_crop="resized", flip=True, rand_augment=rand_augment)


def baseline_transform(rand_augment: int):
    """torchvision's ImageNet training transform with our pipeline's settings (crop ranges, bicubic, m = 9)."""
    from torchvision import transforms

    aug = augment_config(rand_augment)
    ops = [transforms.RandomResizedCrop(CONTRACT.crop_size, scale=aug.area, ratio=aug.ratio,
                                        interpolation=transforms.InterpolationMode.BICUBIC),
           transforms.RandomHorizontalFlip()]
    if rand_augment:
        ops.append(transforms.RandAugment(num_ops=rand_augment, magnitude=aug.rand_augment_m))
    ops += [transforms.ToTensor(), transforms.Normalize(CONTRACT.mean, CONTRACT.std)]
    return transforms.Compose(ops)


# --------------------------------------------------------------------------------------------- timing


def images_per_second(batches, warmup: int, count: int, sync=None) -> float:
    """Images per second over `count` (images, labels) batches read after `warmup` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    if sync:
        sync()
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(iterator)[0])
    if sync:
        sync()
    return images / (time.perf_counter() - start)


def run_dali(folder: ImageFolder, args, device_id=None) -> float:
    loader = ImageLoader(folder, CONTRACT, args.batch, training=True, device_id=device_id,
                         num_threads=args.threads, augment=augment_config(args.rand_augment))
    try:
        batches = ((b["clips"].to(args.device), b["labels"].to(args.device)) for b in loader)
        return images_per_second(batches, args.warmup, args.batches, _sync(args))
    finally:
        loader.close()


def run_baseline(dataset, args) -> float:
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.threads,
                                         drop_last=True, pin_memory=args.gpu)
    batches = ((x.to(args.device, non_blocking=True), y.to(args.device, non_blocking=True)) for x, y in loader)
    return images_per_second(batches, args.warmup, args.batches, _sync(args))


def _sync(args):
    return torch.cuda.synchronize if args.gpu else None


# --------------------------------------------------------------------------------------------- report


def measure(args) -> list[dict]:
    """One row per pipeline: pipeline, role (ours|gpu|baseline), rate (images/s, best of args.repeats; None when
    skipped), note."""
    per_class = -(-args.images // len(SHAPES))
    root = make_folder(args.root, args.size, args.quality, per_class)
    ours, theirs = training_sets(root, per_class, (args.warmup + args.batches) * args.batch, args.rand_augment)
    methods = [("dali cpu", "ours", lambda: run_dali(ours, args), "decodes the crop window only"),
               ("dali mixed (GPU)", "gpu", (lambda: run_dali(ours, args, device_id=0)) if args.gpu else None,
                "nvJPEG" if args.gpu else "skipped: no CUDA" if not torch.cuda.is_available() else "skipped: --cpu"),
               ("torchvision ImageFolder + DataLoader", "baseline", lambda: run_baseline(theirs, args),
                f"workers: {args.threads} processes")]
    best = {name: 0.0 for name, _, run, _ in methods if run}
    for _ in range(args.repeats):  # interleaved, best of: other load on the machine only ever slows a run down
        for name, _, run, _ in methods:
            if run:
                best[name] = max(best[name], run())
    baseline = best[methods[-1][0]]
    return [{"pipeline": name, "role": role, "rate": best.get(name),
             "ratio": best[name] / baseline if name in best else None, "note": note}
            for name, role, _, note in methods]


def summary(args, rows: list[dict]) -> dict:
    """The JSON summary; the headline speedup is the GPU pipeline's when measured, else the CPU one's."""
    headline = next(r for r in rows if r["role"] == ("gpu" if args.gpu else "ours"))
    return {"images": len(SHAPES) * -(-args.images // len(SHAPES)), "size": list(image_size(args.size)),
            "quality": args.quality, "batch": args.batch, "batches": args.batches, "warmup": args.warmup,
            "repeats": args.repeats, "threads": args.threads, "rand_augment": args.rand_augment,
            "device": torch.cuda.get_device_name(0) if args.gpu else "cpu", "rows": rows,
            "headline": headline["pipeline"], "speedup": headline["ratio"]}


def table(result: dict) -> str:
    height, width = result["size"]
    augment = " + RandAugment(n=%d, m=9)" % result["rand_augment"] if result["rand_augment"] else ""
    lines = [f"training images 224x224 (random resized crop + flip{augment}), batch {result['batch']}, "
             f"{result['threads']} threads / workers each, best of {result['repeats']} x {result['batches']} "
             f"timed batches after {result['warmup']}; {result['images']} JPEGs {width}x{height} "
             f"q{result['quality']}; device: {result['device']}",
             f"{'pipeline':<38} {'images/s':>9} {'vs baseline':>12}  note"]
    for r in result["rows"]:
        rate, ratio = (f"{r['rate']:9.1f}", f"{r['ratio']:11.2f}x") if r["rate"] else (f"{'-':>9}", f"{'-':>12}")
        lines.append(f"{r['pipeline']:<38} {rate} {ratio}  {r['note']}")
    lines.append(f"speedup vs baseline: {result['speedup']:.2f}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=COUNT, default=0,
                   help="distinct training images (rounded up to a multiple of 6 classes); 0: warmup + batches worth")
    p.add_argument("--size", type=POSITIVE_INT, default=320, help="short side of the generated 4:3 images, px")
    p.add_argument("--quality", type=JPEG_QUALITY, default=90, help="JPEG quality of the generated images")
    p.add_argument("--batch", type=POSITIVE_INT, default=32)
    p.add_argument("--batches", type=POSITIVE_INT, default=20, help="timed batches per pipeline")
    p.add_argument("--warmup", type=COUNT, default=3, help="batches read before timing starts")
    p.add_argument("--repeats", type=POSITIVE_INT, default=2, help="runs per pipeline, interleaved; the best one counts")
    p.add_argument("--threads", type=POSITIVE_INT, default=os.cpu_count() or 1,
                   help="DALI CPU threads and DataLoader workers, the same for both")
    p.add_argument("--rand-augment", type=COUNT, default=0, help="RandAugment operations per image (0: off)")
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "vidkit-bench-images"),
                   help="cache folder of the generated images (reused across runs)")
    p.add_argument("--cpu", action="store_true", help="skip the GPU row even with CUDA present")
    p.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    add_debug_option(p)
    args = p.parse_args(argv)
    for name in ("size", "batch", "batches", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.images < 0 or args.warmup < 0 or args.rand_augment < 0 or not 1 <= args.quality <= 100:
        p.error(f"--images, --warmup and --rand-augment must be >= 0 and --quality in 1..100, got "
                f"{args.images}, {args.warmup}, {args.rand_augment}, {args.quality}")
    args.images = args.images or (args.warmup + args.batches) * args.batch
    args.gpu = torch.cuda.is_available() and not args.cpu
    args.device = torch.device("cuda" if args.gpu else "cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = summary(args, measure(args))
    print(json.dumps(result, indent=1) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.images", main))
