"""The training loop: DDP, autocast, accumulation, clipping, EMA, the data-starvation meter, checkpoints.

A run never ends silently wrong: a non-finite loss or gradient stops it before the update is applied, a
signal stops it at the next optimizer step with a checkpoint it resumes from exactly (mid-epoch too), and a
checkpoint that cannot be written stops it with the previous one intact. Each is one line and a non-zero
exit (`guard.RunStopped`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from eval.plots import plot_curves
from eval.score import autocast, readable_accuracy, score_videos
from pipelines.augment import AugmentConfig
from prep.jsonl import read_jsonl
from prep.lists import class_order_change
from prep.outputs import write_text
from runtime.dist import Dist

from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig, check, config_changes, save_config
from .guard import (DamageCounter, RunStopped, StopSignals, check_checkpoint_space,
                    checkpoint_bytes, claim_run_folder, refuse_pretrained_in_run, training_amp)
from .layout import check_layout, run_layout
from .meter import StepMeter
from .setup import (build_ema, build_loss, build_mixup, build_model, build_optimizer, build_scheduler,
                    mix_clips, schedule_to, seed_everything, wrap_model)
from .tasks import task_of

log = logging.getLogger("train")


@dataclass
class EpochProgress:
    """Where the current epoch stands: saved in mid-epoch checkpoints so a resumed epoch ends as it would have."""

    batches: int = 0  # loader batches consumed (a whole number of optimizer steps)
    loss_sum: float = 0.0
    micro: int = 0  # batches trained on
    clips: int = 0


class Trainer:
    def __init__(self, cfg: TrainConfig, d: Dist):
        check(cfg)
        self.cfg, self.d = cfg, d
        self.run_dir = cfg.run_dir()
        refuse_pretrained_in_run(cfg.pretrained, self.run_dir, ckpt.WRITTEN)
        # first: a second training in this folder is refused before it builds anything
        self._run_folder = claim_run_folder(self.run_dir, d)
        try:
            self._build(cfg, d)
        except BaseException:
            self._run_folder.close()
            raise

    def _build(self, cfg: TrainConfig, d: Dist) -> None:
        self._rng_ranks = None  # every rank's RNG state at the last save (see save)
        seed_everything(cfg.seed + d.rank)
        self.task = task_of(cfg)
        train_set = self._open_split(cfg.train_split)
        self.classes = train_set.classes
        self._val_set = self._open_val_split() if cfg.eval_every else None  # at start, not after an epoch
        self.num_classes = cfg.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ConfigError(f"config key 'num_classes' is {self.num_classes}, but {cfg.train_split} has "
                              f"{len(self.classes)} classes")
        self.model = build_model(cfg, self.num_classes, d, self.classes)
        self.contract = self.model.input_contract
        self.amp = training_amp(cfg.amp, d.device, self.model, warn=d.main)
        self.task.check_model(self.model, cfg, d.device)
        self.task.check_split(train_set.rows, self.contract, cfg.train_split, d)
        self.train_loader = self._loader(train_set, cfg.train_split, training=True)
        self.steps_per_epoch = self._check_batches(len(self.train_loader))
        self.val_loader = None
        self.net = wrap_model(self.model, cfg, d)
        self.optimizer = build_optimizer(cfg, self.model, d)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.mixup = build_mixup(cfg, self.num_classes)
        self.criterion = build_loss(cfg, self.mixup)
        self.ema = build_ema(cfg, self.model)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.amp == "fp16")
        self.epoch, self.step, self.best = 0, 0, -1.0
        self.progress = EpochProgress()
        self.damage = DamageCounter(self.train_loader)
        self.stop = StopSignals(announce=d.main)
        self.stopping = 0  # the stop signal all processes agreed on (they must stop at the same step)
        self.last_good: tuple[str, int] | None = None  # (path, step) of the newest intact checkpoint
        self._last_pt_good = False  # whether run_dir/last.pt may become previous.pt at the next save
        self._bad_loss: float | None = None  # the first non-finite loss since the last optimizer step
        self._last_loss = 0.0
        check_checkpoint_space(self.run_dir, checkpoint_bytes(self.model, cfg.optimizer, cfg.momentum, cfg.ema), d)
        self.writer = self._tensorboard() if d.main else None

    # ------------------------------------------------------------------ setup helpers

    def _open_split(self, split: str):
        """A split of the task's data; evaluation splits of an image folder take the training split's class list."""
        return self.task.open_split(self.cfg, split, getattr(self, "classes", None), self.cfg.progress and self.d.main)

    def _open_val_split(self):
        try:
            return self._open_split(self.cfg.val_split)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"validation split: {e}: prep one, set val_split to a split that exists, or "
                              f"eval_every 0 to train without validation") from None

    def _loader(self, data, split: str, training: bool, clips: int = 1, crops: int = 1):
        augment = AugmentConfig(**self.cfg.augment)  # evaluation reads its eval_scale and eval_crop
        return self.task.loader(self.cfg, data, split, self.contract, training, self.d, augment, clips, crops)

    def _check_batches(self, batches: int) -> int:
        """Optimizer steps per epoch; a split too small for one step is a config error, not a run of nothing."""
        cfg = self.cfg
        if batches < cfg.grad_accum:
            raise ConfigError(f"{cfg.train_split} gives {batches} full batches of {cfg.batch_size} per process "
                              f"({self.d.world} processes) an epoch, fewer than grad_accum {cfg.grad_accum}: "
                              f"lower batch_size or grad_accum")
        return batches // cfg.grad_accum

    def _tensorboard(self):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(os.path.join(self.run_dir, "tb"))

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        """Plain data only (see train.checkpoint): the config as a dict, RNG states as tensors and lists."""
        return {
            "model": ckpt.unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "best_top1": self.best, "progress": asdict(self.progress),
            "config": self.cfg.to_dict(), "model_name": self.cfg.model, "num_classes": self.num_classes,
            "classes": list(self.classes), "contract": self.contract.to_dict(),
            "rng": self._rng_ranks[0] if self._rng_ranks else ckpt.rng_state(self.d.device),
            "rng_ranks": self._rng_ranks, "layout": run_layout(self.train_loader, self.d.world),
        }

    def resume(self) -> None:
        found = ckpt.load_first_good(ckpt.resume_candidates(self.run_dir, self.cfg.resume), warn=self.d.main)
        if found is None:
            return
        path, state = found
        self._check_same_run(path, state)
        if state.get("averaged_from"):
            raise ConfigError(f"{path} averages {len(state['averaged_from'])} checkpoints and has no optimizer state "
                              f"to resume: fine-tune from it with --pretrained {path} --resume none")
        ckpt.load_weights(self.model, state["model"])
        if self.ema and state["ema"]:
            ckpt.load_weights(self.ema.module, state["ema"])
        elif self.ema:  # EMA switched on at resume: average from the loaded weights, not the random start
            self.ema.set(self.model)
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:  # empty when the run was saved without fp16
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best_top1"]
        self.progress = EpochProgress(**state.get("progress") or {})
        if self.d.main:  # the epoch's plan is recomputed for this run's layout: said when it is another
            check_layout(state.get("layout"), self.train_loader, self.d.world, self.epoch, self.progress.batches,
                         self.cfg.grad_accum)
        # the schedule is a pure function of the config and the step: a longer run stretches it
        schedule_to(self.scheduler, self.step, self.steps_per_epoch)
        rng, warning = ckpt.rank_rng_state(state, self.d.rank, self.d.world)
        if warning and self.d.main:
            log.warning("%s", warning)
        ckpt.set_rng_state(rng, self.d.device)
        self.last_good = (path, self.step)
        self._last_pt_good = os.path.abspath(path) == os.path.abspath(os.path.join(self.run_dir, ckpt.LAST))
        if self.d.main:
            _truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), self.epoch)
            where = f" + {self.progress.batches} batches" if self.progress.batches else ""
            log.info("resumed from %s at epoch %d%s (step %d)", path, self.epoch, where, self.step)

    def _check_same_run(self, path: str, state: dict) -> None:
        """Resume only what the user asks for now: a changed model, data or recipe is refused, not ignored."""
        safe, unsafe = config_changes(state.get("config") or {}, self.cfg)
        if state["model_name"] != self.cfg.model or state["num_classes"] != self.num_classes:
            unsafe.insert(0, f"model {state['model_name']} with {state['num_classes']} classes -> "
                             f"{self.cfg.model} with {self.num_classes}")
        moved = class_order_change(state.get("classes"), self.classes)
        if moved:
            unsafe.insert(0, f"classes: {moved} (the data was prepped again with other classes or in another "
                             "order; prep it again in the run's order: python -m prep videos ... --classes FILE)")
        if state["epoch"] > self.cfg.epochs:
            unsafe.append(f"epochs: the run has trained {state['epoch']}, more than {self.cfg.epochs}")
        if unsafe:
            raise ConfigError(f"{path} belongs to a run with another config ({'; '.join(unsafe)}): pass "
                              f"--name NEW to train a new run, or --resume none to start this one over")
        if safe and self.d.main:
            log.info("resuming %s with %s", path, "; ".join(safe))

    def save(self, is_best: bool = False) -> None:
        """Checkpoint now; refuses (RunStopped) to write weights that are not finite."""
        if not ckpt.all_finite(ckpt.unwrap(self.model).state_dict()):
            raise RunStopped(f"the weights are not finite after step {self.step}: not saved; "
                             f"{self._last_good_text()}")
        # every rank's, gathered now: save_kept, right after, writes the same moment's states
        self._rng_ranks = ckpt.gather_rng_states(self.d.device, self.d.world)
        if self.d.main:
            state = self.state()
            last = os.path.join(self.run_dir, ckpt.LAST)
            try:
                ckpt.save_atomic(state, last, keep_previous=self._last_pt_good)
                if is_best:
                    ckpt.save_atomic(state, os.path.join(self.run_dir, ckpt.BEST))
            except ckpt.CheckpointWriteError as e:
                raise RunStopped(str(e)) from None
            self._last_pt_good = True
        self.last_good = (os.path.join(self.run_dir, ckpt.LAST), self.step)

    def save_kept(self, top1: float | None) -> None:
        """At an epoch's end, after `save`: the top-k file (keep_best) and the every-N-epochs file (save_every)."""
        cfg = self.cfg
        keep = cfg.keep_best and top1 is not None and math.isfinite(top1)
        every = cfg.save_every and self.epoch % cfg.save_every == 0
        if not self.d.main or not (keep or every):
            return
        state = self.state()
        try:
            if keep:
                ckpt.keep_top(state, self.run_dir, top1, cfg.keep_best)
            if every:
                ckpt.save_atomic(state, os.path.join(self.run_dir, ckpt.every_name(self.epoch)))
        except ckpt.CheckpointWriteError as e:
            raise RunStopped(str(e)) from None

    def _last_good_text(self) -> str:
        if self.last_good is None:
            return "no checkpoint written yet"
        return f"last good checkpoint: {self.last_good[0]} (step {self.last_good[1]})"

    # ------------------------------------------------------------------ training

    def train_epoch(self) -> tuple[dict, bool]:
        """(stats, whether the epoch ran to its end); resumes mid-epoch from `self.progress`."""
        cfg, d = self.cfg, self.d
        self.net.train()
        meter, done = StepMeter(d.device), self.progress
        usable = self.steps_per_epoch * cfg.grad_accum  # a trailing partial accumulation is not trained on
        complete = done.batches >= usable
        # a resumed epoch's loader starts after the batches trained before: they are not read again
        skip = 0 if complete else done.batches
        self.train_loader.set_epoch(self.epoch, skip_batches=skip)
        if hasattr(self.model, "set_epoch"):  # models with per-epoch schedules of their own (ILA)
            self.model.set_epoch(self.epoch)
        bar = tqdm(total=usable, initial=done.batches, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=not (cfg.progress and d.main), dynamic_ncols=True)
        loss_sum = torch.full((), done.loss_sum, device=d.device)
        meter.start()
        for i, batch in enumerate(self.train_loader if not complete else (), start=skip):
            if i >= usable:  # left over
                meter.start()
                continue
            meter.data_ready()
            stepped = (i + 1) % cfg.grad_accum == 0
            loss = self._micro_step(batch, last=stepped)
            loss_sum += loss.detach()
            meter.step_done(batch["clips"].shape[0])
            if d.main:
                bar.set_postfix_str(meter.postfix(), refresh=False)
                bar.update(1)
                self._log_step(loss, meter)
            if stepped:
                self.progress = EpochProgress(i + 1, float(loss_sum), done.micro + meter.steps,
                                              done.clips + meter.clips)
                self._after_step(at_end=i + 1 == usable)
                if cfg.max_steps and self.step >= cfg.max_steps and i + 1 < usable:
                    break
        else:
            complete = True
        bar.close()
        stats = meter.summary()
        stats.update(steps=done.micro + meter.steps, clips=done.clips + meter.clips,
                     train_loss=_mean_across(loss_sum / max(done.micro + meter.steps, 1)))
        return stats, complete

    def _micro_step(self, batch, last: bool) -> torch.Tensor:
        clips, labels = batch["clips"], batch["labels"]
        if self.cfg.channels_last and clips.is_cuda and self.contract.layout == "NCTHW":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        targets = labels
        if self.mixup is not None:
            clips, targets = mix_clips(self.mixup, clips, labels)
        sync = contextlib.nullcontext() if last or self.d.world == 1 else self.net.no_sync()
        with sync:
            with autocast(self.d.device, self.amp):
                loss = self._loss(clips, targets)
            self._last_loss = float(loss.detach())
            if self._bad_loss is None and not math.isfinite(self._last_loss):
                self._bad_loss = self._last_loss
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
        norm = self._grad_norm()
        self._check_finite(norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        schedule_to(self.scheduler, self.step, self.steps_per_epoch)
        if self.ema:
            self.ema.update(self.model, step=self.step)

    def _grad_norm(self) -> float | None:
        """The total gradient norm (clipped to clip_grad when set); None under fp16 without clipping, where
        GradScaler itself skips steps whose gradients overflowed."""
        if self.scaler.is_enabled() and self.cfg.clip_grad <= 0:
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.cfg.clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        return float(norm)

    def _check_finite(self, norm: float | None) -> None:
        """Stop before applying an update from a non-finite loss or gradient (on every rank alike)."""
        bad_norm = norm is not None and not math.isfinite(norm) and not self.scaler.is_enabled()
        bad = self._agree(self._bad_loss is not None or bad_norm)
        if bad:
            loss = self._last_loss if self._bad_loss is None else self._bad_loss
            raise RunStopped(f"diverged at step {self.step + 1} (epoch {self.epoch + 1}): loss {loss:.4g}, gradient "
                             f"norm {norm}: stopped before applying that update, nothing saved; "
                             f"{self._last_good_text()}")

    def _agree(self, bad: bool = False) -> bool:
        """Whether any process saw a non-finite value; `self.stopping`: whether any was asked to stop."""
        flags = torch.tensor([float(bad), float(self.stop.signum)], device=self.d.device)
        if self.d.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        self.stopping = int(flags[1])
        return bool(flags[0])

    def _after_step(self, at_end: bool) -> None:
        """Mid-epoch checkpoints: every ckpt_every_steps steps, and on a stop signal (then stop)."""
        self._agree()  # a signal that came during this step stops the run right after it
        every = self.cfg.ckpt_every_steps
        if self.stopping or (every and self.step % every == 0 and not at_end):
            self.save()
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        if not self.stopping:
            return
        batches = self.steps_per_epoch * self.cfg.grad_accum
        raise RunStopped(f"stopped by {signal.Signals(self.stopping).name} at step {self.step} (epoch "
                         f"{self.epoch + 1}, batch {self.progress.batches} of {batches}); {self._last_good_text()}; "
                         f"run the same command again to resume", code=128 + self.stopping)

    def _log_step(self, loss, meter) -> None:
        if self.writer and self.step % max(1, self.cfg.log_every) == 0:
            self.writer.add_scalar("train/loss", float(loss.detach()), self.step)
            self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.step)
            self.writer.add_scalar("train/data_wait_pct", meter.wait_pct(), self.step)

    # ------------------------------------------------------------------ validation

    def validate(self) -> dict:
        cfg = self.cfg
        if self.val_loader is None:
            val_set = self._val_set or self._open_split(cfg.val_split)
            self.val_records = val_set.rows
            self.task.check_split(val_set.rows, self.contract, cfg.val_split, self.d)
            self.val_loader = self._loader(val_set, cfg.val_split, training=False,
                                           clips=cfg.eval_clips, crops=cfg.eval_crops)
        model = self.ema.module if self.ema else self.model
        self.val_loader.set_epoch(0)
        result = score_videos(model, self.val_loader, len(self.val_records), self.num_classes,
                              self.d.device, self.amp)
        labels = torch.tensor([r["label"] for r in self.val_records])
        report, damaged = readable_accuracy(result, labels, self.classes, self.val_loader.num_views)
        if damaged and self.d.main:
            log.warning("validation: %d damaged videos left out of the accuracy (e.g. %s)", len(damaged),
                        self.val_records[damaged[0]]["id"])
        return {"val_top1": report["top1"], "val_top5": report["top5"], "val_mean_class_acc": report["mean_class_acc"],
                "val_videos": report["videos"], "val_damaged": len(damaged)}

    # ------------------------------------------------------------------ the run

    def fit(self) -> dict:
        with self._run_folder:  # the run folder's lock, released at the end: another training may use it then
            return self._fit()

    def _fit(self) -> dict:
        with self.stop.installed():
            try:
                self.resume()
                self._start()
                row = {}
                while self.epoch < self.cfg.epochs and not (self.cfg.max_steps and self.step >= self.cfg.max_steps):
                    row = self._run_epoch()
            finally:
                if self.writer:  # what was logged before a stop reaches TensorBoard too
                    self.writer.flush()
        if not row and self.d.main:
            log.info("nothing to train: the run is at epoch %d of %d (step %d)", self.epoch, self.cfg.epochs,
                     self.step)
            row = (_read_metrics(os.path.join(self.run_dir, "metrics.jsonl")) or [{}])[-1]
        self.finish()
        return row

    def _start(self) -> None:
        """After the resume check (which may refuse): the run folder now belongs to this config."""
        self._agree()
        self._stop_if_asked()
        if not self.d.main:
            return
        with self._writing("config.yaml"):
            save_config(self.cfg, os.path.join(self.run_dir, "config.yaml"))
            if self.last_good is None:  # a fresh start (--resume none included) has no earlier epochs
                _truncate_metrics(os.path.join(self.run_dir, "metrics.jsonl"), 0)

    @contextlib.contextmanager
    def _writing(self, name: str):
        """A run-folder file that cannot be written (disk full) stops the run in one line, not a traceback."""
        try:
            yield
        except OSError as e:
            raise RunStopped(f"could not write {os.path.join(self.run_dir, name)}: {e.strerror or e}; "
                             f"{self._last_good_text()}") from None

    def _run_epoch(self) -> dict:
        t0 = time.time()
        stats, complete = self.train_epoch()
        row = {"epoch": self.epoch + 1, **stats, **self.damage.epoch_row()}
        if not complete:  # max_steps reached mid-epoch: a checkpoint that resumes there
            if self.last_good is None or self.last_good[1] != self.step:
                self.save()
            return row
        self.epoch += 1
        self.progress = EpochProgress()
        if self.cfg.eval_every and (self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs):
            row.update(self._validate_or_stop())
        row.update(lr=self.optimizer.param_groups[0]["lr"], epoch_seconds=round(time.time() - t0, 2))
        top1 = row.get("val_top1")
        is_best = top1 is not None and math.isfinite(top1) and top1 > self.best
        self.best = max(self.best, top1) if is_best else self.best
        self._log_epoch(row)
        self.save(is_best)
        self.save_kept(top1)
        self._agree()  # a signal during validation or saving: the checkpoint just written resumes here
        self._stop_if_asked()
        return row

    def _validate_or_stop(self) -> dict:
        try:
            return self.validate()
        except RuntimeError as e:  # non-finite scores, broken sharding: no accuracy to report or rank by
            raise RunStopped(f"validation after epoch {self.epoch}: {str(e).splitlines()[0]}; "
                             f"{self._last_good_text()}") from None

    def _log_epoch(self, row: dict) -> None:
        if not self.d.main:
            return
        with self._writing("metrics.jsonl"), open(os.path.join(self.run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", v, row["epoch"])
        if row.get("damaged_ids"):  # every rank's, as the counts
            self.writer.add_text("epoch/damaged_ids", ", ".join(row["damaged_ids"]), row["epoch"])
        msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                       if not isinstance(v, list))  # the damaged ids: metrics.jsonl and the end of the run name them
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
    """A line torn by a kill mid-write is the last one, of an epoch whose checkpoint never came: left out."""
    return read_jsonl(path, drop_torn_tail=True)


def _truncate_metrics(path: str, epoch: int) -> None:
    """A run killed after logging an epoch but before its checkpoint redoes that epoch: drop the old line."""
    if not os.path.exists(path):
        return
    rows = [r for r in _read_metrics(path) if r["epoch"] <= epoch]
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
