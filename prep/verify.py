"""`python -m prep verify OUT`: decode every stored frame, check every checksum, name each damaged entry."""
from __future__ import annotations

import hashlib
import io
import multiprocessing as mp

import lmdb
from PIL import Image
from tqdm import tqdm

from .dataset import DamagedEntry, open_dataset


def check_entry(ds, i: int) -> str | None:
    """None if video i is whole, else why not."""
    row = ds.record(i)
    try:
        if row["store"] == "video":
            ds.video(i, verify=True)
            return None
        frames = ds.frames(i, range(row["num_frames"]), verify=True)
        digest = hashlib.sha1()
        for j, blob in enumerate(frames):
            digest.update(blob)
            Image.open(io.BytesIO(blob)).load()
        if digest.hexdigest() != row["checksum"]:
            return "checksum of the stored frames differs from the manifest"
    except (DamagedEntry, lmdb.Error, OSError, ValueError, KeyError, IndexError) as e:
        return f"{type(e).__name__}: {e}"
    return None


_ds = None


def _init(root):
    global _ds
    _ds = open_dataset(root)


def _check(i):
    return i, check_entry(_ds, i)


def verify(root: str, workers: int = 1, progress: bool = True) -> list[tuple[str, str, str]]:
    """Returns (id, shard, reason) for every damaged entry."""
    ds = open_dataset(root)
    bad = []
    bar = tqdm(total=len(ds), unit="video", desc="verify", disable=not progress)
    if workers > 1:
        with mp.get_context("fork").Pool(workers, initializer=_init, initargs=(root,)) as pool:
            results = list(_progress(pool.imap_unordered(_check, range(len(ds)), chunksize=4), bar))
    else:
        results = list(_progress(((i, check_entry(ds, i)) for i in range(len(ds))), bar))
    bar.close()
    for i, reason in sorted(results):
        if reason:
            row = ds.record(i)
            bad.append((row["id"], row["shard"], reason))
    return bad


def _progress(it, bar):
    for x in it:
        bar.update(1)
        yield x
