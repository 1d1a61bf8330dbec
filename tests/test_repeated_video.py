"""Repeated augmentation for video (PySlowFast's AUG.NUM_SAMPLE), IBM's frames_per_group and mmaction's twice test
sampling: through the DALI loader (CPU graph), the trainer's config and `python -m eval --twice`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.__main__ import main as eval_main
from models.registry import InputContract
from pipelines import AugmentConfig, build_loader
from pipelines.sampling import grouped_indices, sample_rng, tsn_indices
from prep import open_dataset
from prep.decode import DecodeOptions
from prep.runner import JobOptions, run_prep
from prep.synthetic import generate
from prep.tasks import number_tasks, parse_video_lists
from train.__main__ import main as train_main
from train.config import ConfigError, TrainConfig, load_config
from train.setup import check_sampling
from train.tasks import video_loader_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT = InputContract("NCTHW", num_frames=4, crop_size=32)
AUGMENT = AugmentConfig(flip=True, jitter=(0.4, 0.4, 0.4, 0.0))


@pytest.fixture(scope="module")
def frames_data(tmp_path_factory):
    """12 moving-object videos (8 train, 4 val), 20 frames of 64x48, stored as JPEG frames."""
    base = tmp_path_factory.mktemp("repeated")
    src = base / "src"
    generate(str(src), videos=12, frames=20, size=(48, 64), codec="h264", classes=4, val_fraction=0.25,
             progress=False)
    tasks, classes = parse_video_lists([f"train={src / 'train.txt'}", f"val={src / 'val.txt'}"], str(src),
                                       str(src / "classes.txt"))
    run_prep(number_tasks(tasks), classes, str(base / "frames"), DecodeOptions(short_side=0, store="frames",
             min_frames=2), JobOptions(progress=False))
    return str(base / "frames")


def _loader(data, training=True, batch_size=2, contract=CONTRACT, **options):
    return build_loader(data, "train" if training else "val", contract, batch_size, training, num_threads=1,
                        py_workers=1, augment=AUGMENT if training else None, seed=5, **options)


def _epoch(loader, epoch: int) -> dict:
    loader.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


# --------------------------------------------------------------------------------------------- repeated augmentation


def test_copies_share_a_batch_with_their_label_and_their_own_augmentation(frames_data):
    plain, rep = _loader(frames_data), _loader(frames_data, repeats=2)
    assert len(rep) == len(plain) == 4  # an epoch keeps its steps: 8 videos, 2 per batch
    rep.set_epoch(0)
    first = next(iter(rep))
    assert first["clips"].shape == (4, 3, 4, 32, 32)  # batch_size videos x 2 copies
    a, b = _epoch(plain, 0), _epoch(rep, 0)
    assert torch.equal(b["index"][0::2], b["index"][1::2]) and torch.equal(b["index"][0::2], a["index"])
    assert b["view"].tolist() == [0, 1] * 8
    labels = open_dataset(frames_data, "train").labels
    assert b["labels"].tolist() == [labels[i] for i in b["index"].tolist()]
    # copy 0 draws from the stream a run without repeats draws from; copy 1 has frames and augmentation of its own
    assert torch.equal(b["clips"][0::2], a["clips"])
    assert all(not torch.equal(b["clips"][i], b["clips"][i + 1]) for i in range(0, 16, 2))


def test_copies_depend_only_on_seed_epoch_video_and_copy(frames_data):
    first = _loader(frames_data, repeats=3)
    e0, e1 = _epoch(first, 0), _epoch(first, 1)
    again = _epoch(_loader(frames_data, repeats=3), 1)  # a fresh loader started at epoch 1, as a resumed run
    assert all(torch.equal(e1[k], again[k]) for k in e1)
    assert not torch.equal(e0["index"], e1["index"])
    assert e1["view"].tolist() == [0, 1, 2] * 8


def test_same_frames_copies_read_one_frame_sample(frames_data):
    def jpegs(loader, copy):  # the frames path's sample: T JPEG buffers, meta, params
        out = loader.clip_source(0).sample(3, copy, 0)
        return [bytes(j) for j in out[:-2]], out[-1]

    own, shared = _loader(frames_data, repeats=2), _loader(frames_data, repeats=2, same_frames=True)
    (own0, p0), (own1, p1) = jpegs(own, 0), jpegs(own, 1)
    (sh0, q0), (sh1, q1) = jpegs(shared, 0), jpegs(shared, 1)
    assert own0 != own1 and sh0 == sh1 == own0
    assert np.array_equal(p0, q0) and np.array_equal(p1, q1) and not np.array_equal(p0, p1)


def test_two_ranks_shard_videos_and_repeat_them_locally(frames_data):
    ranks = [_epoch(_loader(frames_data, repeats=2, rank=r, world_size=2), 2) for r in range(2)]
    for out in ranks:
        assert torch.equal(out["index"][0::2], out["index"][1::2]) and len(out["index"]) == 8
    videos = [set(out["index"].tolist()) for out in ranks]
    assert not videos[0] & videos[1] and videos[0] | videos[1] == set(range(8))


# --------------------------------------------------------------------------------------------- frames_per_group


def test_frames_per_group_reads_ibms_grouped_frames(frames_data):
    loader = _loader(frames_data, frames_per_group=2)
    data = loader.dataset
    jpegs = loader.clip_source(0).sample(6, 0, 0)[:-2]
    n = data.rows[6]["num_frames"]
    expected = grouped_indices(n, 2, 2, sample_rng(5, 0, 6, 0))
    assert [bytes(j) for j in jpegs] == [bytes(j) for j in data.frames(6, expected)]
    assert _epoch(loader, 0)["clips"].shape == (8, 3, 4, 32, 32)
    with pytest.raises(ValueError, match="must divide the clip's 4 frames"):
        _loader(frames_data, frames_per_group=3)


# --------------------------------------------------------------------------------------------- twice sampling


def test_twice_adds_the_segment_start_views(frames_data):
    loader = _loader(frames_data, training=False, batch_size=3, twice=True, crops=3)
    assert loader.num_views == 6
    out = _epoch(loader, 0)
    assert sorted(zip(out["index"].tolist(), out["view"].tolist())) == [(v, w) for v in range(4) for w in range(6)]
    data = loader.dataset
    n = data.rows[1]["num_frames"]
    starts = loader.clip_source(0).sample(1, 3, 0)[:-2]  # view 3: clip 1 (the starts), crop 0
    assert [bytes(j) for j in starts] == [bytes(j) for j in data.frames(1, tsn_indices(n, 4, clip=1, twice=True))]
    assert tsn_indices(n, 4, clip=1, twice=True).tolist() == [0, n // 4, n // 2, 3 * n // 4]


def test_loader_refuses_options_where_they_do_nothing(frames_data):
    dense = InputContract("NCTHW", num_frames=4, crop_size=32, sampling="dense", frame_stride=2)
    for kwargs, needle in (({"training": False, "repeats": 2}, "1 for evaluation"),
                           ({"same_frames": True}, "needs repeats > 1"),
                           ({"twice": True}, "evaluation protocol"),
                           ({"training": False, "twice": True, "contract": dense}, "tsn sampling, not dense")):
        with pytest.raises(ValueError, match=needle):
            _loader(frames_data, **kwargs)


# --------------------------------------------------------------------------------------------- config


def test_config_keys_and_their_refusals():
    cfg = load_config(["--data", "d", "--repeated-aug", "2", "--repeated-aug-same-frames", "--num-frames", "8",
                       "--frames-per-group", "2", "--eval-twice-sample", "--mixup", "0.8", "--batch-size", "3"])
    assert video_loader_options(cfg, True) == {"frames_per_group": 2, "repeats": 2, "same_frames": True,
                                               "protocol": "vidkit"}
    assert video_loader_options(cfg, False) == {"frames_per_group": 2, "twice": True, "protocol": "vidkit"}
    for argv, needle in ((["--repeated-aug-same-frames"], "'repeated_aug_same_frames'"),
                         (["--repeated-aug", "0"], "'repeated_aug' must be >= 1"),
                         (["--num-frames", "6", "--sampling", "tsn", "--frames-per-group", "4"], "must divide"),
                         (["--sampling", "dense", "--num-frames", "8", "--frames-per-group", "2"], "frame_stride"),
                         (["--sampling", "dense", "--eval-twice-sample"], "'eval_twice_sample'"),
                         (["--task", "image", "--eval-twice-sample"], "'eval_twice_sample'"),
                         (["--mixup", "0.8", "--batch-size", "3", "--repeated-aug", "3"], "3 x repeated_aug 3")):
        with pytest.raises(ConfigError, match=needle):
            load_config(["--data", "d", *argv])


def test_model_contract_is_checked_against_the_sampling_keys():
    dense = InputContract("NCTHW", num_frames=8, crop_size=32, sampling="dense", frame_stride=2)
    with pytest.raises(ConfigError, match="'frames_per_group'.*use frame_stride"):
        check_sampling(TrainConfig(data="d", frames_per_group=2), dense)
    with pytest.raises(ConfigError, match="'frames_per_group'.*divide"):
        check_sampling(TrainConfig(data="d", frames_per_group=3), CONTRACT)
    with pytest.raises(ConfigError, match="'eval_twice_sample'.*samples dense"):
        check_sampling(TrainConfig(data="d", eval_twice_sample=True), dense)
    check_sampling(TrainConfig(data="d", frames_per_group=2, eval_twice_sample=True), CONTRACT)


# --------------------------------------------------------------------------------------------- end to end


def _run(module: str, *args):
    """`python -m MODULE ARGS`, in this process: the same entry point without a fresh interpreter's imports (about
    10 CPU-seconds a launch)."""
    assert {"train": train_main, "eval": eval_main}[module](list(args)) == 0


def _train(data, out, *extra):
    _run("train", "--model", "tsn_tiny", "--data", str(data), "--output", str(out), "--name", "run",
         "--batch-size", "4", "--py-workers", "1", "--threads", "1", "--amp", "none", "--no-progress",
         "--optimizer", "adamw", "--lr", "0.002", "--num-frames", "4", "--frames-per-group", "2",
         "--repeated-aug", "2", "--eval-every", "0", "--seed", "1", "--epochs", "2", *extra)
    return torch.load(out / "run" / "last.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_repeated_training_resumes_exactly_and_evaluates_twice(data, tmp_path):
    a = _train(data, tmp_path / "a", "--eval-every", "1", "--eval-twice-sample")  # validation reads no training RNG
    rows = [json.loads(x) for x in Path(tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clips"] for r in rows] == [56, 56]  # 30 videos: 7 batches of 4 videos x 2 copies
    assert all(r["val_videos"] == 10 for r in rows)  # validation checks every video was scored twice
    assert _train(data, tmp_path / "b", "--max-steps", "5")["step"] == 5  # stopped in the first epoch
    b = _train(data, tmp_path / "b")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 14)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    _run("eval", "--ckpt", str(tmp_path / "a" / "run" / "last.pt"), "--twice", "--batch-size", "4",
         "--py-workers", "1", "--no-progress")
    metrics = json.loads((tmp_path / "a" / "run" / "eval_val_last_vidkit_1x1_twice" / "metrics.json").read_text())
    assert (metrics["views"], metrics["twice_sample"], metrics["videos"]) == (2, True, 10)
    assert metrics["protocol"]["frames_per_group"] == 2
