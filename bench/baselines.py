"""The PyTorch DataLoader baselines of `bench.data`: what a user would run instead of our pipeline.

Every baseline draws the same clips as the pipeline (frame indices from pipelines.sampling, the crop box and
flip from pipelines.augment.train_params, per video and epoch), so the batches are the same clips and only the
work done per clip differs. Two kinds:

lean (`BaselineClips`), the strongest arrangement we could build on each reader: one read per clip, the crop box
resized straight to 224 with PIL, uint8 out of the workers, normalised in the main process (shipping float32
between processes costs 4x the bytes):
  pil          the JPEG frames of the shards, PIL
  pyav         the source video, decoded up to the last frame needed, only those converted to RGB
  decord / torchcodec   the source video through those readers' frame-index calls

the seeds' loaders (`IBMClips`, `MMActionClips`), step for step as their documented transforms do it:
  IBM action-recognition-pytorch (`VideoDataSet` + `get_augmentor(is_train=True, threed_data=True)`): one read
    and a full PIL decode per frame (their `Image.open(...).copy()` of one file per frame; here one shard read
    per frame), `GroupMultiScaleCrop` = PIL crop of the integer box then a bilinear resize to 224x224 per frame,
    `GroupRandomHorizontalFlip` per frame, `Stack` (np.stack), `ToTorchFormatTensor` (permute, contiguous,
    float, /255) and `GroupNormalize` (sub, div) in the worker: float32 clips leave the workers.
  mmaction2 video pipelines (`DecordInit`/`PyAVInit` + `SampleFrames` + `DecordDecode`/`PyAVDecode` + `Resize`
    to short side 256 + `MultiScaleCrop` + `Resize` to 224x224 + `Flip` + `FormatShape` + `PackActionInputs`):
    the whole file read into memory and opened from there; decord's `get_batch` of the indices (one decode
    thread, DecordInit's default), or PyAV decoding every frame up to the last index + 1 and converting EVERY
    decoded frame to an RGB array (PyAVDecode's "accurate" mode, the stream's default threading); each frame
    resized with OpenCV's bilinear (mmcv's `imresize`), cropped by slicing, resized again, flipped, stacked to
    NCTHW uint8; normalisation happens in the model's data preprocessor, here the main process, as for the
    lean baselines.
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image

from models.registry import InputContract
from pipelines import AugmentConfig
from pipelines.augment import train_params
from pipelines.augment_units import Flip, TrainCrop
from pipelines.sampling import ClipSpec, clip_indices, sample_rng

CONTRACT = InputContract("NCTHW", num_frames=8, crop_size=224)
AUGMENT = AugmentConfig(flip=True)  # multi-scale crop (the default) + flip
MMACTION_SHORT_SIDE = 256  # mmaction2's Resize(scale=(-1, 256)) before the multi-scale crop


def clip_plan(row: dict, index: int, seed: int = 0, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frame indices, train_params vector) of one training clip, as the pipeline draws them."""
    rng = sample_rng(seed, epoch, index)
    indices = clip_indices(row["num_frames"], ClipSpec.of(CONTRACT), True, rng)
    return indices, train_params(rng, *row["size"], AUGMENT)


def crop_box(params: np.ndarray) -> np.ndarray:
    """The relative crop box (x0, y0, x1, y1) of a clip's train_params vector."""
    return AUGMENT.layout.values(params, TrainCrop.slot).span()


def mirrored(params: np.ndarray) -> bool:
    """Whether a clip's train_params vector mirrors it."""
    return bool(AUGMENT.layout.values(params, Flip.slot).at())


def pixel_box(params: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The relative crop box of `params` in whole pixels of a width x height frame (the seeds crop integers)."""
    x0, y0, x1, y1 = (int(round(float(v) * s)) for v, s in zip(crop_box(params), (width, height, width, height)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def normalized(loader, device: torch.device):
    """Batches of float clips normalized on `device`, as a training loop would receive them. Float batches (the
    IBM loader normalises in its workers) only move."""
    mean = torch.tensor(CONTRACT.mean, device=device).view(1, 3, 1, 1, 1) * 255
    std = torch.tensor(CONTRACT.std, device=device).view(1, 3, 1, 1, 1) * 255
    for clips, labels in loader:
        clips = clips.to(device, non_blocking=True)
        if not clips.is_floating_point():
            clips = clips.float().sub_(mean).div_(std)
        yield {"clips": clips, "labels": labels.to(device, non_blocking=True)}


# --------------------------------------------------------------------------------------------- lean


def augment_frames(images: list[Image.Image], params: np.ndarray) -> torch.Tensor:
    """The DALI training transform in PIL: crop box resized to 224 (antialiased bilinear), flip; uint8 CTHW."""
    width, height = images[0].size
    box = tuple(float(v) for v in crop_box(params) * [width, height, width, height])
    size = CONTRACT.crop_size
    arrays = []
    for image in images:
        image = image.resize((size, size), Image.BILINEAR, box=box)
        if mirrored(params):
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        arrays.append(np.asarray(image))
    return torch.from_numpy(np.stack(arrays)).permute(3, 0, 1, 2)  # C, T, H, W


class BaselineClips(torch.utils.data.Dataset):
    """Training clips decoded by `reader` ("pil", "pyav", "decord", "torchcodec"), sampled as the pipeline does."""

    def __init__(self, ds, source_root: str, reader: str, seed: int = 0):
        self.ds, self.root, self.reader, self.seed = ds, source_root, reader, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        row = self.ds.rows[i]
        indices, params = clip_plan(row, i, self.seed)
        images = _READERS[self.reader](self, i, row, indices)
        return augment_frames(images, params), row["label"]

    def _pil(self, i, row, indices):
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


# --------------------------------------------------------------------------------------------- the seeds'


class IBMClips(torch.utils.data.Dataset):
    """IBM action-recognition-pytorch's training loader on the same shards: float32 normalized CTHW clips."""

    def __init__(self, ds, seed: int = 0):
        self.ds, self.seed = ds, seed
        self.mean = torch.tensor(CONTRACT.mean).view(3, 1, 1, 1)
        self.std = torch.tensor(CONTRACT.std).view(3, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.ds)

    def _load_image(self, i: int, j: int) -> Image.Image:
        # their _load_image: open one frame's file and copy() it, which decodes the whole JPEG
        with Image.open(io.BytesIO(self.ds.frames(i, [j])[0])) as image:
            return image.copy()

    def __getitem__(self, i: int):
        row = self.ds.rows[i]
        indices, params = clip_plan(row, i, self.seed)
        images = [self._load_image(i, j) for j in indices.tolist()]
        # GroupMultiScaleCrop: crop the integer box of every frame, then resize each crop to the input size
        box = pixel_box(params, *images[0].size)
        size = (CONTRACT.crop_size, CONTRACT.crop_size)
        images = [image.crop(box) for image in images]
        images = [image.resize(size, Image.BILINEAR) for image in images]
        if mirrored(params):  # GroupRandomHorizontalFlip
            images = [image.transpose(Image.FLIP_LEFT_RIGHT) for image in images]
        stacked = np.stack(images, axis=0)  # Stack(threed_data=True): T, H, W, C
        clip = torch.from_numpy(stacked).permute(3, 0, 1, 2).contiguous().float().div(255)  # ToTorchFormatTensor
        return clip.sub_(self.mean).div_(self.std), row["label"]  # GroupNormalize(threed_data=True)


class MMActionClips(torch.utils.data.Dataset):
    """mmaction2's video training pipeline with its decord or PyAV decode (`reader`), on the source videos:
    uint8 NCTHW clips (the one-clip axis dropped), normalized later as mmaction2's data preprocessor does."""

    def __init__(self, ds, source_root: str, reader: str, seed: int = 0):
        if reader not in ("decord", "pyav"):
            raise ValueError(f"reader must be decord or pyav, got {reader!r}")
        self.ds, self.root, self.reader, self.seed = ds, source_root, reader, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        import cv2

        cv2.setNumThreads(0)  # mmengine's default in dataloader workers: no OpenCV threads of its own
        row = self.ds.rows[i]
        indices, params = clip_plan(row, i, self.seed)
        with open(os.path.join(self.root, row["id"]), "rb") as f:  # FileClient("disk").get: the whole file
            data = io.BytesIO(f.read())
        frames = self._decord(data, indices) if self.reader == "decord" else self._pyav(data, indices)
        return torch.from_numpy(mmaction_transform(frames, params)), row["label"]

    @staticmethod
    def _decord(data: io.BytesIO, indices: np.ndarray) -> list[np.ndarray]:
        import decord

        container = decord.VideoReader(data, num_threads=1)  # DecordInit
        return list(container.get_batch(indices).asnumpy())  # DecordDecode, "accurate"

    @staticmethod
    def _pyav(data: io.BytesIO, indices: np.ndarray) -> list[np.ndarray]:
        import av

        with av.open(data) as container:  # PyAVInit
            last, decoded = int(indices.max()), []
            for frame in container.decode(video=0):  # PyAVDecode, "accurate": every frame becomes RGB
                if len(decoded) > last + 1:
                    break
                decoded.append(frame.to_rgb().to_ndarray())
        return [decoded[j % len(decoded)] for j in indices.tolist()]


def mmaction_transform(frames: list[np.ndarray], params: np.ndarray) -> np.ndarray:
    """Resize to short side 256, crop the box, resize to 224x224 (OpenCV bilinear, mmcv's imresize), flip,
    FormatShape to contiguous C, T, H, W uint8."""
    import cv2

    height, width = frames[0].shape[:2]
    scale = MMACTION_SHORT_SIDE / min(height, width)  # mmcv.rescale_size of (inf, 256), rounded as it does
    new_size = (int(width * scale + 0.5), int(height * scale + 0.5))
    side = CONTRACT.crop_size
    x0, y0, x1, y1 = pixel_box(params, *new_size)
    out = []
    for frame in frames:
        frame = cv2.resize(frame, new_size, interpolation=cv2.INTER_LINEAR)
        frame = cv2.resize(frame[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_LINEAR)
        if mirrored(params):
            frame = cv2.flip(frame, 1)  # mmcv.imflip_, horizontal
        out.append(frame)
    return np.ascontiguousarray(np.stack(out).transpose(3, 0, 1, 2))


# --------------------------------------------------------------------------------------------- registry

# name -> (label, role, modules it needs, dataset factory(prepped dataset, source root))
BASELINES = {
    "ibm": ("IBM VideoDataSet, PIL (frame shards)", "seeds", ("PIL",), lambda ds, src: IBMClips(ds)),
    "mmaction-decord": ("mmaction2 DecordDecode (video files)", "seeds", ("decord", "cv2"),
                        lambda ds, src: MMActionClips(ds, src, "decord")),
    "mmaction-pyav": ("mmaction2 PyAVDecode (video files)", "seeds", ("av", "cv2"),
                      lambda ds, src: MMActionClips(ds, src, "pyav")),
    "pil": ("torch + PIL (frame shards)", "baseline", ("PIL",), lambda ds, src: BaselineClips(ds, src, "pil")),
    "pyav": ("torch + PyAV (video files)", "baseline", ("av",), lambda ds, src: BaselineClips(ds, src, "pyav")),
    "decord": ("torch + decord (video files)", "baseline", ("decord",),
               lambda ds, src: BaselineClips(ds, src, "decord")),
    "torchcodec": ("torch + torchcodec (video files)", "baseline", ("torchcodec.decoders",),
                   lambda ds, src: BaselineClips(ds, src, "torchcodec")),
}
SEEDS = "ibm"  # the row the "vs seeds'" ratios divide by: the seeds' loader of the same frame shards


def missing(name: str) -> str | None:
    """Why baseline `name` cannot run here (one line), or None when it can."""
    for module in BASELINES[name][2]:
        try:
            __import__(module)
        except ImportError as e:
            return f"skipped: {module} not importable ({e}); `make bench-data` installs requirements-bench.txt"
    return None
