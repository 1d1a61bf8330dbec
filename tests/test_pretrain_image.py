"""Image pre-training (the STS recipe): the image-folder index, epoch plans with repeated augmentation, the DALI
image pipeline, `train --task image`, and its checkpoint loading into the video model with STS on or off."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models.sts import STSConv3d
from pipelines import AugmentConfig
from pipelines.images import ImageLoader, open_image_folder, steps_per_epoch, train_order
from prep.synthetic_images import SHAPES, generate_image_folder
from train.config import ConfigError, load_config
from train.tasks import check_one_frame

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_MODELS = ("ircsn_tiny", "r2plus1d_tiny", "slowonly_tiny", "slowfast_tiny", "x3d_tiny")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    generate_image_folder(root, per_class=12, val_per_class=3, size=64, progress=False)
    return root


@pytest.fixture(scope="module")
def folder(images):
    return open_image_folder(images, "train", progress=False)


def _contract(name="ircsn_tiny"):
    return models.create_model(name, num_classes=len(SHAPES)).input_contract


# --------------------------------------------------------------------------------------------- the folder index


def test_index_lists_classes_and_labels(images, folder):
    assert folder.classes == sorted(SHAPES) and len(folder) == 12 * len(SHAPES)
    for path, label in zip(folder.files, folder.labels):
        assert path.split("/")[0] == folder.classes[label]
    val = open_image_folder(images, "val", classes=folder.classes, progress=False)
    assert len(val) == 3 * len(SHAPES) and val.rows[0] == {"id": val.files[0], "label": int(val.labels[0])}


def test_index_leaves_out_bad_files_and_counts_them(tmp_path):
    generate_image_folder(tmp_path, per_class=2, val_per_class=1, size=32, progress=False)
    (tmp_path / "train" / "disc" / "empty.JPEG").write_bytes(b"")
    (tmp_path / "train" / "disc" / "text.jpg").write_text("not an image at all")
    (tmp_path / "train" / "disc" / "notes.txt").write_text("ignored: not an image extension")
    found = open_image_folder(tmp_path, "train", progress=False)
    assert len(found) == 2 * len(SHAPES)
    assert sorted(found.rejected) == [("disc/empty.JPEG", "empty file"),
                                      ("disc/text.jpg", "not a JPEG/PNG/BMP/WebP file")]
    loader = ImageLoader(found, _contract(), 4, True)
    assert loader.stats == {"rejected_files": 2}


def test_index_errors_are_one_line(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="split not found"):
        open_image_folder(tmp_path, "train")
    (tmp_path / "val" / "unicorn").mkdir(parents=True)
    with pytest.raises(ValueError, match="class folders the training split lacks: unicorn"):
        open_image_folder(tmp_path, "val", classes=folder.classes)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        open_image_folder(tmp_path, "train")


# --------------------------------------------------------------------------------------------- epoch plans


def test_train_order_shards_and_reshuffles():
    order = train_order(50, batch_size=4, world_size=3, seed=1, epoch=0)
    assert len(order) == 3 * steps_per_epoch(50, 4, 3) * 4 == 48
    assert len(set(order.tolist())) == 48  # no repeats: distinct images, the remainder dropped
    assert np.array_equal(order, train_order(50, 4, 3, seed=1, epoch=0))
    assert not np.array_equal(order, train_order(50, 4, 3, seed=1, epoch=1))
    assert not np.array_equal(order, train_order(50, 4, 3, seed=2, epoch=0))


def test_repeated_augmentation_spreads_copies_over_ranks():
    world, batch, repeats = 4, 6, 3
    order = train_order(100, batch, world, seed=0, epoch=3, repeats=repeats)
    per_rank = len(order) // world
    assert len(order) == 96  # the epoch keeps its length: fewer distinct images, each three times
    counts = collections.Counter(order.tolist())
    assert len(counts) == 32 and set(counts.values()) == {3}
    ranks = collections.defaultdict(set)
    for position, image in enumerate(order.tolist()):
        ranks[image].add(position // per_rank)
    assert all(len(r) == repeats for r in ranks.values())  # every copy on another rank, as timm's sampler


# --------------------------------------------------------------------------------------------- the DALI pipeline


@pytest.mark.parametrize("name,shape", [("ircsn_tiny", (4, 3, 1, 64, 64)), ("tsn_tiny", (4, 1, 3, 64, 64))])
def test_training_batches_are_one_frame_clips(folder, name, shape):
    aug = AugmentConfig(area=(0.3, 1.0), flip=True, rand_augment=2)
    loader = ImageLoader(folder, _contract(name), 4, True, augment=aug, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 18
    for b in batches:
        assert b["clips"].shape == shape and b["clips"].dtype == torch.float32
        assert torch.equal(b["labels"], torch.as_tensor(folder.labels)[b["index"]])
    seen = torch.cat([b["index"] for b in batches])
    assert len(set(seen.tolist())) == 72  # one epoch without repeats: every image once


def test_evaluation_is_the_normalised_centre_crop(images, folder):
    """With the short side kept (eval_scale = 64 / 48) the pipeline is decode + centre crop + normalise, so it
    must match PIL's decode of the same file."""
    val = open_image_folder(images, "val", classes=folder.classes, progress=False)
    contract = _contract()
    loader = ImageLoader(val, contract, 5, False, image_size=48, augment=AugmentConfig(eval_scale=64 / 48))
    batch = next(iter(loader))
    for clip, index in zip(batch["clips"], batch["index"].tolist()):
        pixels = np.asarray(Image.open(os.path.join(val.root, val.files[index])).convert("RGB"), np.float32)
        crop = torch.from_numpy(pixels[8:56, 8:56]).permute(2, 0, 1)
        mean, std = (torch.tensor(v).view(3, 1, 1) * 255 for v in (contract.mean, contract.std))
        assert (clip[:, 0] - (crop - mean) / std).abs().mean() < 0.01  # a 1-pixel shift gives 0.07


@pytest.mark.parametrize("world", [1, 3])
def test_evaluation_covers_every_image_once_across_ranks(images, folder, world):
    val = open_image_folder(images, "val", classes=folder.classes, progress=False)
    counts = collections.Counter()
    for rank in range(world):
        loader = ImageLoader(val, _contract(), 4, False, rank=rank, world_size=world)
        for _ in range(2):  # a second pass reads the same images again
            batches = list(loader)
            assert len(batches) == len(loader)
        counts.update(torch.cat([b["index"] for b in batches]).tolist())
    assert counts == collections.Counter(range(len(val)))


def test_training_is_deterministic_per_epoch_and_repeats_are_augmented_apart(folder):
    def epoch(e, repeats=1):
        loader = ImageLoader(folder, _contract(), 6, True, augment=AugmentConfig(area=(0.2, 1.0)), seed=5,
                             repeats=repeats)
        loader.set_epoch(e)
        return list(loader)

    first, again, other = epoch(2), epoch(2), epoch(3)
    assert all(torch.equal(a["clips"], b["clips"]) for a, b in zip(first, again))  # a resumed run reads the same
    assert not torch.equal(first[0]["index"], other[0]["index"])
    batch = epoch(0, repeats=3)[0]
    index = batch["index"].tolist()
    assert index[0] == index[1] == index[2]  # one rank: the copies share a batch
    assert not torch.equal(batch["clips"][0], batch["clips"][1])  # each copy cropped on its own


def test_loader_argument_errors(folder):
    contract = _contract()
    with pytest.raises(ValueError, match="colour jitter"):
        ImageLoader(folder, contract, 4, True, augment=AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.1)))
    with pytest.raises(ValueError, match="1 for evaluation"):
        ImageLoader(folder, contract, 4, False, repeats=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ImageLoader(folder, contract, 64, True, world_size=2)


# --------------------------------------------------------------------------------------------- train and fine-tune


def test_config_rules_for_image_task():
    with pytest.raises(ConfigError, match="one centre crop"):
        load_config(["--task", "image", "--data", "x", "--eval-crops", "3"])
    with pytest.raises(ConfigError, match="repeated_aug"):  # video copies only: images have no frames to share
        load_config(["--task", "image", "--data", "x", "--repeated-aug", "3", "--repeated-aug-same-frames"])
    with pytest.raises(ConfigError, match="image_size"):
        load_config(["--data", "x", "--image-size", "128"])
    cfg = load_config(["--config", os.path.join(ROOT, "configs", "imagenet_sts.yaml"), "--data", "x"])
    assert (cfg.task, cfg.optimizer, cfg.repeated_aug, cfg.ema, cfg.model_args) == (  # the authors' LAMB script
        "image", "lamb", 3, False, {"sts": False, "drop_path_rate": 0.05})
    assert cfg.mixup > 0 and cfg.cutmix > 0 and cfg.warmup_epochs > 0 and cfg.keep_best == 10


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_take_images_and_load_into_video_models(tmp_path, name):
    image_model = models.create_model(name, num_classes=len(SHAPES), sts=True)
    check_one_frame(image_model, image_model.input_contract.crop_size, torch.device("cpu"))
    with torch.no_grad():
        for p in image_model.parameters():
            p.add_(torch.randn_like(p))  # not the initialisation a fresh model would have
    state = {"model": image_model.state_dict(), "ema": None, "model_name": name}
    torch.save(state, tmp_path / "best.pt")
    for sts in (True, False):
        video_model = models.create_model(name, num_classes=10, pretrained=str(tmp_path / "best.pt"), sts=sts)
        assert any(isinstance(m, STSConv3d) for m in video_model.modules()) == sts
        own = video_model.state_dict()
        heads = {k for k in own if own[k].shape != state["model"][k].shape}
        assert heads and all(k.split(".")[0] in ("fc", "head", "classifier", "fc2") for k in heads), heads
        assert all(torch.equal(own[k], v) for k, v in state["model"].items() if k not in heads)


def test_models_that_cannot_take_one_frame_fail_at_start():
    model = models.create_model("tam_tiny", num_classes=4)
    with pytest.raises(ValueError, match="cannot take a one-frame clip"):
        check_one_frame(model, 64, torch.device("cpu"))


def _run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def learnable_images(tmp_path_factory):
    """Enough images that a tiny model's training loss falls clearly within a few epochs: with the 12 per class
    of `images`, strong crops and repeated augmentation, r2plus1d_tiny stays within noise of ln(6) for 6-10
    epochs (a 72-image epoch is 9 noisy steps of batch 8)."""
    root = tmp_path_factory.mktemp("learnable_images")
    generate_image_folder(root, per_class=24, val_per_class=3, size=64, progress=False)
    return root


@pytest.mark.slow
def test_pretrain_lowers_the_loss_then_fine_tunes_on_video(learnable_images, data, tmp_path):
    # mild crops and no repeats (tested on their own above and in the resume/DDP runs): shapes learnable fast
    _run("-m", "train", "--task", "image", "--model", "r2plus1d_tiny", "--data", str(learnable_images),
         "--output", str(tmp_path), "--name", "img", "--batch-size", "8", "--threads", "1", "--amp", "none",
         "--no-progress", "--optimizer", "adamw", "--lr", "0.003", "--epochs", "5", "--model-args.sts", "true",
         "--ema", "--ema-decay", "0.5", "--augment.area", "[0.8, 1.0]", "--augment.flip", "true",
         "--eval-every", "5")
    run = tmp_path / "img"
    rows = [json.loads(line) for line in Path(run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 6)) and "val_top1" in rows[-1]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.05
    state = torch.load(run / "best.pt", weights_only=False)
    assert state["config"]["task"] == "image" and state["ema"] is not None
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    # evaluation of an image checkpoint scores every validation image once
    _run("-m", "eval", "--ckpt", str(run / "best.pt"), "--batch-size", "5", "--amp", "none", "--no-progress")
    metrics = json.loads((run / "eval_val_best_vidkit_1x1" / "metrics.json").read_text())
    assert metrics["videos"] == 3 * len(SHAPES)
    # the checkpoint is the video model's `--pretrained`, with STS switched off for fine-tuning
    _run("-m", "train", "--model", "r2plus1d_tiny", "--data", str(data), "--output", str(tmp_path), "--name",
         "video", "--pretrained", str(run / "best.pt"), "--model-args.sts", "false", "--batch-size", "4",
         "--py-workers", "1", "--threads", "1", "--amp", "none", "--no-progress", "--epochs", "1",
         "--max-steps", "2", "--eval-every", "0")
    tuned = torch.load(tmp_path / "video" / "last.pt", weights_only=False)
    assert tuned["num_classes"] == 10 and tuned["config"]["model_args"] == {"sts": False}
    assert tuned["model"]["fc.weight"].shape[0] == 10


@pytest.mark.slow
def test_resumed_pretraining_matches_an_uninterrupted_one(images, tmp_path):
    common = ("-m", "train", "--task", "image", "--model", "x3d_tiny", "--data", str(images), "--output",
              str(tmp_path), "--batch-size", "8", "--threads", "1", "--amp", "none", "--no-progress", "--optimizer",
              "adamw", "--lr", "0.003", "--sched", "none", "--epochs", "2", "--eval-every", "0",
              "--repeated-aug", "2", "--augment.rand_augment", "2", "--augment.flip", "true")
    _run(*common, "--name", "whole")
    _run(*common, "--name", "split", "--max-steps", "9")  # stops after epoch 1 (9 steps), as if killed there
    _run(*common, "--name", "split")  # --resume auto picks up last.pt
    whole, split = (torch.load(tmp_path / n / "last.pt", weights_only=False) for n in ("whole", "split"))
    assert whole["step"] == split["step"] == 18
    for key, value in whole["model"].items():
        assert torch.allclose(value.float(), split["model"][key].float(), atol=1e-6), key


@pytest.mark.gpu
def test_mixed_decoding_matches_the_cpu_path(images, folder):
    """nvJPEG (`mixed`) decoding: tensors on the GPU, the same images, labels and crops as the CPU path up to the
    decoders' rounding; training batches too."""
    val = open_image_folder(images, "val", classes=folder.classes, progress=False)
    contract = _contract()
    cpu = list(ImageLoader(val, contract, 4, False))
    gpu = list(ImageLoader(val, contract, 4, False, device_id=0))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b["clips"].is_cuda and b["labels"].is_cuda
        assert torch.equal(a["index"], b["index"].cpu()) and torch.equal(a["labels"], b["labels"].cpu())
        assert (a["clips"] - b["clips"].cpu()).abs().mean() < 0.05
    train = ImageLoader(folder, contract, 4, True, device_id=0, augment=AugmentConfig(rand_augment=2, flip=True))
    batch = next(iter(train))
    assert batch["clips"].is_cuda and batch["clips"].shape == (4, 3, 1, 64, 64)
    assert torch.equal(batch["labels"], torch.as_tensor(folder.labels, device="cuda")[batch["index"]])


@pytest.mark.slow
def test_image_pretraining_under_ddp(images, tmp_path):
    """Two gloo processes: equal step counts from DALI's shards, repeated augmentation across ranks, and a
    validation that scores each of the 18 images once although the ranks hold 9 each in batches of 4."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train",
           "--task", "image", "--model", "x3d_tiny", "--data", str(images), "--output", str(tmp_path), "--name",
           "ddp", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--amp", "none", "--no-progress",
           "--repeated-aug", "2", "--optimizer", "adamw", "--lr", "0.001"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in Path(tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["steps"] == 9 and rows[0]["clips"] == 36 and "val_top1" in rows[0]  # 72 images / (2 x 4)
