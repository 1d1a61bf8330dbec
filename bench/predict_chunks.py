"""`python -m bench.predict_chunks`: `python -m eval predict` in one chunk (prep every video, then score them all)
against in chunks (chunk k+1 prepped in the background while chunk k is scored), on the same synthetic H.264 videos
and a tsn_tiny checkpoint (random weights: they do not change the speed), on the CPU, alternating the two.

Prints per run: wall seconds, CPU seconds (this process and its reaped children: prep's processes and the DALI
source processes), the summed prep and model seconds predict reports, and the wall ratio one chunk / chunked; checks
that both give the same rows, probabilities and order included.
"""
from __future__ import annotations

import argparse
import sys
import os
import resource
import tempfile
import time

import torch

from prep.cli import POSITIVE_INT, add_debug_option, run_main


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _checkpoint(path: str, classes: list[str]) -> None:
    import models
    from train.config import TrainConfig

    model = models.create_model("tsn_tiny", num_classes=len(classes), num_frames=8)
    torch.save({"model_name": "tsn_tiny", "num_classes": len(classes), "classes": classes,
                "contract": model.input_contract.to_dict(), "config": TrainConfig(model="tsn_tiny", data="").to_dict(),
                "model": model.state_dict(), "ema": None}, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("videos", 24), ("chunk", 8), ("rounds", 2), ("frames", 32), ("size", 64), ("clips", 1),
                          ("crops", 1)):
        p.add_argument(f"--{name}", type=POSITIVE_INT, default=default)
    add_debug_option(p)
    args = p.parse_args(argv)
    from eval.predict import predict
    from prep.synthetic import generate
    from runtime.dist import setup_distributed

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as root:
        made = generate(os.path.join(root, "data"), videos=args.videos, frames=args.frames, size=args.size, classes=4,
                        progress=False)
        videos = sorted(os.path.join(root, "data", d, n) for d, _, names in os.walk(os.path.join(root, "data"))
                        for n in names if n.endswith(".mp4"))
        ckpt = os.path.join(root, "ckpt.pt")
        _checkpoint(ckpt, list(made["classes"]))
        d = setup_distributed("cpu")
        wall, rows = {}, {}
        for r in range(args.rounds):
            for chunk in (len(videos), args.chunk):
                cpu, start = _cpu(), time.time()
                result = predict(videos, ckpt, d, chunk=chunk, progress=False, clips=args.clips, crops=args.crops)
                seconds, spent = time.time() - start, _cpu() - cpu
                wall.setdefault(chunk, []).append(seconds)
                rows.setdefault(chunk, result["videos"])
                assert result["videos"] == rows[chunk] and result["predicted"] == len(videos)
                print(f"round {r}  chunk {chunk:3d} ({result['chunks']} chunks): wall {seconds:6.2f} s  cpu "
                      f"{spent:6.2f} s  prep {result['seconds']['prep']:5.2f} s  model "
                      f"{result['seconds']['model']:5.2f} s", flush=True)
        assert rows[len(videos)] == rows[args.chunk], "chunked rows differ from the one chunk's"
        one, chunked = min(wall[len(videos)]), min(wall[args.chunk])
        print(f"{len(videos)} videos, best of {args.rounds}: one chunk {one:.2f} s, chunks of {args.chunk} "
              f"{chunked:.2f} s: {one / chunked:.2f}x (same rows: yes)")


if __name__ == "__main__":
    sys.exit(run_main("bench.predict_chunks", main))
