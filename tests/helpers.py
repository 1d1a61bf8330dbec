"""Plain helpers shared by several test modules: synthetic stores, a tsn_tiny checkpoint, damaged shards, an epoch
read as arrays. The fixtures built from them live in conftest.py; a test module imports from here, never from
another test module (tests/test_suite_rules.py checks that)."""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models.registry import InputContract
from prep import open_dataset
from prep.decode import DecodeOptions
from prep.runner import JobOptions, run_prep
from prep.synthetic import encode_video, generate
from prep.tasks import number_tasks, parse_video_lists
from train.config import TrainConfig
from runtime.dist import Dist

CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
NCTHW = InputContract("NCTHW", num_frames=4, crop_size=32)
NTCHW = InputContract("NTCHW", num_frames=3, crop_size=24, sampling="dense", frame_stride=2)
# NVDEC refuses frames under its minimum size (VP9 and AV1 128 px, HEVC 144 px): the GPU tests read videos of a
# realistic short side
GPU_SIZE = (256, 320)


def skip_unless_ci(why: str) -> None:
    """Skip with `why`; under CI=true fail with it instead: CI installs everything the suite needs, so a missing
    piece there is a broken set-up, not a reason to pass."""
    if os.environ.get("CI"):
        pytest.fail(f"CI=true: this test must run in CI: {why}", pytrace=False)
    pytest.skip(why)


def prep_store(src: str, lists: list[str], out: str, store: str, encoder: str = "yuv") -> str:
    """Prep the listed videos of `src` into `out` as a `store` ("frames" or "video") store; returns `out`."""
    tasks, classes = parse_video_lists(lists, src, os.path.join(src, "classes.txt"))
    decode = DecodeOptions(short_side=0, store=store, min_frames=2, encoder=encoder)
    run_prep(number_tasks(tasks), classes, out, decode, JobOptions(progress=False))
    return out


def synthetic_store(base, codec: str, store: str, size=(48, 64), encoder: str = "yuv") -> str:
    """12 moving-object videos (8 train, 4 val, 4 classes) of 20 frames, made once per `base`, prepped as `store`."""
    tag = "" if size == (48, 64) else f"-{size[0]}p"
    src = base / f"src-{codec}{tag}"
    if not (src / "train.txt").exists():  # another store of the same videos may have made them
        generate(str(src), videos=12, frames=20, size=size, codec=codec, classes=4, val_fraction=0.25,
                 progress=False)
    return prep_store(str(src), [f"train={src / 'train.txt'}", f"val={src / 'val.txt'}"],
                      str(base / f"{codec}{tag}-{store}{'' if encoder == 'yuv' else '-' + encoder}"), store, encoder)


def still_pattern(base, size=(48, 64)) -> str:
    """4 still videos (every frame identical, losslessly coded) of a pattern whose red rises left to right
    and green top to bottom: any crop or mirror shows in the pixels."""
    height, width = size
    src = base / f"src-pattern-{height}p"
    (src / "videos").mkdir(parents=True)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), np.full_like(xs, 128)], -1).astype(np.uint8)
    lines = []
    for k in range(4):
        encode_video(src / "videos" / f"still{k}.mp4", [image] * 12, fps=12, codec="h264", crf=0)
        lines.append(f"videos/still{k}.mp4 {'ab'[k % 2]}\n")
    (src / "train.txt").write_text("".join(lines))
    (src / "classes.txt").write_text("a\nb\n")
    return prep_store(str(src), [f"train={src / 'train.txt'}"], str(base / f"pattern-{height}p-frames"), "frames")


def run_epoch(loader, epoch=None) -> dict:
    """One epoch as numpy arrays; checks batch count, sizes and that every label is its video's label."""
    if epoch is not None:
        loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    ds = loader.dataset
    for b in batches[:-1]:
        assert b["clips"].shape[0] == loader.plan.batch_size
    out = {k: np.concatenate([(b[k].float() if k == "clips" else b[k]).cpu().numpy() for b in batches])
           for k in batches[0]}
    assert len(out["labels"]) == loader.num_samples
    assert out["labels"].tolist() == [ds.record(int(i))["label"] for i in out["index"]]
    return out


def damage_video(root: str, video: int, split: str = "train") -> None:
    """Flip one byte in the middle of every stored JPEG frame of `split` video `video` (in place)."""
    ds = open_dataset(root, split)
    row = ds.record(video)
    path = os.path.join(root, "shards", row["shard"])
    raw = bytearray(Path(path).read_bytes())
    for jpeg in set(ds.frames(video, range(row["num_frames"]))):  # a still scene repeats frames
        at = raw.find(jpeg)
        assert at >= 0, "a stored frame is not contiguous in the shard file"
        while at >= 0:
            raw[at + len(jpeg) // 2] ^= 0xFF
            at = raw.find(jpeg, at + 1)
    with open(path, "wb") as f:
        f.write(raw)


def tsn_checkpoint(path, data, classes, model_name="tsn_tiny", seed=0) -> str:
    """A toolkit checkpoint of `model_name` (4 frames, 32 px crops, seeded weights) whose run names `data`."""
    torch.manual_seed(seed)
    model = models.create_model(model_name, num_classes=len(classes), num_frames=4)
    cfg = TrainConfig(model=model_name, data=str(data), threads=1).to_dict()
    torch.save({"model_name": model_name, "num_classes": len(classes), "classes": list(classes),
                "contract": model.input_contract.replace(crop_size=32).to_dict(), "config": cfg,
                "model": model.state_dict(), "ema": None}, path)
    return str(path)


def randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm affines and statistics, so a misplaced BN changes the output."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, 0, 0.1)
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


class FillingFile:
    """A file whose disk fills up after `left[0]` more bytes (or characters): the write that passes it writes what
    fits, then fails as a full disk does."""

    def __init__(self, f, left: list[int]):
        self._f, self._left = f, left

    def write(self, data):
        if len(data) > self._left[0]:
            self._f.write(data[:self._left[0]])
            self._f.flush()
            self._left[0] = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._left[0] -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


@contextlib.contextmanager
def ordinary_scheduling():
    """SVT-AV1 (PyAV's libsvtav1 encoder) run as root puts the calling thread under SCHED_FIFO at priority 99 and
    leaves it there: every child the test process starts afterwards inherits it, and two training subprocesses then
    spun at real-time priority and starved the machine. Encoders in the tests run inside this, which puts the
    ordinary policy back."""
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def stores_per_format(tmp_path_factory, *extra: str) -> dict:
    """20 synthetic videos (10 train, 10 val) at 32 px, one prepped store per format (lmdb, arrow); `extra`: more
    `prep synthetic` options (`--shard-size 20K`: several shards)."""
    from prep.__main__ import main as prep_main

    outs = {}
    for fmt in ("lmdb", "arrow"):
        out = tmp_path_factory.mktemp(fmt)
        assert prep_main(["synthetic", "--out", str(out), "--videos", "20", "--frames", "8", "--size", "32",
                          "--format", fmt, *extra, "--workers", "1", "--no-progress"]) == 0
        outs[fmt] = out
    return outs


def copy_store(store, tmp_path, name: str = "data") -> str:
    """A writable copy of a shared prepped store (without its lock files), to damage."""
    out = tmp_path / name
    shutil.copytree(store, out, ignore=shutil.ignore_patterns("*-lock"))
    return str(out)
