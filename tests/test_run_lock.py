"""Two trainings in one run folder: the first locks it (train.lock: pid, host, start time), a second is refused in one
line naming the holder; the lock goes with the run (its end, or the death of its process), and one left behind by a
run that died is said and taken over."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import sys

import torch

from train.__main__ import main as train_main
from train.config import TrainConfig, apply
from train.engine import Trainer
from train.setup import Dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = Dist(0, 1, 0, torch.device("cpu"))
RUN_LOCK = "train.lock"  # in the run folder
BASE = dict(model="tsn_tiny", batch_size=4, py_workers=1, threads=1, amp="none", optimizer="adamw", lr=0.002,
            epochs=1, eval_every=0, seed=0, name="run", max_steps=1)


def _argv(data, output) -> list[str]:
    argv = ["--no-progress", "--data", str(data), "--output", str(output)]
    for key, value in BASE.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _held_by_another_process(path) -> bool:
    """Whether the file is locked: flock on another open file of it (as another process would try)."""
    if not os.path.exists(path):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_second_training_in_the_same_run_folder_is_refused_naming_the_first(data, tmp_path):
    first = Trainer(apply(TrainConfig(), {**BASE, "data": str(data), "output": str(tmp_path), "progress": False},
                          "test"), CPU)
    try:
        second = subprocess.run([sys.executable, "-m", "train", *_argv(data, tmp_path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=600)
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [x for x in second.stderr.splitlines() if x.startswith("train: error: ")]
        assert len(lines) == 1, second.stderr
        assert f"pid {os.getpid()} on {socket.gethostname()}" in lines[0] and str(tmp_path / "run") in lines[0]
        assert not (tmp_path / "run" / "last.pt").exists()  # the second wrote nothing
        lock = tmp_path / "run" / RUN_LOCK
        holder = json.loads(lock.read_text())
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
        first.fit()
    finally:
        first.train_loader.close()
    assert lock.read_text() == "" and not _held_by_another_process(lock)  # its record cleared, released


def test_a_lock_left_by_a_dead_training_is_said_and_taken_over(data, tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    left = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01 00:00:00 UTC"}
    (tmp_path / "run" / RUN_LOCK).write_text(json.dumps(left))
    with caplog.at_level(logging.WARNING, logger="train"):
        assert train_main(_argv(data, tmp_path)) == 0
    said = [r.getMessage() for r in caplog.records if "lock" in r.getMessage()]
    assert len(said) == 1 and f"pid {dead.pid} on {socket.gethostname()}" in said[0], said
    assert "no longer running" in said[0]
    assert (tmp_path / "run" / "last.pt").exists()
    assert not _held_by_another_process(tmp_path / "run" / RUN_LOCK)


def test_a_resumed_run_takes_the_lock_again(data, tmp_path, caplog):
    """The lock a run releases is not stale: the next run (a resume) takes it without a word."""
    assert train_main(_argv(data, tmp_path)) == 0
    with caplog.at_level(logging.WARNING, logger="train"):
        assert train_main(_argv(data, tmp_path)[:-2] + ["--max-steps", "2"]) == 0
    assert not [r for r in caplog.records if "lock" in r.getMessage()]
    assert not _held_by_another_process(tmp_path / "run" / RUN_LOCK)
