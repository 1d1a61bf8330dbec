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
from pathlib import Path

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


def _claim_on_rank(rank: int, run_dir: str, init: str, said) -> None:
    import torch.distributed as dist

    from train.guard import claim_run_folder

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        with claim_run_folder(run_dir, Dist(rank, 2, rank, torch.device("cpu"))):
            dist.barrier()  # both have claimed: the lock's record is rank 0's
            record = json.loads(Path(os.path.join(run_dir, RUN_LOCK)).read_text())
            dist.barrier()  # both have read it before rank 0 releases it
            said.put((rank, f"claimed: locked by {record['pid']} (rank 0: {os.getpid() if rank == 0 else ''})"))
    except ValueError as e:
        said.put((rank, str(e)))
    finally:
        dist.destroy_process_group()


def test_ddp_every_rank_is_refused_alike_and_only_rank_0_locks(tmp_path):
    """Rank 0 writes the run folder, so only it takes the lock; when it cannot, every rank stops with its line
    (none is left waiting in a collective for the others)."""
    import multiprocessing as mp

    run = tmp_path / "run"
    run.mkdir()
    holder = os.open(run / RUN_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another training holds it
    os.write(holder, json.dumps({"pid": 1, "host": "elsewhere", "started": "earlier"}).encode())
    ctx = mp.get_context("fork")

    def claim_on_both_ranks() -> dict:
        said = ctx.Queue()
        procs = [ctx.Process(target=_claim_on_rank, args=(r, str(run), f"file://{tmp_path}/pg{len(pids)}", said))
                 for r in (0, 1)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        pids.append(procs[0].pid)
        return dict(said.get(timeout=5) for _ in procs)

    pids: list[int] = []
    lines = claim_on_both_ranks()
    assert lines[0] == lines[1] and "pid 1 on elsewhere" in lines[0], lines
    os.close(holder)
    os.remove(run / RUN_LOCK)
    lines = claim_on_both_ranks()
    assert lines == {r: f"claimed: locked by {pids[-1]} (rank 0: {pids[-1] if r == 0 else ''})" for r in (0, 1)}
