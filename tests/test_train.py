"""train and eval end to end on a tiny synthetic set: checkpoints, kill-and-resume, DDP, mixup, frozen weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from timm.data import Mixup

import models
from procs import children, wait_gone
from train.config import TrainConfig
from train.setup import Dist, build_optimizer, mix_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(data, run_dir, *extra, env=None, wait=True):
    cmd = [sys.executable, "-m", "train", "--model", "tsn_tiny", "--data", str(data), "--output", str(run_dir),
           "--name", "run", "--batch-size", "4", "--py-workers", "1", "--threads", "1", "--amp", "none",
           "--no-progress", "--optimizer", "adamw", "--lr", "0.002", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_train_checkpoint_eval(data, tmp_path):
    _train(data, tmp_path, "--epochs", "2", "--eval-every", "1")
    run = tmp_path / "run"
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl", "curves.png"):
        assert (run / name).exists(), name
    rows = [json.loads(x) for x in Path(run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 <= r["data_wait_pct"] <= 100 and r["clips_per_s"] > 0 for r in rows)
    assert rows[0]["clips"] == 28  # 30 train videos in batches of 4: the partial batch is dropped
    proc = subprocess.run([sys.executable, "-m", "eval", "--ckpt", str(run / "best.pt"), "--clips", "2", "--crops",
                           "3", "--batch-size", "4", "--py-workers", "1", "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = run / "eval_val_best_vidkit_2x3"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["videos"] == 10 and 0 <= metrics["top1"] <= metrics["top5"] <= 100
    preds = json.loads((report / "predictions.json").read_text())
    assert len(preds) == 10 and len({p["id"] for p in preds}) == 10
    assert len((report / "per_class.csv").read_text().splitlines()) == 11
    assert (report / "confusion.png").stat().st_size > 1000


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(data, tmp_path):
    args = ("--epochs", "3", "--eval-every", "0", "--seed", "3")
    _train(data, tmp_path / "a", *args)
    proc = _train(data, tmp_path / "b", *args, wait=False)
    last = tmp_path / "b" / "run" / "last.pt"
    start = time.time()
    while not last.exists():
        assert proc.poll() is None, "training finished before it could be killed"
        assert time.time() - start < 120
        time.sleep(0.01)
    workers = children(proc.pid)
    assert workers, "the trainer should have DALI worker processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_gone(workers) == [], "DALI workers outlived the killed trainer"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert killed_at < 3
    _train(data, tmp_path / "b", *args)
    a = torch.load(tmp_path / "a" / "run" / "last.pt", map_location="cpu", weights_only=False)
    b = torch.load(last, map_location="cpu", weights_only=False)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 21)
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key
    assert a["scheduler"] == b["scheduler"]
    rows = [json.loads(x) for x in Path(tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train",
           "--model", "tsn_tiny", "--data", str(data), "--output", str(tmp_path), "--name", "ddp", "--epochs", "1",
           "--batch-size", "4", "--py-workers", "1", "--threads", "1", "--amp", "none", "--no-progress",
           "--eval-clips", "1", "--eval-crops", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in Path(run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "val_top1" in rows[0]  # validation checks every video was scored 3 times
    assert rows[0]["clips"] == 12  # per rank: 15 videos, 3 full batches of 4
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "eval",
           "--ckpt", str(run / "last.pt"), "--clips", "2", "--crops", "1", "--batch-size", "3", "--py-workers", "1",
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "eval_val_last_vidkit_2x1" / "metrics.json").read_text())["videos"] == 10


def _ddp_train(data, out, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "train",
           "--model", "tsn_tiny", "--data", str(data), "--output", str(out), "--name", "run", "--batch-size", "4",
           "--py-workers", "1", "--threads", "1", "--amp", "none", "--no-progress", "--eval-every", "0",
           "--optimizer", "adamw", "--lr", "0.002", "--mixup", "0.8", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "run" / "last.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_ddp_resume_matches_uninterrupted(data, tmp_path):
    """Each rank draws its own mixup numbers: a resumed two-process run needs each rank's RNG state back."""
    a = _ddp_train(data, tmp_path / "a", "--epochs", "2")
    stopped = _ddp_train(data, tmp_path / "b", "--epochs", "2", "--max-steps", "4")
    assert stopped["step"] == 4 and len(stopped["rng_ranks"]) == 2
    assert not torch.equal(stopped["rng_ranks"][0]["torch"], stopped["rng_ranks"][1]["torch"])
    b = _ddp_train(data, tmp_path / "b", "--epochs", "2")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 6)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_mixup_and_cutmix_on_clips():
    clips = torch.arange(4 * 3 * 2 * 8 * 8, dtype=torch.float32).view(4, 3, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    for mix in (Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=5),
                Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=5)):
        out, targets = mix_clips(mix, clips.clone(), labels)
        assert out.shape == clips.shape and targets.shape == (4, 5)
        assert torch.allclose(targets.sum(1), torch.ones(4))
    # cutmix pastes the same box into every frame and channel of a clip
    changed = (out != clips)[0]
    assert changed.any() and (changed == changed[0, 0]).all()
    with pytest.raises(ValueError, match="even batch"):
        mix_clips(Mixup(mixup_alpha=0.8, num_classes=5), clips[:3].clone(), labels[:3])


def test_frozen_backbone_gets_no_update():
    model = models.create_model("aim_tiny", num_classes=5)
    cfg = TrainConfig(model="aim_tiny", data="x", optimizer="adamw", lr=0.01)
    opt = build_optimizer(cfg, model, Dist(0, 1, 0, torch.device("cpu")))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_opt == trainable and len(trainable) < len(list(model.parameters()))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    x = model.input_contract.example_input(2)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None and torch.equal(p, frozen[n]), n


def test_ila_aux_loss_and_jitter_schedule():
    model = models.create_model("ila_tiny", num_classes=5)
    x = model.input_contract.example_input(2)
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 5) and aux.ndim == 0 and aux.requires_grad
    base = model.blocks[0].align.jitter.clone()
    model.set_epoch(31)
    torch.testing.assert_close(model.blocks[0].align.jitter, base / 4)
    model.set_epoch(3)
    torch.testing.assert_close(model.blocks[0].align.jitter, base)


def test_train_loss_adds_the_aux_loss_of_ila():
    from types import SimpleNamespace

    from train.engine import Trainer

    model = models.create_model("ila_tiny", num_classes=5).eval()  # eval: no random jitter, no dropout
    x, y = model.input_contract.example_input(2), torch.tensor([0, 3])
    fake = SimpleNamespace(model=model, net=model, criterion=torch.nn.CrossEntropyLoss(),
                           cfg=TrainConfig(aux_loss_weight=0.0))
    plain = Trainer._loss(fake, x, y)
    fake.cfg = TrainConfig(aux_loss_weight=1.0)
    with_aux = Trainer._loss(fake, x, y)
    aux = model(x, return_aux=True)[1]
    assert aux.abs() > 1e-3
    torch.testing.assert_close(with_aux - plain, aux)
    fake.model = fake.net = models.create_model("tsn_tiny", num_classes=5)  # no aux: plain cross-entropy
    assert Trainer._loss(fake, fake.net.input_contract.example_input(2), y).ndim == 0
