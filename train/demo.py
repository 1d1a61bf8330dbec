"""`make demo`: the whole job on the built-in synthetic dataset, on whatever device is present.

generate videos -> prep into shards -> train a temporal model and an order-blind TSN -> multi-view eval
-> a table, runs/demo/summary.json and plots. The synthetic classes come in pairs that differ only in
temporal order, so the temporal model should learn every class while TSN (average consensus) sits near
chance within each pair. Re-running resumes: finished steps are skipped.

Each stage says when it starts; its progress bar estimates the time it has left (prep: the whole stage; training:
the epoch, and after each epoch a line with the time the model's remaining epochs should take; evaluation: the
stage).
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time

from prep.cli import POSITIVE_FLOAT, POSITIVE_INT, add_debug_option, run_main
from prep.outputs import write_json

DEMO_MODELS = ("i3d_tiny", "tsn_tiny")  # (temporal, order-blind)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/demo", help="where the synthetic dataset is prepped")
    p.add_argument("--out", default="runs/demo", help="run folders, summary.json and top1.png go here")
    p.add_argument("--videos", type=POSITIVE_INT, default=1000,
                   help="synthetic videos to generate (80%% train, 20%% val); fewer make a shorter demo")
    p.add_argument("--frames", type=POSITIVE_INT, default=16, help="frames per synthetic video")
    p.add_argument("--size", type=POSITIVE_INT, default=64, help="synthetic frame side in pixels")
    p.add_argument("--epochs", type=POSITIVE_INT, default=24,
                   help="training epochs of each model")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16, help="clips per training batch")
    p.add_argument("--lr", type=POSITIVE_FLOAT, default=0.003, help="AdamW learning rate (cosine schedule)")
    p.add_argument("--models", nargs="+", default=list(DEMO_MODELS), help="registered models to train and compare")
    p.add_argument("--clips", type=POSITIVE_INT, default=2, help="evaluation clips per video")
    p.add_argument("--crops", type=int, choices=(1, 3, 5, 10), default=3, help="evaluation crops per clip")
    p.add_argument("--workers", type=POSITIVE_INT, default=os.cpu_count() or 1,
                   help="prep and data-loading worker processes (default: the CPU count)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: the GPU when there is one")
    add_debug_option(p)
    return p


def prep_synthetic(args) -> None:
    if os.path.exists(os.path.join(args.data, "manifest.jsonl")):
        print(f"[demo] dataset already prepped in {args.data}")
        return
    from prep.__main__ import main as prep_main

    code = prep_main(["synthetic", "--out", args.data, "--videos", str(args.videos), "--frames", str(args.frames),
                      "--size", str(args.size), "--workers", str(args.workers)])
    if code:
        raise SystemExit(code)


def train_one(model: str, args, d) -> str:
    from .config import TrainConfig
    from .engine import Trainer

    class StageTrainer(Trainer):
        """Says after each epoch how long the remaining epochs should take, at the mean pace so far."""

        def _run_epoch(self) -> dict:
            began = getattr(self, "_stage_began", None) or (time.time(), self.epoch)
            self._stage_began = began
            row = super()._run_epoch()
            done = self.epoch - began[1]
            if self.d.main and done > 0 and self.epoch < self.cfg.epochs:
                left = (time.time() - began[0]) / done * (self.cfg.epochs - self.epoch)
                print(f"[demo] {model}: epoch {self.epoch} of {self.cfg.epochs}, about {_duration(left)} of "
                      "training left", flush=True)
            return row

    cfg = TrainConfig(model=model, data=args.data, dataset="synthetic", num_frames=8, batch_size=args.batch_size,
                      epochs=args.epochs, optimizer="adamw", lr=args.lr, weight_decay=0.01, sched="cosine",
                      warmup_epochs=2, amp="bf16" if d.device.type == "cuda" else "none",
                      augment={"flip": False}, output=args.out, name=model, eval_every=max(1, args.epochs // 8),
                      py_workers=max(1, min(2, args.workers)), threads=max(1, args.workers), device=args.device)
    StageTrainer(cfg, d).fit()
    return os.path.join(cfg.run_dir(), "best.pt")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _stage(number: int, total: int, what: str) -> None:
    print(f"[demo] stage {number} of {total}: {what}", flush=True)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    start = time.time()
    stages = 1 + 2 * len(args.models)
    _stage(1, stages, f"generate {args.videos} synthetic videos and prep them into {args.data}")
    prep_synthetic(args)
    from eval.run import evaluate

    from .guard import RunStopped
    from runtime.dist import setup_distributed

    d = setup_distributed(args.device)
    summary = {}
    for k, model in enumerate(args.models):
        _stage(2 + 2 * k, stages, f"train {model} for {args.epochs} epochs")
        try:
            best = train_one(model, args, d)
        except (ValueError, FileNotFoundError, RunStopped) as e:  # refused or stopped: one line, not a traceback
            print(f"demo: {model}: {e}", file=sys.stderr)
            return getattr(e, "code", 2)
        _stage(3 + 2 * k, stages, f"evaluate {model} on {args.clips} clips x {args.crops} crops per video")
        result = evaluate(best, d, clips=args.clips, crops=args.crops, progress=True)
        summary[model] = {k: result[k] for k in ("top1", "top5", "mean_class_acc")}
        summary[model]["report"] = result.get("out_dir", "")
    write_summary(summary, args, time.time() - start)
    return 0


def write_summary(summary: dict, args, seconds: float) -> None:
    from eval.plots import plot_bars

    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "summary.json"), summary, indent=1)
    plot_bars({m: r["top1"] for m, r in summary.items()}, os.path.join(args.out, "top1.png"),
              title=f"synthetic temporal-pairs dataset, {args.clips}x{args.crops} views")
    print(f"\n{'model':<16}{'top-1':>8}{'top-5':>8}{'mean class':>12}   ({args.clips} clips x {args.crops} crops)")
    for model, r in summary.items():
        print(f"{model:<16}{r['top1']:>8.1f}{r['top5']:>8.1f}{r['mean_class_acc']:>12.1f}")
    print(f"\n[demo] done in {seconds / 60:.1f} min ({cpu_minutes():.1f} CPU-min): {args.out}/summary.json, "
          f"{args.out}/top1.png, curves and confusion matrices under {args.out}/<model>/")


def cpu_minutes() -> float:
    """User and system CPU time of this process and its finished children (prep's and the loaders' workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime) / 60


if __name__ == "__main__":
    sys.exit(run_main("train.demo", main))
