"""Shard files: a few large LMDB or Arrow files holding each video's JPEG frames (or encoded bytes).

Writing: one open shard at a time per prep part, rotated when it passes the size cap. Every video is
committed atomically (one LMDB transaction, or one Arrow record batch followed by fsync), so a prep
killed at any moment leaves every shard readable up to its last whole video. A closed shard is never
written again. Reading: shards opened lazily per process, so a reader can be shared by forked
DataLoader or DALI workers.
"""
from __future__ import annotations

import glob
import json
import os
import zlib

import lmdb
import numpy as np
import pyarrow as pa

FORMATS = ("lmdb", "arrow")
_CLOSED_KEY = b"__closed__"
_ARROW_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("meta", pa.string()),
    ("frames", pa.list_(pa.binary())),
    ("video", pa.large_binary()),
])


class DamagedEntry(Exception):
    """A stored video whose bytes no longer match what prep wrote."""


def frame_crcs(frames: list[bytes]) -> list[int]:
    return [zlib.crc32(f) for f in frames]


_PACK_MAGIC = b"VKF1"


def pack_frames(frames: list[bytes]) -> bytes:
    """magic, frame count, end offsets (uint64), then the JPEGs back to back."""
    ends = np.cumsum([len(f) for f in frames], dtype=np.uint64)
    return b"".join([_PACK_MAGIC, np.uint32(len(frames)).tobytes(), ends.tobytes(), *frames])


def unpack_frames(buf, indices) -> list[bytes]:
    if bytes(buf[:4]) != _PACK_MAGIC:
        raise DamagedEntry("packed frames have a damaged header")
    n = int(np.frombuffer(buf, np.uint32, 1, 4)[0])
    ends = np.frombuffer(buf, np.uint64, n, 8).astype(np.int64)
    base = 8 + 8 * n
    if base + (int(ends[-1]) if n else 0) != len(buf):
        raise DamagedEntry("packed frames have a damaged header")
    out = []
    for i in indices:
        start = base + (int(ends[i - 1]) if i else 0)
        out.append(bytes(buf[start: base + int(ends[i])]))
    return out


# --------------------------------------------------------------------------- writing


class _LmdbShard:
    suffix = ".lmdb"

    def __init__(self, path: str, cap_bytes: int):
        # the map must hold a whole video past the cap: rotation happens only between videos
        self.env = lmdb.open(path, subdir=False, map_size=max(cap_bytes * 2, 1 << 28) + (4 << 30),
                             readahead=False, meminit=False, max_dbs=0)
        self.path = path

    def add(self, key: str, meta: dict, frames: list[bytes] | None, video: bytes | None) -> int:
        with self.env.begin(write=True) as txn:
            txn.put(f"{key}/m".encode(), json.dumps(meta).encode())
            if video is not None:
                txn.put(f"{key}/v".encode(), video)
            if frames:  # one value per video: per-frame values would each round up to whole pages
                txn.put(f"{key}/f".encode(), pack_frames(frames))
        return os.path.getsize(self.path)

    def close(self, final: bool) -> None:
        if final:
            with self.env.begin(write=True) as txn:
                txn.put(_CLOSED_KEY, b"1")
        self.env.sync(True)
        self.env.close()

    @staticmethod
    def scan(path: str) -> tuple[list[dict], bool]:
        env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False)
        metas, closed = [], False
        with env.begin() as txn:
            closed = txn.get(_CLOSED_KEY) is not None
            for k, v in txn.cursor():
                if k.endswith(b"/m"):
                    metas.append(json.loads(v))
        env.close()
        return metas, closed


class _ArrowShard:
    """The open shard is an Arrow IPC *stream* (`.arrows`), appendable batch by batch; closing it
    rewrites it once as an IPC *file* (`.arrow`), whose footer gives readers random access."""

    suffix = ".arrows"

    def __init__(self, path: str, cap_bytes: int):
        self.path = path
        good = _read_stream_prefix(path) if os.path.exists(path) else []
        tmp = path + ".tmp"
        self.sink = open(tmp, "wb")
        self.writer = pa.ipc.new_stream(self.sink, _ARROW_SCHEMA)
        for batch in good:  # a killed run may have left half a batch at the end: keep whole ones only
            self.writer.write_batch(batch)
        self._sync()
        os.replace(tmp, path)

    def _sync(self) -> None:
        self.sink.flush()
        os.fsync(self.sink.fileno())

    def add(self, key: str, meta: dict, frames: list[bytes] | None, video: bytes | None) -> int:
        batch = pa.record_batch([
            pa.array([key]), pa.array([json.dumps(meta)]),
            pa.array([frames or []], type=pa.list_(pa.binary())),
            pa.array([video], type=pa.large_binary()),
        ], schema=_ARROW_SCHEMA)
        self.writer.write_batch(batch)
        self._sync()
        return self.sink.tell()

    def close(self, final: bool) -> None:
        self.writer.close()
        self._sync()
        self.sink.close()
        if final:
            batches = _read_stream_prefix(self.path)
            final_path = self.path[: -len(".arrows")] + ".arrow"
            tmp = final_path + ".tmp"
            with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, _ARROW_SCHEMA) as w:
                for b in batches:
                    w.write_batch(b)
            _fsync_path(tmp)
            os.replace(tmp, final_path)
            os.remove(self.path)

    @staticmethod
    def scan(path: str) -> tuple[list[dict], bool]:
        if path.endswith(".arrow"):
            with pa.memory_map(path) as src:
                table = pa.ipc.open_file(src).read_all()
            return [json.loads(m) for m in table.column("meta").to_pylist()], True
        return [json.loads(b.column("meta")[0].as_py()) for b in _read_stream_prefix(path)], False


def _read_stream_prefix(path: str) -> list[pa.RecordBatch]:
    batches = []
    try:
        with pa.memory_map(path) as src:
            reader = pa.ipc.open_stream(src)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowInvalid, OSError, EOFError):
        pass  # truncated tail: everything before it is whole
    return batches


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SHARD_TYPES = {"lmdb": _LmdbShard, "arrow": _ArrowShard}


class ShardWriter:
    """Appends videos to `<dir>/<tag>-NNNN.<ext>`, rotating at `cap_bytes`; resumes where it stopped."""

    def __init__(self, shard_dir: str, tag: str, fmt: str, cap_bytes: int):
        if fmt not in FORMATS:
            raise ValueError(f"unknown shard format {fmt!r}; expected one of {FORMATS}")
        self.dir, self.tag, self.fmt, self.cap = shard_dir, tag, fmt, cap_bytes
        self.kind = _SHARD_TYPES[fmt]
        os.makedirs(shard_dir, exist_ok=True)
        self.done: dict[str, dict] = {}
        self._open_index = self._scan_existing()
        self._shard = None

    def _paths(self) -> list[str]:
        pattern = os.path.join(self.dir, f"{self.tag}-[0-9][0-9][0-9][0-9].*")
        return sorted(p for p in glob.glob(pattern) if not p.endswith((".tmp", "-lock")))

    def _scan_existing(self) -> int:
        """Reads back every whole video already stored; returns the index of the shard to append to."""
        next_index = 0
        for path in self._paths():
            if path.endswith(".arrows") and os.path.exists(path[:-1]):
                os.remove(path)  # killed after the closed copy was renamed into place: it is whole
                continue
            metas, closed = self.kind.scan(path)
            for m in metas:
                self.done[m["key"]] = m
            index = int(os.path.basename(path)[len(self.tag) + 1:][:4])
            next_index = index + 1 if closed else index
        return next_index

    def shard_name(self, index: int) -> str:
        return f"{self.tag}-{index:04d}{self.kind.suffix}"

    def add(self, key: str, meta: dict, frames: list[bytes] | None = None, video: bytes | None = None) -> None:
        if self._shard is None:
            self._shard = self.kind(os.path.join(self.dir, self.shard_name(self._open_index)), self.cap)
        meta = dict(meta, key=key, shard=_final_name(self.shard_name(self._open_index)))
        size = self._shard.add(key, meta, frames, video)
        self.done[key] = meta
        if size >= self.cap:
            self._shard.close(final=True)
            self._shard = None
            self._open_index += 1

    def close(self) -> None:
        """Closes the last shard for good (the part is finished)."""
        if self._shard is None:
            path = os.path.join(self.dir, self.shard_name(self._open_index))
            if os.path.exists(path):
                self._shard = self.kind(path, self.cap)
        if self._shard is not None:
            self._shard.close(final=True)
            self._shard = None


def _final_name(name: str) -> str:
    return name[: -len(".arrows")] + ".arrow" if name.endswith(".arrows") else name


# --------------------------------------------------------------------------- reading


_HANDLES: dict[str, object] = {}  # one handle per shard file per process: LMDB refuses a second open
_HANDLES_PID = [None]


def _shard_handle(path: str):
    if _HANDLES_PID[0] != os.getpid():  # a forked child must not reuse its parent's handles
        _HANDLES.clear()
        _HANDLES_PID[0] = os.getpid()
    h = _HANDLES.get(path)
    if h is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"shard missing: {path}")
        if path.endswith(".lmdb"):
            h = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False, max_readers=2048)
        else:
            h = _ArrowIndex(path)
        _HANDLES[path] = h
    return h


class ShardReader:
    """Random access to stored videos by (shard, key); safe across fork (reopens per process)."""

    def __init__(self, shard_dir: str):
        self.dir = shard_dir

    def _handle(self, shard: str):
        return _shard_handle(os.path.realpath(os.path.join(self.dir, shard)))

    def meta(self, shard: str, key: str) -> dict:
        h = self._handle(shard)
        if isinstance(h, _ArrowIndex):
            return h.meta(key)
        with h.begin(buffers=False) as txn:
            raw = txn.get(f"{key}/m".encode())
        if raw is None:
            raise DamagedEntry(f"{shard}: no entry {key}")
        return json.loads(raw)

    def frames(self, shard: str, key: str, indices) -> list[bytes]:
        h = self._handle(shard)
        if isinstance(h, _ArrowIndex):
            return h.frames(key, indices)
        with h.begin(buffers=True) as txn:  # zero-copy view of the mapped value; only chosen frames are copied
            packed = txn.get(f"{key}/f".encode())
            if packed is None:
                raise DamagedEntry(f"{shard}: frames of {key} missing")
            try:
                return unpack_frames(packed, indices)
            except DamagedEntry as e:
                raise DamagedEntry(f"{shard}: {key}: {e}") from None

    def video(self, shard: str, key: str) -> bytes:
        h = self._handle(shard)
        if isinstance(h, _ArrowIndex):
            return h.video(key)
        with h.begin() as txn:
            v = txn.get(f"{key}/v".encode())
        if v is None:
            raise DamagedEntry(f"{shard}: video bytes of {key} missing")
        return v


class _ArrowIndex:
    def __init__(self, path: str):
        self.reader = pa.ipc.open_file(pa.memory_map(path))
        keys = [self.reader.get_batch(i).column("key")[0].as_py() for i in range(self.reader.num_record_batches)]
        self.batch_of = {k: i for i, k in enumerate(keys)}

    def _batch(self, key: str) -> pa.RecordBatch:
        if key not in self.batch_of:
            raise DamagedEntry(f"no entry {key}")
        return self.reader.get_batch(self.batch_of[key])

    def meta(self, key: str) -> dict:
        return json.loads(self._batch(key).column("meta")[0].as_py())

    def frames(self, key: str, indices) -> list[bytes]:
        values = self._batch(key).column("frames")[0].values
        return [values[int(i)].as_py() for i in indices]

    def video(self, key: str) -> bytes:
        return self._batch(key).column("video")[0].as_py()
