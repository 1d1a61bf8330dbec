"""Image pre-training data: ImageNet-style folders (`<root>/<split>/<class>/*.JPEG`) through DALI's file reader.

The images are read in place (no prep step: the JPEGs are already the compact, GPU-decodable form the video
shards are built to be). Each image reaches the model as a one-frame clip in its contract's layout
(`NCTHW` -> (C, 1, H, W)), as in "In Defense of Image Pre-Training for Spatiotemporal Recognition", whose
image pre-training feeds a 3D network `x.unsqueeze(2)`; with T = 1 only the STS convolution's appearance
half lets the temporal kernel slices learn.

Training: every epoch is a fresh permutation drawn from (seed, epoch), so a resumed run reads what an
uninterrupted one would. Repeated augmentation (Hoffer et al., timm's `RepeatAugSampler`): with `repeats` R,
an epoch keeps its length but takes N / R distinct images, each R times, the copies spread over the ranks
(on one rank they share a batch); every copy is decoded and augmented on its own. The order is handed to
`fn.readers.file` as its file list and DALI's own sharding (`shard_id`, `num_shards`) gives each rank its
contiguous slice, which the layout makes exactly that rank's `steps x batch` samples. Evaluation: every
image once across the ranks, centre crop; the reader pads its last batch and the iterator trims it.

The reader's "label" is the image's position in the folder index, so batches carry "index" (to check
coverage) and the class is looked up from it.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .augment import AugmentConfig, normalize
from .augment_units import rand_augment_suite
from .pipeline import GraphOptions
from .resources import image_decoder_args, resolve_threads

log = logging.getLogger("pipelines")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"BM": "bmp", b"RIFF": "webp"}
_CHECK_THREADS = 16  # file systems answer many small reads in parallel (network ones especially)


# --------------------------------------------------------------------------------------------- the folder index


@dataclass
class ImageFolder:
    """One split of an ImageNet-style folder: relative file paths, class ids, and the files left out."""

    root: str  # the split's folder
    split: str
    classes: list[str]
    files: list[str]  # relative to root, "<class>/<name>"
    labels: np.ndarray  # int64, one per file
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def rows(self) -> list[dict]:
        """Per-image records, as `prep`'s datasets give per video (eval reports name them by "id")."""
        return [{"id": f, "label": int(c)} for f, c in zip(self.files, self.labels)]


def _sniff(path: str) -> str | None:
    """Why the file cannot be an image, or None when its first bytes look like one."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if not head:
        return "empty file"
    if not any(head.startswith(magic) for magic in _MAGIC) or (head.startswith(b"RIFF") and head[8:12] != b"WEBP"):
        return "not a JPEG/PNG/BMP/WebP file"
    return None


def _list_class(split_dir: str, name: str) -> list[str]:
    folder = os.path.join(split_dir, name)
    return sorted(f"{name}/{e.name}" for e in os.scandir(folder)
                  if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def open_image_folder(root: str, split: str, classes: list[str] | None = None, check: bool = True,
                      progress: bool = True) -> ImageFolder:
    """Index `<root>/<split>/<class>/*`: classes are the sorted subfolders of the split (or `classes`, those of
    the training split, for evaluation). With `check`, files whose first bytes are not an image are left out,
    logged and counted instead of stopping the decoder mid-run."""
    split_dir = os.path.join(os.fspath(root), split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"image folder split not found: {split_dir} (expected {split}/<class>/*.JPEG)")
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    classes = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{split_dir} has {len(unknown)} class folders the training split lacks: "
                         f"{', '.join(unknown[:5])}")
    files, labels = [], []
    for label, name in enumerate(classes):
        names = _list_class(split_dir, name) if name in found else []
        files += names
        labels += [label] * len(names)
    rejected = _check_files(split_dir, files, progress) if check else []
    if rejected:
        bad = {path for path, _ in rejected}
        keep = [i for i, f in enumerate(files) if f not in bad]
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        log.warning("%s: left out %d files that are not images (first: %s: %s)", split_dir, len(rejected),
                    *rejected[0])
    if not files:
        raise ValueError(f"no images found under {split_dir} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return ImageFolder(split_dir, split, classes, files, np.asarray(labels, np.int64), rejected)


def _check_files(split_dir: str, files: list[str], progress: bool) -> list[tuple[str, str]]:
    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        reasons = pool.map(_sniff, (os.path.join(split_dir, f) for f in files), chunksize=256)
        reasons = list(tqdm(reasons, total=len(files), desc=f"checking {os.path.basename(split_dir)}",
                            unit="img", disable=not progress or len(files) < 10000, leave=False))
    return [(f, r) for f, r in zip(files, reasons) if r]


# --------------------------------------------------------------------------------------------- epoch plans


def steps_per_epoch(num_images: int, batch_size: int, world_size: int) -> int:
    """Training batches per rank and epoch: the partial global batch is dropped."""
    return num_images // (batch_size * world_size)


def train_order(num_images: int, batch_size: int, world_size: int, seed: int, epoch: int,
                repeats: int = 1) -> np.ndarray:
    """The epoch's image ids as one list whose contiguous `world_size` slices are the ranks' samples in order
    (DALI's sharding), `steps x batch_size` each. With repeats R, ceil(total / R) distinct images, each R
    times, copy k of an image going to rank (position + k) mod world_size as in timm's RepeatAugSampler."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    per_rank = steps_per_epoch(num_images, batch_size, world_size) * batch_size
    total = per_rank * world_size
    rng = np.random.default_rng([seed, epoch])
    chosen = rng.permutation(num_images)[: -(-total // repeats)]
    repeated = np.repeat(chosen, repeats)[:total]
    return np.concatenate([repeated[rank::world_size] for rank in range(world_size)]).astype(np.int64)


# --------------------------------------------------------------------------------------------- the DALI graph


def _train_image(jpegs, opts: GraphOptions):
    """Fused decode + random resized crop (only the crop window is decoded), resize, RandAugment, flip."""
    from nvidia.dali import fn, types

    aug = opts.augment
    image = fn.decoders.image_random_crop(jpegs, device=opts.decoder_device, output_type=types.RGB,
                                          random_area=list(aug.area), random_aspect_ratio=list(aug.ratio),
                                          num_attempts=10, **image_decoder_args(opts.decoder_device,
                                                                                opts.hw_decoder_load))
    image = fn.resize(image, size=(opts.crop_size, opts.crop_size), interp_type=types.INTERP_CUBIC,
                      antialias=True)
    if aug.rand_augment:  # as DALI's rand_augment.rand_augment(image, n, m), without its deprecated aliases
        from nvidia.dali.auto_aug.rand_augment import apply_rand_augment

        image = apply_rand_augment(rand_augment_suite(), image, n=aug.rand_augment, m=aug.rand_augment_m,
                                   fill_value=128, interp_type=None)
    mirror = fn.random.coin_flip(probability=0.5) if aug.flip else 0
    return image, mirror, {}


def _eval_image(jpegs, opts: GraphOptions):
    """Decode, short side to crop_size x eval_scale (1 / crop_pct), centre crop."""
    from nvidia.dali import fn, types

    image = fn.decoders.image(jpegs, device=opts.decoder_device, output_type=types.RGB,
                              **image_decoder_args(opts.decoder_device, opts.hw_decoder_load))
    image = fn.resize(image, resize_shorter=opts.augment.eval_short_side(opts.crop_size),
                      interp_type=types.INTERP_CUBIC, antialias=True)
    side = opts.augment.eval_crop_side(opts.crop_size)
    return image, 0, {"crop": (side, side), "crop_pos_x": 0.5, "crop_pos_y": 0.5}


def image_graph(file_root: str, files: list[str], ids: list[int], opts: GraphOptions, shard_id: int,
                num_shards: int):
    """Outputs: one-frame clips in the contract's layout and dtype, and the images' ids."""
    from nvidia.dali import fn

    jpegs, ids_out = fn.readers.file(file_root=file_root, files=files, labels=ids, shard_id=shard_id,
                                     num_shards=num_shards, random_shuffle=False, pad_last_batch=True,
                                     name="Reader")
    image, mirror, crop = (_train_image if opts.training else _eval_image)(jpegs, opts)
    clip = fn.expand_dims(image, axes=[0], new_axis_names="F")  # HWC -> FHWC with F = 1
    layout = "CFHW" if opts.layout == "NCTHW" else "FCHW"
    clip = normalize(clip, opts.mean, opts.std, layout, opts.dali_dtype, mirror, **crop)
    return clip, (ids_out.gpu() if opts.decoder_device == "mixed" else ids_out)


def build_image_pipeline(file_root, files, ids, opts: GraphOptions, batch_size, num_threads, device_id,
                         shard_id, num_shards, seed, prefetch=2):
    from nvidia.dali import pipeline_def

    conditionals = opts.training and opts.augment.rand_augment > 0  # nvidia.dali.auto_aug needs them

    @pipeline_def(enable_conditionals=conditionals)
    def graph():
        return image_graph(file_root, files, ids, opts, shard_id, num_shards)

    pipe = graph(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                 prefetch_queue_depth=prefetch)
    pipe.build()
    return pipe


# --------------------------------------------------------------------------------------------- the loader


def _shard_size(num_images: int, rank: int, world_size: int) -> int:
    """DALI's reader shards [floor(rank * N / world), floor((rank + 1) * N / world))."""
    return (rank + 1) * num_images // world_size - rank * num_images // world_size


class ImageLoader:
    """The image counterpart of `VideoLoader`: iterate for one epoch of dicts "clips" (one-frame clips),
    "labels", "index" (position in the folder index) and "view" (zeros)."""

    def __init__(self, folder: ImageFolder, contract, batch_size: int, training: bool, device_id=None, rank=0,
                 world_size=1, seed=0, num_threads=None, augment: AugmentConfig | None = None, dtype=torch.float32,
                 repeats: int = 1, image_size: int = 0, prefetch: int = 2):
        from .loader import to_dali_dtype

        num_threads = resolve_threads(num_threads, 1)[0]  # None or 0: this rank's share of the cores
        if batch_size < 1 or num_threads < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size}, num_threads {num_threads}, rank {rank} of {world_size}")
        if training and augment is not None and any(augment.jitter):  # the STS recipe uses RandAugment instead
            raise ValueError("colour jitter is not implemented for images: use rand_augment")
        video_only = [k for k in ("scale_jitter", "grayscale", "erase", "flip_label_map") if getattr(augment, k, None)]
        if training and video_only:
            raise ValueError(f"augment {', '.join(video_only)}: implemented for videos only")
        if repeats < 1 or (repeats > 1 and not training):
            raise ValueError(f"repeats must be >= 1, and 1 for evaluation, got {repeats}")
        self.folder, self.training, self.dtype = folder, bool(training), dtype
        self.batch_size, self.rank, self.world_size, self.seed = int(batch_size), int(rank), int(world_size), seed
        self.repeats, self.num_threads, self.prefetch, self.device_id = int(repeats), num_threads, prefetch, device_id
        self.opts = GraphOptions(int(image_size or contract.crop_size), tuple(contract.mean), tuple(contract.std),
                                 contract.layout, self.training, augment if augment is not None else AugmentConfig(),
                                 to_dali_dtype(dtype), "cpu" if device_id is None else "mixed")
        self.device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
        self.labels = torch.as_tensor(folder.labels, device=self.device)
        self.epoch, self._skip = 0, 0
        self._pipe = self._iterator = None
        self._finished = False  # the last pass read its epoch to the end, so the reader can be reset
        if self.training and len(self) == 0:
            raise ValueError(f"{folder.root}: {len(folder)} images are fewer than one batch of {batch_size} "
                             f"on each of {world_size} ranks")

    def __len__(self) -> int:
        if self.training:
            return steps_per_epoch(len(self.folder), self.batch_size, self.world_size)
        return -(-_shard_size(len(self.folder), self.rank, self.world_size) // self.batch_size)

    @property
    def num_videos(self) -> int:  # the name evaluation code uses for "items to score"
        return len(self.folder)

    @property
    def num_views(self) -> int:  # views per item, as VideoLoader's: evaluation takes one centre crop per image
        return 1

    @property
    def stats(self) -> dict:
        return {"rejected_files": len(self.folder.rejected)}

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """As VideoLoader's; DALI's file reader cannot start mid-epoch, so the skipped batches are read and dropped."""
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"cannot skip {skip_batches} batches of an epoch of {len(self)}")
        self.epoch, self._skip = int(epoch), int(skip_batches)

    def close(self) -> None:
        self._iterator = self._pipe = None
        self._finished = False

    def __iter__(self):
        self._start_epoch()
        self._finished, skip, self._skip = False, self._skip, 0
        for number in range(len(self)):
            out = next(self._iterator)[0]
            if number < skip:
                continue
            index = out["index"].reshape(-1).long()
            clips = out["clips"].to(torch.bfloat16) if self.dtype == torch.bfloat16 else out["clips"]
            yield {"clips": clips, "labels": self.labels[index], "index": index,
                   "view": torch.zeros_like(index)}
        self._finished = True
        self.epoch += 1

    def _start_epoch(self) -> None:
        """Training builds the epoch's pipeline (its file order is the epoch's plan); evaluation reuses one."""
        if self._pipe is not None and not self.training and self._finished:
            self._iterator.reset()
            return
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.close()
        if self.training:
            ids = train_order(len(self.folder), self.batch_size, self.world_size, self.seed, self.epoch,
                              self.repeats)
        else:
            ids = np.arange(len(self.folder))
        seed = int(np.random.SeedSequence([self.seed, self.rank, self.epoch]).generate_state(1)[0] % (2**31 - 1))
        self._pipe = build_image_pipeline(self.folder.root, [self.folder.files[i] for i in ids], ids.tolist(),
                                          self.opts, self.batch_size, self.num_threads, self.device_id,
                                          self.rank, self.world_size, seed, self.prefetch)
        self._iterator = DALIGenericIterator([self._pipe], ["clips", "index"], reader_name="Reader",
                                             last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)

    def __repr__(self) -> str:
        return (f"ImageLoader({self.folder.root!r}, images={len(self.folder)}, training={self.training}, "
                f"batches={len(self)}, repeats={self.repeats}, device={self.device})")
