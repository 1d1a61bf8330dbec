"""The training loop: DDP, autocast, accumulation, clipping, EMA, the data-starvation meter, checkpoints."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import pipelines
from eval.plots import plot_curves
from eval.score import autocast, readable_accuracy, score_videos
from pipelines.images import ImageLoader, open_image_folder
from prep import open_dataset

from . import checkpoint as ckpt
from .config import TrainConfig, save_config
from .meter import StepMeter
from .setup import (Dist, build_ema, build_loss, build_mixup, build_model, build_optimizer, build_scheduler,
                    check_one_frame, mix_clips, seed_everything, wrap_model)

log = logging.getLogger("train")


class Trainer:
    def __init__(self, cfg: TrainConfig, d: Dist):
        self.cfg, self.d = cfg, d
        self.run_dir = cfg.run_dir()
        seed_everything(cfg.seed + d.rank)
        train_set = self._open_split(cfg.train_split)
        self.classes = train_set.classes
        self.num_classes = cfg.num_classes or len(self.classes)
        self.model = build_model(cfg, self.num_classes, d)
        self.contract = self.model.input_contract
        if cfg.task == "image":
            check_one_frame(self.model, cfg.image_size or self.contract.crop_size, d.device)
        self.train_loader = self._loader(train_set, cfg.train_split, training=True)
        self.val_loader = None
        self.net = wrap_model(self.model, cfg, d)
        self.optimizer = build_optimizer(cfg, self.model, d)
        self.steps_per_epoch = max(1, len(self.train_loader) // cfg.grad_accum)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.mixup = build_mixup(cfg, self.num_classes)
        self.criterion = build_loss(cfg, self.mixup)
        self.ema = build_ema(cfg, self.model)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.amp == "fp16")
        self.epoch, self.step, self.best = 0, 0, -1.0
        if d.main:
            os.makedirs(self.run_dir, exist_ok=True)
            save_config(cfg, os.path.join(self.run_dir, "config.yaml"))
        self.writer = self._tensorboard() if d.main else None

    # ------------------------------------------------------------------ setup helpers

    def _open_split(self, split: str):
        if self.cfg.task == "image":  # evaluation splits take the training split's class list
            return open_image_folder(self.cfg.data, split, classes=getattr(self, "classes", None),
                                     progress=self.cfg.progress and self.d.main)
        return open_dataset(self.cfg.data, split)

    def _loader(self, data, split: str, training: bool, clips: int = 1, crops: int = 1):
        augment = pipelines.AugmentConfig(**self.cfg.augment) if training else None
        if self.cfg.task == "image":
            return ImageLoader(data, self.contract, self.cfg.batch_size, training, device_id=self.d.device_id,
                               rank=self.d.rank, world_size=self.d.world, seed=self.cfg.seed,
                               num_threads=self.cfg.threads, augment=augment,
                               repeats=self.cfg.repeated_aug if training else 1, image_size=self.cfg.image_size)
        return pipelines.build_loader(
            data, split, self.contract, batch_size=self.cfg.batch_size, training=training, clips=clips,
            crops=crops, device_id=self.d.device_id, rank=self.d.rank, world_size=self.d.world,
            seed=self.cfg.seed, num_threads=self.cfg.threads, py_workers=self.cfg.py_workers,
            augment=augment, path=self.cfg.data_path)

    def _tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(self.run_dir, "tb"))

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {
            "model": ckpt.unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "best_top1": self.best,
            "config": self.cfg.to_dict(), "model_name": self.cfg.model, "num_classes": self.num_classes,
            "classes": self.classes, "contract": self.contract.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def resume(self) -> None:
        path = ckpt.resume_path(self.run_dir, self.cfg.resume)
        if path is None:
            return
        state = ckpt.load(path)
        if state["model_name"] != self.cfg.model or state["num_classes"] != self.num_classes:
            raise ValueError(f"{path} is a checkpoint of {state['model_name']} with {state['num_classes']} "
                             f"classes, not {self.cfg.model} with {self.num_classes}: use another run name")
        self.model.load_state_dict(state["model"])
        if self.ema and state["ema"]:
            self.ema.module.load_state_dict(state["ema"])
        elif self.ema:  # EMA switched on at resume: average from the loaded weights, not the random start
            self.ema.set(self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:  # empty when the run was saved without fp16
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best_top1"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if self.d.main:
            _truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), self.epoch)
            log.info("resumed from %s at epoch %d (step %d)", path, self.epoch, self.step)

    def save(self, is_best: bool) -> None:
        if not self.d.main:
            return
        state = self.state()
        ckpt.save_atomic(state, os.path.join(self.run_dir, ckpt.LAST))
        if is_best:
            ckpt.save_atomic(state, os.path.join(self.run_dir, ckpt.BEST))

    # ------------------------------------------------------------------ training

    def train_epoch(self) -> dict:
        cfg, d = self.cfg, self.d
        self.net.train()
        self.train_loader.set_epoch(self.epoch)
        if hasattr(self.model, "set_epoch"):  # models with per-epoch schedules of their own (ILA)
            self.model.set_epoch(self.epoch)
        meter = StepMeter(d.device)
        bar = tqdm(total=len(self.train_loader), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and d.main), dynamic_ncols=True)
        loss_sum = torch.zeros((), device=d.device)
        micro = 0
        meter.start()
        for batch in self.train_loader:
            meter.data_ready()
            loss = self._micro_step(batch, last=(micro + 1) % cfg.grad_accum == 0)
            loss_sum += loss.detach()
            micro += 1
            meter.step_done(batch["clips"].shape[0])
            if d.main:
                bar.set_postfix_str(meter.postfix(), refresh=False)
                bar.update(1)
                self._log_step(loss, meter)
            if cfg.max_steps and self.step >= cfg.max_steps:
                break
        bar.close()
        stats = meter.summary()
        stats["train_loss"] = _mean_across(loss_sum / max(micro, 1))
        return stats

    def _micro_step(self, batch, last: bool) -> torch.Tensor:
        clips, labels = batch["clips"], batch["labels"]
        if self.cfg.channels_last and clips.is_cuda and self.contract.layout == "NCTHW":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        targets = labels
        if self.mixup is not None:
            clips, targets = mix_clips(self.mixup, clips, labels)
        sync = contextlib.nullcontext() if last or self.d.world == 1 else self.net.no_sync()
        with sync:
            with autocast(self.d.device, self.cfg.amp):
                loss = self._loss(clips, targets)
            self.scaler.scale(loss / self.cfg.grad_accum).backward()
        if last:
            self._optimizer_step()
        return loss

    def _loss(self, clips, targets) -> torch.Tensor:
        if not hasattr(self.model, "forward_with_aux"):
            return self.criterion(self.net(clips), targets)
        logits, aux = self.net(clips, return_aux=True)  # through DDP's forward, so gradients are reduced
        return self.criterion(logits, targets) + self.cfg.aux_loss_weight * aux

    def _optimizer_step(self) -> None:
        if self.cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.scheduler:
            self.scheduler.step_update(self.step)
        if self.ema:
            self.ema.update(self.model, step=self.step)

    def _log_step(self, loss, meter) -> None:
        if self.writer and self.step % max(1, self.cfg.log_every) == 0:
            self.writer.add_scalar("train/loss", float(loss.detach()), self.step)
            self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
            self.writer.add_scalar("train/data_wait_pct", meter.wait_pct(), self.step)

    # ------------------------------------------------------------------ validation

    def validate(self) -> dict:
        cfg = self.cfg
        if self.val_loader is None:
            val_set = self._open_split(cfg.val_split)
            self.val_records = val_set.rows
            self.val_loader = self._loader(val_set, cfg.val_split, training=False,
                                           clips=cfg.eval_clips, crops=cfg.eval_crops)
        model = self.ema.module if self.ema else self.model
        self.val_loader.set_epoch(0)
        result = score_videos(model, self.val_loader, len(self.val_records), self.num_classes,
                              self.d.device, cfg.amp)
        labels = torch.tensor([r["label"] for r in self.val_records])
        report, damaged = readable_accuracy(result, labels, self.classes, cfg.eval_clips * cfg.eval_crops)
        if damaged and self.d.main:
            log.warning("validation: %d damaged videos left out of the accuracy (e.g. %s)", len(damaged),
                        self.val_records[damaged[0]]["id"])
        return {"val_top1": report["top1"], "val_top5": report["top5"], "val_mean_class_acc": report["mean_class_acc"],
                "val_videos": report["videos"], "val_damaged": len(damaged)}

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict:
        self.resume()
        row = {}
        while self.epoch < self.cfg.epochs and not (self.cfg.max_steps and self.step >= self.cfg.max_steps):
            t0 = time.time()
            row = {"epoch": self.epoch + 1, **self.train_epoch()}
            self.epoch += 1
            if self.cfg.eval_every and (self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs):
                row.update(self.validate())
            row.update(lr=self.optimizer.param_groups[0]["lr"], epoch_seconds=round(time.time() - t0, 2))
            is_best = row.get("val_top1", -1) > self.best
            self.best = max(self.best, row.get("val_top1", -1))
            self._log_epoch(row)
            self.save(is_best)
        self.finish()
        return row

    def _log_epoch(self, row: dict) -> None:
        if not self.d.main:
            return
        with open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", v, row["epoch"])
        msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
        tqdm.write(msg)

    def finish(self) -> None:
        if not self.d.main:
            return
        rows = _read_metrics(os.path.join(self.run_dir, "metrics.jsonl"))
        if rows:
            plot_curves(rows, os.path.join(self.run_dir, "curves.png"), title=self.cfg.model)
        self.writer.close()


def _mean_across(x: torch.Tensor) -> float:
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return float(x)


def _read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_metrics(path: str, epoch: int) -> None:
    """A run killed after logging an epoch but before its checkpoint redoes that epoch: drop the old line."""
    rows = [r for r in _read_metrics(path) if r["epoch"] <= epoch]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)
