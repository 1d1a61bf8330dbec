"""`python -m prep verify OUT`: decode every stored frame, check every checksum, name each damaged entry.

It always finishes. Shards are checked first (size against header, identity against the manifest) and every video
of an unusable shard is reported without being read. The rest is read in worker processes; a worker killed while
reading (SIGBUS on a damaged mapped page, say) costs a pool, not the run: the entries it may have been on are read
again one process each, so that exactly the culprit is reported.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import lmdb
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from .dataset import DamagedEntry, open_dataset

_CTX = mp.get_context("fork")


def check_entry(ds, i: int) -> str | None:
    """None if video i is whole, else why not."""
    row = ds.record(i)
    try:
        if row["store"] == "video":
            ds.video(i, verify=True)
            return None
        frames = ds.frames(i, range(row["num_frames"]), verify=True)
        digest = hashlib.sha1()
        for blob in frames:
            digest.update(blob)
            Image.open(io.BytesIO(blob)).load()
        if digest.hexdigest() != row["checksum"]:
            return "checksum of the stored frames differs from the manifest"
    except (DamagedEntry, lmdb.Error, pa.ArrowException, OSError, ValueError, KeyError, IndexError) as e:
        return f"{type(e).__name__}: {e}"
    return None


_ds = None


def _init(root):
    global _ds
    _ds = open_dataset(root)


def _check(i):
    try:
        return check_entry(_ds, i)
    except Exception as e:  # noqa: BLE001 - whatever a damaged entry raises, it is that entry's finding
        return f"{type(e).__name__}: {e}"


def verify(root: str, workers: int = 1, progress: bool = True) -> list[tuple[str, str, str]]:
    """Returns (id, shard, reason) for every damaged entry."""
    ds = open_dataset(root)
    bad_shards = ds.check_shards()
    reasons = {i: bad_shards[r["shard"]] for i, r in enumerate(ds.rows) if r["shard"] in bad_shards}
    todo = [i for i in range(len(ds)) if i not in reasons]
    with tqdm(total=len(ds), initial=len(reasons), unit="video", desc="verify", disable=not progress) as bar:
        while todo:
            for i in _check_in_pool(root, todo, max(1, workers), reasons, bar):
                reasons[i] = _check_alone(root, i)
                bar.update(1)
            todo = [i for i in todo if i not in reasons]
    return [(ds.rows[i]["id"], ds.rows[i]["shard"], r) for i, r in sorted(reasons.items()) if r]


def _check_in_pool(root, todo, workers, reasons, bar) -> list[int]:
    """Checks `todo` into `reasons` (None: whole); if a worker dies, returns the entries that were in flight."""
    pending = iter(todo)
    with ProcessPoolExecutor(workers, mp_context=_CTX, initializer=_init, initargs=(root,)) as pool:
        running = {}

        def refill():
            while len(running) < 2 * workers and (i := next(pending, None)) is not None:
                running[pool.submit(_check, i)] = i

        refill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            suspects = []
            for f in done:
                i = running.pop(f)
                if isinstance(f.exception(), BrokenProcessPool):
                    suspects.append(i)
                else:
                    reasons[i] = f.result()
                    bar.update(1)
            if suspects:
                return suspects + list(running.values())
            refill()
    return []


def _check_alone(root: str, i: int) -> str | None:
    """Checks entry i in a process of its own, so that its death names it."""
    receive, send = _CTX.Pipe(duplex=False)
    proc = _CTX.Process(target=_check_into, args=(root, i, send))
    proc.start()
    send.close()
    try:
        reason = receive.recv()
    except EOFError:
        reason = None
    proc.join()
    if proc.exitcode:
        how = f"killed by {signal.Signals(-proc.exitcode).name}" if proc.exitcode < 0 else f"exit {proc.exitcode}"
        return f"reading it killed the reader ({how})"
    return reason


def _check_into(root, i, send):
    _init(root)
    send.send(_check(i))
