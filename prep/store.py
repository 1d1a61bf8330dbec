"""Shard files: a few large LMDB or Arrow files holding each video's JPEG frames (or encoded bytes).

Writing: one open shard at a time per prep part, rotated when it passes the size cap. Every video is
committed atomically: its meta goes last, in one LMDB transaction or one Arrow record batch followed by
fsync, so a prep killed at any moment leaves every shard readable up to its last whole video. A long
video's frames go in chunks of about `chunk_bytes`, each its own transaction or batch before the meta, so
neither prep nor a reader ever holds a whole long video; chunks whose meta never came are ignored. A closed
shard is never written again.

Identity: every shard holds `<run>/<random>` (LMDB key __identity__, Arrow schema metadata) and the manifest
names it for each video; a reader refuses a shard whose identity differs, since a file copied in from another
prep run would otherwise serve its own frames under this manifest's labels.

Reading: shards opened lazily per process, so a reader can be shared by forked DataLoader or DALI workers.
Before a shard is used its size is checked against its header (LMDB: the map's last page; Arrow: the
footer): touching a mapped page past the end of a truncated file kills the process with SIGBUS.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import tempfile
import uuid
import zlib
from contextlib import contextmanager

import lmdb
import numpy as np
import pyarrow as pa

FORMATS = ("lmdb", "arrow")
DEFAULT_CHUNK_BYTES = 16 << 20  # about 3x this is held while a chunk is committed
_CLOSED_KEY = b"__closed__"
_IDENTITY_KEY = b"__identity__"
_IDENTITY_META = b"vidkit.shard_id"
_ARROW_MAGIC = b"ARROW1"
_ARROW_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("meta", pa.string()),
    ("frames", pa.list_(pa.binary())),
    ("video", pa.large_binary()),
])


class DamagedEntry(Exception):
    """A stored video whose bytes no longer match what prep wrote."""


class DamagedShard(DamagedEntry):
    """A whole shard file that cannot be used: truncated, unreadable, or not the one the manifest names."""


class DiskFull(Exception):
    """The disk filled up while prep wrote `path`. Not an OSError on purpose: decoding takes an OSError for a bad
    video, and a full disk must stop the run instead."""

    def __init__(self, path: str, detail: str = "no space left on device"):
        super().__init__(path, detail)
        self.path, self.detail = path, detail

    def __str__(self) -> str:
        return f"{self.detail} while writing {self.path}"


def _disk_full_detail(e: BaseException) -> str | None:
    if isinstance(e, lmdb.DiskError):
        return "no space left on device"
    if isinstance(e, OSError):  # Arrow's IO errors carry the text but not always the errno
        if e.errno == errno.ENOSPC or "No space left on device" in str(e):
            return "no space left on device"
        if e.errno == errno.EDQUOT or "Disk quota exceeded" in str(e):
            return "disk quota exceeded"
    return None


@contextmanager
def disk_guard(path: str):
    """Turns a full disk while writing `path` into DiskFull naming it."""
    try:
        yield
    except (OSError, lmdb.Error) as e:
        detail = _disk_full_detail(e)
        if detail is None:
            raise
        raise DiskFull(path, detail) from e


@contextmanager
def removed_on_error(path: str):
    """A partial file must not outlive a failed write."""
    try:
        yield
    except BaseException:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        raise


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
        if not 0 <= i < n:
            raise DamagedEntry(f"packed frames hold {n} frames, frame {i} asked for")
        start = base + (int(ends[i - 1]) if i else 0)
        out.append(bytes(buf[start: base + int(ends[i])]))
    return out


# --------------------------------------------------------------------------- frames on their way to a shard


class FrameSpool:
    """A video's JPEG frames as they are encoded: in a file under `folder` (prep's workers, so that memory stays at
    one frame whatever the length of the video), or in memory when folder is None. Picklable once finished."""

    def __init__(self, folder: str | None = None):
        self.sizes: list[int] = []
        self.path: str | None = None
        self._memory = bytearray()
        self._file = None
        if folder is not None:
            with disk_guard(folder):
                fd, self.path = tempfile.mkstemp(dir=folder, suffix=".spool")
            self._file = os.fdopen(fd, "wb")

    @classmethod
    def of(cls, frames: list[bytes]) -> "FrameSpool":
        spool = cls()
        for f in frames:
            spool.append(f)
        return spool

    def __len__(self) -> int:
        return len(self.sizes)

    def append(self, data: bytes) -> None:
        if self._file is None:
            self._memory += data
        else:
            with disk_guard(self.path):
                self._file.write(data)
        self.sizes.append(len(data))

    def finish(self) -> "FrameSpool":
        if self._file is not None:
            with disk_guard(self.path):
                self._file.close()
            self._file = None
        return self

    def read(self, start: int, stop: int) -> list[bytes]:
        ends = np.cumsum([0, *self.sizes[:stop]])
        if self.path is None:
            blob = memoryview(self._memory)[ends[start]: ends[stop]]
        else:
            with open(self.path, "rb") as f:
                f.seek(int(ends[start]))
                blob = f.read(int(ends[stop] - ends[start]))
        rel = ends[start: stop + 1] - ends[start]
        return [bytes(blob[rel[i]: rel[i + 1]]) for i in range(stop - start)]

    def all(self) -> list[bytes]:
        return self.read(0, len(self))

    def discard(self) -> None:
        """Never raises: it runs while a rejection or another error is on its way."""
        self._memory = bytearray()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if self.path is not None and os.path.exists(self.path):
            os.remove(self.path)

    def __getstate__(self):
        self.finish()
        return {**self.__dict__, "_file": None}


def chunk_plan(sizes: list[int], chunk_bytes: int) -> int | None:
    """Frames per chunk, or None when the video fits one chunk (one value, as every short video)."""
    if sum(sizes) <= chunk_bytes:
        return None
    return max(1, chunk_bytes // max(sizes))


def _chunks(n: int, per: int | None) -> list[tuple[int, int]]:
    per = per or n
    return [(start, min(start + per, n)) for start in range(0, n, per)] if n else []


def _by_chunk(indices, per: int | None) -> list[tuple[int | None, list[int]]]:
    """(chunk, positions in it) runs, in the order of `indices` (chunk None: the video is one value)."""
    runs = []
    for i in indices:
        c, j = (None, int(i)) if per is None else divmod(int(i), per)
        if runs and runs[-1][0] == c:
            runs[-1][1].append(j)
        else:
            runs.append((c, [j]))
    return runs


def _lmdb_frame_key(key: str, chunk: int | None) -> bytes:
    return f"{key}/f".encode() if chunk is None else f"{key}/f{chunk}".encode()


def _arrow_chunk_name(key: str, chunk: int) -> str:
    return f"{key}#{chunk}"


# --------------------------------------------------------------------------- checks before mapping


def open_lmdb_checked(path: str, **kwargs) -> lmdb.Environment:
    """A read-only environment, refused (DamagedShard) when the file is shorter than its header says."""
    if os.path.getsize(path) == 0:
        raise DamagedShard(f"{path}: truncated shard: 0 bytes on disk")
    try:
        env = lmdb.open(path, subdir=False, readonly=True, lock=False, readahead=False, **kwargs)
    except lmdb.Error as e:  # a damaged header: bad magic, version bytes, page numbers...
        raise DamagedShard(f"{path}: not a readable LMDB shard ({str(e).replace(path + ': ', '')})") from None
    try:
        need = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    except lmdb.Error as e:
        env.close()
        raise DamagedShard(f"{path}: not a readable LMDB shard ({e})") from None
    size = os.path.getsize(path)
    if size < need:
        env.close()
        raise DamagedShard(f"{path}: truncated shard: {size} bytes on disk, its header needs {need}")
    return env


def check_arrow_footer(path: str) -> None:
    """An Arrow IPC file ends with its footer, its length and the magic: a truncated file has none of them."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(6)
        f.seek(max(0, size - 10))
        tail = f.read(10)
    footer = int.from_bytes(tail[:4], "little", signed=True) if len(tail) == 10 else -1
    if head != _ARROW_MAGIC or tail[-6:] != _ARROW_MAGIC or not 0 < footer <= size - 18:
        raise DamagedShard(f"{path}: truncated shard: no Arrow file footer at the end of its {size} bytes")


def _schema_identity(schema) -> str | None:
    meta = (schema.metadata or {}) if schema is not None else {}
    return meta[_IDENTITY_META].decode() if _IDENTITY_META in meta else None


# --------------------------------------------------------------------------- writing


class _LmdbShard:
    suffix = ".lmdb"

    def __init__(self, path: str, cap_bytes: int, identity: str):
        # the map must hold a whole video past the cap: rotation happens only between videos
        self.env = lmdb.open(path, subdir=False, map_size=max(cap_bytes * 2, 1 << 28) + (4 << 30),
                             readahead=False, meminit=False, max_dbs=0)
        self.path = path
        with self.env.begin(write=True) as txn:
            found = txn.get(_IDENTITY_KEY)
            if found is None:
                txn.put(_IDENTITY_KEY, identity.encode())
        self.identity = found.decode() if found else identity

    def add(self, key: str, meta: dict, frames: FrameSpool | None, video: bytes | None, per: int | None) -> int:
        chunks = _chunks(len(frames), per) if frames else []
        for c, (start, stop) in enumerate(chunks[:-1]):  # one transaction each: memory stays at one chunk
            with self.env.begin(write=True) as txn:
                txn.put(_lmdb_frame_key(key, c), pack_frames(frames.read(start, stop)))
        with self.env.begin(write=True) as txn:
            if chunks:  # one value per chunk: per-frame values would each round up to whole pages
                last = None if per is None else len(chunks) - 1
                txn.put(_lmdb_frame_key(key, last), pack_frames(frames.read(*chunks[-1])))
            if video is not None:
                txn.put(f"{key}/v".encode(), video)
            txn.put(f"{key}/m".encode(), json.dumps(meta).encode())
        return os.path.getsize(self.path)

    def close(self, final: bool) -> None:
        try:
            if final:
                with self.env.begin(write=True) as txn:
                    txn.put(_CLOSED_KEY, b"1")
            self.env.sync(True)
        finally:
            self.env.close()

    @staticmethod
    def scan(path: str) -> tuple[list[dict], bool, str | None]:
        env = open_lmdb_checked(path)
        try:
            with env.begin() as txn:
                closed = txn.get(_CLOSED_KEY) is not None
                identity = txn.get(_IDENTITY_KEY)
                metas = [json.loads(v) for k, v in txn.cursor() if k.endswith(b"/m")]
        finally:
            env.close()
        return metas, closed, identity.decode() if identity else None


class _ArrowShard:
    """The open shard is an Arrow IPC *stream* (`.arrows`), appendable batch by batch; closing it
    rewrites it once as an IPC *file* (`.arrow`), whose footer gives readers random access.
    A chunked video is batches `<key>#<c>` (frames only) then a batch `<key>` with its meta."""

    suffix = ".arrows"

    def __init__(self, path: str, cap_bytes: int, identity: str):
        self.path = path
        schema, good = _read_stream_prefix(path) if os.path.exists(path) else (None, [])
        self.identity = _schema_identity(schema) or identity
        self.schema = _ARROW_SCHEMA.with_metadata({_IDENTITY_META: self.identity.encode()})
        tmp = path + ".tmp"
        self.sink = open(tmp, "wb")
        try:
            with removed_on_error(tmp):
                self.writer = pa.ipc.new_stream(self.sink, self.schema)
                for batch in good:  # a killed run may have left half a batch at the end: keep whole ones only
                    self.writer.write_batch(pa.record_batch(batch.columns, schema=self.schema))
                self._sync()
                os.replace(tmp, path)
        except BaseException:
            self.sink.close()
            raise

    def _sync(self) -> None:
        self.sink.flush()
        os.fsync(self.sink.fileno())

    def _batch(self, name: str, meta: str | None, frames: list[bytes], video: bytes | None) -> pa.RecordBatch:
        return pa.record_batch([
            pa.array([name]), pa.array([meta], type=pa.string()),
            pa.array([frames], type=pa.list_(pa.binary())),
            pa.array([video], type=pa.large_binary()),
        ], schema=self.schema)

    def add(self, key: str, meta: dict, frames: FrameSpool | None, video: bytes | None, per: int | None) -> int:
        chunks = _chunks(len(frames), per) if frames else []
        if per is not None:
            for c, (start, stop) in enumerate(chunks):
                self.writer.write_batch(self._batch(_arrow_chunk_name(key, c), None, frames.read(start, stop), None))
        whole = frames.all() if frames and per is None else []
        self.writer.write_batch(self._batch(key, json.dumps(meta), whole, video))
        self._sync()
        return self.sink.tell()

    def close(self, final: bool) -> None:
        try:
            self.writer.close()
            self._sync()
        finally:
            self.sink.close()
        if final:
            schema, batches = _read_stream_prefix(self.path)
            final_path = self.path[: -len(".arrows")] + ".arrow"
            tmp = final_path + ".tmp"
            with removed_on_error(tmp):
                with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, self.schema) as w:
                    for b in _whole_videos(batches):
                        w.write_batch(pa.record_batch(b.columns, schema=self.schema))
                _fsync_path(tmp)
                os.replace(tmp, final_path)
            os.remove(self.path)

    @staticmethod
    def scan(path: str) -> tuple[list[dict], bool, str | None]:
        if path.endswith(".arrow"):
            check_arrow_footer(path)
            with pa.memory_map(path) as src:
                reader = pa.ipc.open_file(src)
                metas = reader.read_all().column("meta").to_pylist()
                schema, closed = reader.schema, True
        else:
            schema, batches = _read_stream_prefix(path)
            metas, closed = [b.column("meta")[0].as_py() for b in batches], False
        return [json.loads(m) for m in metas if m is not None], closed, _schema_identity(schema)


def _whole_videos(batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """Drops the chunks of videos whose meta never came (killed mid-video) and chunks written again later."""
    names = [b.column("key")[0].as_py() for b in batches]
    whole = {n for n, b in zip(names, batches) if b.column("meta").null_count == 0}
    latest = {n: i for i, n in enumerate(names)}
    return [b for i, (n, b) in enumerate(zip(names, batches)) if latest[n] == i and n.split("#")[0] in whole]


def _read_stream_prefix(path: str) -> tuple[pa.Schema | None, list[pa.RecordBatch]]:
    schema, batches = None, []
    try:
        with pa.memory_map(path) as src:
            reader = pa.ipc.open_stream(src)
            schema = reader.schema
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowInvalid, OSError, EOFError):
        pass  # truncated tail: everything before it is whole
    return schema, batches


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SHARD_TYPES = {"lmdb": _LmdbShard, "arrow": _ArrowShard}


class ShardWriter:
    """Appends videos to `<dir>/<tag>-NNNN.<ext>`, rotating at `cap_bytes`; resumes where it stopped.

    `run` is the prep run's identity: each new shard gets `<run>/<random>`, and an existing shard of another run
    (copied in) is refused rather than taken for this run's work."""

    def __init__(self, shard_dir: str, tag: str, fmt: str, cap_bytes: int, run: str | None = None,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES):
        if fmt not in FORMATS:
            raise ValueError(f"unknown shard format {fmt!r}; expected one of {FORMATS}")
        self.dir, self.tag, self.fmt, self.cap = shard_dir, tag, fmt, cap_bytes
        self.run, self.chunk_bytes = run, chunk_bytes
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
            forget_handle(path)  # this process may have read it; LMDB refuses a second open, and it will change
            try:
                metas, closed, identity = self.kind.scan(path)
            except DamagedShard as e:
                raise ValueError(f"{e}: delete it and run again to prep its videos anew") from None
            if None not in (identity, self.run) and identity.split("/")[0] != self.run:
                raise ValueError(f"{path} is shard {identity} of another prep run, not of this one ({self.run}): "
                                 "copied in from elsewhere? Delete it and run again to prep its videos anew")
            for m in metas:
                self.done[m["key"]] = m
            index = int(os.path.basename(path)[len(self.tag) + 1:][:4])
            next_index = index + 1 if closed else index
        return next_index

    def _new_identity(self) -> str:
        if self.run is None:
            self.run = uuid.uuid4().hex[:12]
        return f"{self.run}/{uuid.uuid4().hex[:8]}"

    def shard_name(self, index: int) -> str:
        return f"{self.tag}-{index:04d}{self.kind.suffix}"

    def add(self, key: str, meta: dict, frames: FrameSpool | list[bytes] | None = None,
            video: bytes | None = None) -> None:
        if frames is not None and not isinstance(frames, FrameSpool):
            frames = FrameSpool.of(frames)
        name = self.shard_name(self._open_index)
        with disk_guard(os.path.join(self.dir, name)):
            if self._shard is None:
                self._shard = self.kind(os.path.join(self.dir, name), self.cap, self._new_identity())
            per = chunk_plan(frames.sizes, self.chunk_bytes) if frames else None
            meta = dict(meta, key=key, shard=_final_name(name), shard_id=self._shard.identity)
            if per is not None:
                meta["chunk_frames"] = per
            size = self._shard.add(key, meta, frames, video, per)
        self.done[key] = meta
        if size >= self.cap:
            self._close_shard(final=True)
            self._open_index += 1

    def _close_shard(self, final: bool) -> None:
        shard, self._shard = self._shard, None
        with disk_guard(shard.path):
            shard.close(final=final)

    def close(self) -> None:
        """Closes the last shard for good (the part is finished)."""
        if self._shard is None:
            path = os.path.join(self.dir, self.shard_name(self._open_index))
            if os.path.exists(path):
                with disk_guard(path):
                    self._shard = self.kind(path, self.cap, self._new_identity())
        if self._shard is not None:
            self._close_shard(final=True)

    def abort(self) -> None:
        """Leaves the open shard unfinished (interrupted, or failed): a re-run appends to it. Never raises, since
        it runs while another error is on its way up; the shard is readable up to its last whole video anyway."""
        if self._shard is not None:
            try:
                self._close_shard(final=False)
            except Exception:  # noqa: BLE001
                pass


def _final_name(name: str) -> str:
    return name[: -len(".arrows")] + ".arrow" if name.endswith(".arrows") else name


# --------------------------------------------------------------------------- reading


# what a damaged stored value raises once it is read: bad JSON or UTF-8, bad Arrow offsets, missing fields
_VALUE_DAMAGE = (lmdb.Error, pa.ArrowException, ValueError, TypeError, KeyError, IndexError, OverflowError)


class _Handle:
    """What both formats' handles share: the size the shard had when it was checked, compared before every read
    (a file truncated while in use would otherwise kill the reading process with SIGBUS on a mapped page), and
    damage found in a stored value turned into a DamagedEntry naming the shard and the entry."""

    def __init__(self, path: str):
        self.path, self.name = path, os.path.basename(path)
        self.size = os.path.getsize(path)

    def check_size(self) -> None:
        size = os.path.getsize(self.path)
        if size < self.size:
            raise DamagedShard(f"{self.path}: truncated while in use: {size} bytes on disk, {self.size} when opened")

    @contextmanager
    def reading(self, key: str):
        self.check_size()
        try:
            yield
        except DamagedEntry:
            raise
        except _VALUE_DAMAGE as e:
            raise DamagedEntry(f"{self.name}: {key}: damaged entry ({type(e).__name__}: {e})") from None

    def keys(self) -> list[str]:
        """The keys of the whole videos the shard holds (their meta written)."""
        raise NotImplementedError


class _LmdbHandle(_Handle):
    def __init__(self, path: str):
        super().__init__(path)
        self.env = open_lmdb_checked(path, max_readers=2048)
        try:
            with self.env.begin() as txn:
                raw = txn.get(_IDENTITY_KEY)
            self.identity = raw.decode() if raw else None
        except (lmdb.Error, UnicodeDecodeError) as e:
            self.env.close()
            raise DamagedShard(f"{path}: damaged LMDB shard, its identity unreadable ({e})") from None

    def meta(self, key: str) -> dict:
        with self.reading(key), self.env.begin(buffers=False) as txn:
            raw = txn.get(f"{key}/m".encode())
            if raw is None:
                raise DamagedEntry(f"{self.name}: no entry {key}")
            return _meta_dict(json.loads(raw))

    def frames(self, key: str, indices, per: int | None) -> list[bytes]:
        out = []
        # zero-copy view of the mapped value; only chosen frames are copied
        with self.reading(key), self.env.begin(buffers=True) as txn:
            for chunk, positions in _by_chunk(indices, per):
                packed = txn.get(_lmdb_frame_key(key, chunk))
                if packed is None:
                    raise DamagedEntry(f"{self.name}: frames of {key} missing")
                try:
                    out += unpack_frames(packed, positions)
                except DamagedEntry as e:
                    raise DamagedEntry(f"{self.name}: {key}: {e}") from None
        return out

    def video(self, key: str) -> bytes:
        with self.reading(key), self.env.begin() as txn:
            v = txn.get(f"{key}/v".encode())
        if v is None:
            raise DamagedEntry(f"{self.name}: video bytes of {key} missing")
        return v

    def keys(self) -> list[str]:
        with self.reading("keys"), self.env.begin() as txn:
            return [k[:-2].decode() for k in txn.cursor().iternext(values=False) if k.endswith(b"/m")]


class _ArrowHandle(_Handle):
    def __init__(self, path: str):
        super().__init__(path)
        check_arrow_footer(path)
        try:
            self.reader = pa.ipc.open_file(pa.memory_map(path))
            self.identity = _schema_identity(self.reader.schema)
            names = []
            for i in range(self.reader.num_record_batches):
                batch = self.reader.get_batch(i)
                # damaged offsets or lengths would make a later read abort or crash the process: checked once here
                batch.validate(full=True)
                names.append(batch.column("key")[0].as_py())
        except (pa.ArrowException, OSError, ValueError, IndexError) as e:
            raise DamagedShard(f"{path}: not a readable Arrow shard ({type(e).__name__}: {e})") from None
        self.batch_of = {n: i for i, n in enumerate(names)}  # the latest wins: an earlier one was cut short

    def _batch(self, name: str) -> pa.RecordBatch:
        if name not in self.batch_of:
            raise DamagedEntry(f"{self.name}: no entry {name}")
        return self.reader.get_batch(self.batch_of[name])

    def meta(self, key: str) -> dict:
        with self.reading(key):
            return _meta_dict(json.loads(self._batch(key).column("meta")[0].as_py()))

    def frames(self, key: str, indices, per: int | None) -> list[bytes]:
        out = []
        with self.reading(key):
            for chunk, positions in _by_chunk(indices, per):
                values = self._batch(key if chunk is None else _arrow_chunk_name(key, chunk)).column("frames")[0].values
                bad = [j for j in positions if not 0 <= j < len(values)]
                if bad:
                    raise DamagedEntry(f"{self.name}: {key}: {len(values)} frames stored, frame {bad[0]} asked for")
                out += [values[j].as_py() for j in positions]
        return out

    def video(self, key: str) -> bytes:
        with self.reading(key):
            return self._batch(key).column("video")[0].as_py()

    def keys(self) -> list[str]:
        with self.reading("keys"):
            return [n for n, i in self.batch_of.items()
                    if "#" not in n and self.reader.get_batch(i).column("meta").null_count == 0]


def _meta_dict(meta) -> dict:
    if not isinstance(meta, dict):
        raise ValueError(f"its meta is {type(meta).__name__}, not a JSON object")
    return meta


_HANDLES: dict[str, object] = {}  # one handle per shard file per process: LMDB refuses a second open
_HANDLES_PID = [None]


def forget_handle(path: str) -> None:
    """Closes this process's handle of a shard file (one evicted from a cache: frees its disk space)."""
    h = _HANDLES.pop(os.path.realpath(path), None)
    if isinstance(h, _LmdbHandle):
        h.env.close()


def _shard_handle(path: str):
    """The checked handle of a shard; a damaged shard raises the same DamagedShard at every use."""
    if _HANDLES_PID[0] != os.getpid():  # a forked child must not reuse its parent's handles
        _HANDLES.clear()
        _HANDLES_PID[0] = os.getpid()
    h = _HANDLES.get(path)
    if h is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"shard missing: {path}")
        try:
            h = _LmdbHandle(path) if path.endswith(".lmdb") else _ArrowHandle(path)
        except DamagedShard as e:
            h = str(e)  # the message, not the exception: raising one instance again and again grows its traceback
        _HANDLES[path] = h
    if isinstance(h, str):
        raise DamagedShard(h)
    return h


class ShardReader:
    """Random access to stored videos by (shard, key); safe across fork (reopens per process).

    `identities` maps shard names to the identity the manifest recorded; a shard holding another is refused."""

    def __init__(self, shard_dir: str, identities: dict[str, str] | None = None):
        self.dir = shard_dir
        self.identities = identities or {}

    def open(self, shard: str):
        """The shard's handle; DamagedShard if it is truncated, unreadable or not the shard the manifest names."""
        path = os.path.join(self.dir, shard)
        h = _shard_handle(os.path.realpath(path))
        want = self.identities.get(shard)
        if want is not None and h.identity != want:
            raise DamagedShard(f"{path}: holds shard {h.identity} but the manifest names shard {want}: "
                               "the file comes from another prep run")
        return h

    def meta(self, shard: str, key: str) -> dict:
        return self.open(shard).meta(key)

    def frames(self, shard: str, key: str, indices, chunk_frames: int | None = None) -> list[bytes]:
        return self.open(shard).frames(key, indices, chunk_frames)

    def video(self, shard: str, key: str) -> bytes:
        return self.open(shard).video(key)


def read_shard_identity(path: str, name: str | None = None) -> str | None:
    """The identity a shard file holds, after the checks a reader makes (DamagedShard if it is truncated or
    unreadable); `name` says its kind where the path does not (a download under a temporary name)."""
    name = name or os.path.basename(path)
    if name.endswith(".lmdb"):
        return _LmdbShard.scan(path)[2]
    if name.endswith(".arrow"):
        check_arrow_footer(path)
        try:
            with pa.memory_map(path) as src:
                return _schema_identity(pa.ipc.open_file(src).schema)
        except (pa.ArrowException, OSError) as e:
            raise DamagedShard(f"{path}: not a readable Arrow shard ({e})") from None
    raise DamagedShard(f"{path}: not a shard file (.lmdb or .arrow)")
