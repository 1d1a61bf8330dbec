"""`python -m prep verify OUT`: decode every stored frame, check every checksum, name each damaged entry, and compare
the manifest with the shards both ways (a video listed that no shard holds, a video stored that the manifest does
not list).

It always finishes. Shards are checked first (size against header, identity against the manifest) and every video
of an unusable shard is reported without being read. The rest is read in worker processes; a worker killed while
reading (SIGBUS on a damaged mapped page, say) costs a pool, not the run: the entries it may have been on are read
again one process each, so that exactly the culprit is reported.
"""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import lmdb
import pyarrow as pa
from PIL import Image
from tqdm import tqdm

from .dataset import DamagedEntry, PreppedDataset, open_dataset

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


def report(root: str, workers: int = 1, progress: bool = True) -> int:
    """Prints one line per damaged shard, damaged entry, missing and unlisted video, then the counts; returns the
    exit status (1 if anything was found)."""
    ds = open_dataset(root)
    bad_shards = ds.check_shards()
    missing, unlisted = compare_with_shards(ds, bad_shards)
    for shard, reason in sorted(bad_shards.items()):
        print(f"UNREADABLE SHARD {shard}: {reason}")
    for vid, shard in missing:
        print(f"MISSING {vid} ({shard}): listed in manifest.jsonl, but its shard does not hold it")
    for vid, shard in unlisted:
        print(f"UNLISTED {vid} ({shard}): stored in the shard, but manifest.jsonl does not list it")
    gone = {vid for vid, _ in missing}
    bad = [b for b in verify(root, workers=workers, progress=progress) if b[0] not in gone]
    for vid, shard, reason in bad:
        print(f"DAMAGED {vid} ({shard}): {reason}")
    print(f"verify: {len(bad)} damaged entr{'y' if len(bad) == 1 else 'ies'} in {len(bad_shards)} damaged shards, "
          f"{len(missing)} listed but not stored, {len(unlisted)} stored but not listed")
    return 1 if bad or missing or unlisted or bad_shards else 0


def compare_with_shards(ds: PreppedDataset, bad_shards: dict[str, str]) -> tuple[list, list]:
    """([(id, shard)] listed in the manifest but held by no readable shard, [(id, shard)] held by a shard but not
    listed). Damaged shards are left out: their videos are reported as damaged."""
    listed = {(r["shard"], r["key"]): r["id"] for r in ds.rows}
    shard_dir = os.path.join(ds.root, "shards")
    files = {n for n in (os.listdir(shard_dir) if os.path.isdir(shard_dir) else [])
             if n.endswith((".lmdb", ".arrow", ".arrows"))}
    held = {}
    for shard in sorted(files | {shard for shard, _ in listed}):
        if shard in bad_shards:
            continue
        try:
            handle = ds.reader.open(shard)
            for key in handle.keys():
                held[(shard, key)] = handle
        except (DamagedEntry, OSError) as e:  # a shard no row names, unreadable: its videos are not listed either
            bad_shards[shard] = str(e)
    missing = [(vid, shard) for (shard, key), vid in listed.items() if shard not in bad_shards
               and (shard, key) not in held]
    unlisted = [(_stored_id(handle, key), shard) for (shard, key), handle in held.items() if (shard, key) not in listed]
    return sorted(missing), sorted(unlisted)


def _stored_id(handle, key: str) -> str:
    try:
        return str(handle.meta(key).get("id", key))
    except DamagedEntry:
        return f"key {key}"


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
