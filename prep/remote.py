"""Prepped stores on S3-compatible object storage: `s3://BUCKET/PREFIX` as --out of prep and --data of the readers.

Layout on the server: the local layout (prep.json, classes.json, shards/*, rejects.jsonl) plus objects.json (each
shard object's size and sha256), and manifest.jsonl, uploaded last: a reader never sees a store whose manifest
names objects that are not there yet.

Write: prep/remote_upload.py.

Read: whole-shard downloads into a bounded node-local cache, read by the existing LMDB/Arrow readers (the
measurements behind this choice: docs/benchmarks.md, "Stores on object storage"). Opening a split downloads the
manifest and classes, then every shard of the split's rows that is not cached yet; the dataset is then a plain local
PreppedDataset rooted in the cache, so no S3 request is made while training (none from forked workers either).
Each shard is checked before it enters the cache (its size and sha256 from objects.json, its identity from the
manifest); a bad object is refused with one line naming it and is never cached.

Concurrency on one node (ranks, several runs sharing --cache-dir): per shard a download lock (one download per
node; the others wait and find it cached) and a use lock, held shared by every process that reads the shard and
tried exclusively by eviction, which removes least recently used shards that nobody uses. Space is reserved
(posix_fallocate) under a cache-wide lock before a download starts, so concurrent downloads cannot overshoot the
limit together. A download goes to a temporary name and is renamed into place once checked.

The client is pyarrow's S3 filesystem (the AWS SDK): credentials the standard way (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws), the endpoint of an S3-compatible server from AWS_ENDPOINT_URL,
retries with backoff by the SDK's standard retry strategy (VIDKIT_S3_ATTEMPTS attempts per request, default 10:
about 100 s of a server that does not answer, the backoff growing to 20 s).
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow.fs as pafs

from .outputs import atomic_write
from .jsonl import read_jsonl
from .store import read_shard_identity

log = logging.getLogger("prep.remote")
SCHEME = "s3://"
METADATA_FILES = ("classes.json", "prep.json", "rejects.jsonl", "objects.json")  # the manifest comes last
CACHE_DIR_ENV, CACHE_LIMIT_ENV, ATTEMPTS_ENV = "VIDKIT_CACHE_DIR", "VIDKIT_CACHE_LIMIT", "VIDKIT_S3_ATTEMPTS"
DEFAULT_CACHE_LIMIT = 100 << 30
_BLOCK = 16 << 20
_DOWNLOAD_THREADS = 4


class RemoteStoreError(ValueError):
    """A store on object storage that cannot be used as asked: one line naming the object and what to do. A
    ValueError so that every entry point reports it as its one-line error."""


class TransientError(RemoteStoreError):
    """No answer from the server: worth trying again later (prep/remote_stream.py does, for a while)."""


def is_remote(path) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def split_url(url: str) -> tuple[str, str]:
    """s3://bucket/some/prefix -> ("bucket", "some/prefix")."""
    bucket, _, prefix = url[len(SCHEME):].strip("/").partition("/")
    if not bucket or not prefix:
        raise RemoteStoreError(f"{url}: an object-store location must look like s3://BUCKET/PREFIX")
    return bucket, prefix


# --------------------------------------------------------------------------- settings


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", str(text).strip().upper())
    if not m:
        raise ValueError(f"size must look like 100G, 500M or 1048576, got {text!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


class _CacheOption(argparse.Action):
    """Sets the environment as it parses: forked workers and torchrun's ranks then read the same cache, and an entry
    point needs no more than add_cache_args."""

    def __call__(self, parser, namespace, value, option_string=None):
        if self.dest == "cache_limit":
            try:
                parse_size(value)
            except ValueError as e:
                parser.error(f"{option_string}: {e}")
            os.environ[CACHE_LIMIT_ENV] = value
        else:
            value = os.path.abspath(value)
            os.environ[CACHE_DIR_ENV] = value
        setattr(namespace, self.dest, value)


def add_cache_args(p: argparse.ArgumentParser) -> None:
    """--cache-dir and --cache-limit of every entry point that reads or writes s3:// stores."""
    p.add_argument("--cache-dir", action=_CacheOption, default="", help=f"node-local cache of s3:// stores, shared "
                   f"by the processes of the node (default ${CACHE_DIR_ENV}, else $TMPDIR/vidkit-cache)")
    p.add_argument("--cache-limit", action=_CacheOption, default="", help=f"most bytes of shards the cache keeps, "
                   f"e.g. 200G; least recently used shards are evicted (default ${CACHE_LIMIT_ENV}, else 100G)")


def cache_dir() -> str:
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(tempfile.gettempdir(), "vidkit-cache")


def cache_limit() -> int:
    text = os.environ.get(CACHE_LIMIT_ENV, "")
    return parse_size(text) if text else DEFAULT_CACHE_LIMIT


def local_name(url: str) -> str:
    """A folder name for a store: readable, and unique per URL."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url[len(SCHEME):].strip("/"))[-60:]
    return f"{readable}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------- the client


_FS: dict[tuple, pafs.S3FileSystem] = {}  # per process (the AWS SDK must not be used across fork) and settings
_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", ATTEMPTS_ENV)


def filesystem() -> pafs.S3FileSystem:
    key = (os.getpid(), *(os.environ.get(k) for k in _CLIENT_ENV))
    fs = _FS.get(key)
    if fs is None:
        kwargs = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts()),
                  "connect_timeout": 10, "request_timeout": 120}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # pyarrow does not read it itself
            kwargs["endpoint_override"] = endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        _FS.clear()
        fs = _FS[key] = pafs.S3FileSystem(**kwargs)
    return fs


def attempts() -> int:
    return max(1, int(os.environ.get(ATTEMPTS_ENV, "10")))


def explain(e: BaseException, what: str) -> RemoteStoreError:
    """The SDK's error as one line naming the object and what to do."""
    text = str(e)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    if re.search(r"ACCESS_DENIED|InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|403", text):
        return RemoteStoreError(f"{what}: access denied by {endpoint}: check the credentials (AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE) and their rights on the bucket")
    if re.search(r"NETWORK_CONNECTION|curlCode|Couldn't connect|Could not resolve|timed out|SERVICE_UNAVAILABLE",
                 text):
        n = attempts()
        return TransientError(f"{what}: no answer from {endpoint} after {n} attempt{'s' * (n != 1)} with backoff "
                                f"({text.split(';')[0].split(': ')[-1]}): run the same command again once the "
                                "server is back")
    if re.search(r"HTTP status 5\d\d|INTERNAL_FAILURE|SLOW_DOWN", text):  # a server starting up or overloaded
        return TransientError(f"{what}: {endpoint} answers with a server error ({text.splitlines()[0][-120:]}): "
                              "run the same command again once the server is back")
    if re.search(r"NO_SUCH_BUCKET|NoSuchBucket", text):
        return RemoteStoreError(f"{what}: no such bucket on {endpoint}")
    return RemoteStoreError(f"{what}: {text.splitlines()[0]}")


@contextmanager
def translated(what: str):
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as e:
        raise explain(e, what) from None


def object_info(key: str, url: str) -> pafs.FileInfo:
    with translated(url):
        return filesystem().get_file_info(key)


def etag(key: str, url: str) -> str:
    with translated(url), filesystem().open_input_file(key) as f:  # a HEAD request
        return (f.metadata().get("ETag") or b"").decode()


# --------------------------------------------------------------------------- locks


def _lock(path: str, mode: int) -> int | None:
    """An fcntl lock on `path` (made if need be): the fd, or None when LOCK_NB finds it held."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextmanager
def _locked(path: str):
    fd = _lock(path, fcntl.LOCK_EX)
    try:
        yield
    finally:
        _unlock(fd)


_IN_USE: dict[str, int] = {}  # use-lock path -> fd held shared for the life of the process (and its forks)


def _hold_in_use(path: str) -> None:
    if path not in _IN_USE:
        _IN_USE[path] = _lock(path, fcntl.LOCK_SH)


def hold_in_use(cache: "Cache", shard: str) -> None:
    """Marks a shard as read by this process: no eviction removes it until release_in_use."""
    _hold_in_use(os.path.join(cache.locks, shard + ".use"))


def release_in_use(cache: "Cache", shard: str) -> None:
    fd = _IN_USE.pop(os.path.join(cache.locks, shard + ".use"), None)
    if fd is not None:
        _unlock(fd)  # LOCK_UN: also for forked children sharing the descriptor


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class Wanted:
    """A shard object as the store describes it: its size, and its sha256 and identity where recorded."""
    name: str
    size: int
    sha256: str | None
    shard_id: str | None


class Cache:
    """One store's files in the node's cache: <cache>/stores/<name>/{manifest.jsonl, ..., shards/}."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.bucket, self.prefix = split_url(self.url)
        self.top = cache_dir()
        self.root = os.path.join(self.top, "stores", local_name(self.url))
        self.shards = os.path.join(self.root, "shards")
        self.locks = os.path.join(self.root, "locks")
        self.limit = cache_limit()

    def key(self, rel: str) -> str:
        return f"{self.bucket}/{self.prefix}/{rel}"

    def obj(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def fetch_metadata(self) -> list[dict]:
        """Downloads the manifest and the small files; the manifest's rows. Fails before any other work."""
        os.makedirs(self.shards, exist_ok=True)
        with translated(self.url):
            info = filesystem().get_file_info(self.key("manifest.jsonl"))
        if info.type != pafs.FileType.File:
            raise RemoteStoreError(f"{self.url} is not a prepped dataset (no manifest.jsonl: an unfinished prep, or "
                                   "a wrong prefix)")
        for rel in METADATA_FILES + ("manifest.jsonl",):
            dest = os.path.join(self.root, rel)
            try:
                self._download_small(rel, dest)
            except FileNotFoundError:
                if rel == "classes.json":
                    raise RemoteStoreError(f"{self.obj(rel)} is missing: the store is incomplete") from None
                if os.path.exists(dest):
                    os.remove(dest)  # from an earlier version of the store
        return read_jsonl(os.path.join(self.root, "manifest.jsonl"))

    def _download_small(self, rel: str, dest: str) -> None:
        tmp = f"{dest}.{os.getpid()}.tmp"
        try:
            with translated(self.obj(rel)), filesystem().open_input_stream(self.key(rel)) as src, \
                    open(tmp, "wb") as f:
                f.write(src.read())
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def wanted(self, rows: list[dict]) -> list[Wanted]:
        """The shards of `rows`, with what each must be."""
        names = sorted({r["shard"] for r in rows})
        ids = {r["shard"]: r.get("shard_id") for r in rows}
        index_path = os.path.join(self.root, "objects.json")
        if os.path.exists(index_path):
            with open(index_path) as f:
                index = json.load(f)
        else:  # a store copied up by other means: sizes from the server, identities from the manifest
            with translated(self.url):
                infos = filesystem().get_file_info(pafs.FileSelector(self.key("shards")))
            index = {f"shards/{os.path.basename(i.path)}": {"size": i.size} for i in infos}
        missing = [n for n in names if f"shards/{n}" not in index]
        if missing:
            raise RemoteStoreError(f"{self.obj('shards/' + missing[0])} is missing ({len(missing)} shard objects "
                                   "named by the manifest are): the store is incomplete")
        return [Wanted(n, index[f"shards/{n}"]["size"], index[f"shards/{n}"].get("sha256"), ids[n]) for n in names]

    def ensure(self, wanted: list[Wanted], check_limit: bool = True, announce: bool = True) -> dict:
        """Every wanted shard in the cache, checked; held in use by this process so that no eviction removes it.
        `check_limit`: refuse up front a set of shards larger than the cache limit (a streamed split checks its
        windows instead, prep/remote_stream.py)."""
        need = sum(w.size for w in wanted)
        if check_limit and need > self.limit:
            raise RemoteStoreError(f"{self.url}: the shards of this split take {need / 2**30:.2f} GiB, more than the "
                                   f"cache limit of {self.limit / 2**30:.2f} GiB: raise --cache-limit")
        for w in wanted:
            _hold_in_use(os.path.join(self.locks, w.name + ".use"))
        todo = [w for w in wanted if not self._cached(w)]
        random.Random(os.getpid()).shuffle(todo)  # the ranks of a node start on different shards, in parallel
        start, fetched = time.time(), 0
        if todo:
            (log.warning if announce else log.debug)("%s: downloading %d of %d shards (%.2f GiB) into %s", self.url,
                                                     len(todo), len(wanted), sum(w.size for w in todo) / 2**30,
                                                     self.root)
            with ThreadPoolExecutor(min(_DOWNLOAD_THREADS, len(todo))) as pool:
                fetched = sum(pool.map(self._fetch, todo))
        return {"shards": len(wanted), "downloaded": fetched, "seconds": round(time.time() - start, 3)}

    def _marker(self, name: str) -> str:
        return os.path.join(self.shards, name + ".ok")

    def _cached(self, w: Wanted) -> bool:
        path = os.path.join(self.shards, w.name)
        try:
            with open(self._marker(w.name)) as f:
                mark = json.load(f)
            ok = os.path.getsize(path) == w.size and mark == {"size": w.size, "sha256": w.sha256,
                                                              "shard_id": w.shard_id}
        except (OSError, ValueError):
            return False
        if ok:
            os.utime(path)  # least recently used goes first
        return ok

    def _fetch(self, w: Wanted) -> int:
        """Downloads one shard unless another process did meanwhile; 1 if this one did."""
        with _locked(os.path.join(self.locks, w.name + ".get")):
            if self._cached(w):
                return 0
            path = os.path.join(self.shards, w.name)
            for stale in glob.glob(glob.escape(path) + ".*.part"):  # a killed download's (we hold its lock)
                os.remove(stale)
            tmp = f"{path}.{os.getpid()}.part"
            try:
                with _locked(os.path.join(self.top, "space.lock")):
                    make_room(self.top, w.size)
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    try:
                        os.posix_fallocate(fd, 0, max(1, w.size))
                    except OSError as e:
                        os.close(fd)
                        raise RemoteStoreError(f"cannot cache {self.obj('shards/' + w.name)} in {self.top}: "
                                               f"{os.strerror(e.errno)}: free some space or lower --cache-limit "
                                               "below what the disk holds") from None
                size, sha256 = self._download_into(fd, w)
                self._check(tmp, w, size, sha256)
                # under the space lock: make_room's walk of the cache must not see the download vanish (.part gone,
                # the shard not listed yet) and count neither
                with _locked(os.path.join(self.top, "space.lock")):
                    if os.path.exists(self._marker(w.name)):
                        os.remove(self._marker(w.name))  # no marker may vouch for the old file while it is replaced
                    os.replace(tmp, path)
                write_json(self._marker(w.name), {"size": w.size, "sha256": w.sha256, "shard_id": w.shard_id})
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        return 1

    def _download_into(self, fd: int, w: Wanted) -> tuple[int, str]:
        """Streams the object into `fd` (closed after); its size and sha256."""
        digest, size = hashlib.sha256(), 0
        what = self.obj(f"shards/{w.name}")
        try:
            with os.fdopen(fd, "wb") as f, translated(what), \
                    filesystem().open_input_stream(self.key(f"shards/{w.name}")) as src:
                while block := src.read(_BLOCK):
                    digest.update(block)
                    with self._cache_write(what):  # a full disk is this node's, not the server's: said so
                        f.write(block)
                    size += len(block)
                with self._cache_write(what):
                    f.truncate(size)
                    f.flush()
                    os.fsync(f.fileno())
        except FileNotFoundError:
            raise RemoteStoreError(f"{what} is missing: the store is incomplete") from None
        return size, digest.hexdigest()

    @contextmanager
    def _cache_write(self, what: str):
        """Writing the cache file failed (the disk full, over quota): one line naming the cache, not the server.
        The caller removes the partial file: it is never read."""
        try:
            yield
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise RemoteStoreError(f"cannot cache {what} in {self.top}: {why}: free some space, or lower "
                                   "--cache-limit below what the disk holds") from None

    def _check(self, tmp: str, w: Wanted, size: int, sha256: str) -> None:
        """Identity first (the clearest word for another run's shard), then the bytes."""
        what = self.obj(f"shards/{w.name}")
        try:
            identity = read_shard_identity(tmp, w.name)
        except Exception as e:  # noqa: BLE001 - whatever the readers make of it, the object is not the shard
            raise RemoteStoreError(f"{what} is not a readable shard ({e}): truncated or replaced on the server; "
                                   "prep it again") from None
        if w.shard_id and identity != w.shard_id:
            raise RemoteStoreError(f"{what} holds shard {identity} but the manifest names shard {w.shard_id}: "
                                   "the object comes from another prep run; prep the store again")
        if size != w.size:
            raise RemoteStoreError(f"{what} is {size} bytes, the store recorded {w.size}: truncated or replaced on "
                                   "the server; prep it again")
        if w.sha256 and sha256 != w.sha256:
            raise RemoteStoreError(f"{what}: its bytes differ from what prep uploaded (sha256): damaged or replaced "
                                   "on the server; prep it again")


def make_room(top: str, size: int) -> None:
    """Evicts least recently used shards nobody uses until `size` more bytes fit under the limit (the caller holds
    the cache-wide space lock). Partial downloads count at their reserved size."""
    limit = cache_limit()
    files = []
    for root, _, names in os.walk(os.path.join(top, "stores")):
        if os.path.basename(root) != "shards":
            continue
        for n in names:
            if n.endswith(".ok"):
                continue
            p = os.path.join(root, n)
            try:
                st = os.stat(p)
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_blocks * 512 if n.endswith(".part") else st.st_size, p))
    used = sum(f[1] for f in files)
    for _, fsize, path in sorted(f for f in files if not f[2].endswith(".part")):
        if used + size <= limit:
            break
        store_root = os.path.dirname(os.path.dirname(path))
        fd = _lock(os.path.join(store_root, "locks", os.path.basename(path) + ".use"), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            continue  # read by a running process
        try:
            for p in (path + ".ok", path):
                if os.path.exists(p):
                    os.remove(p)
            used -= fsize
        finally:
            _unlock(fd)
    if used + size > limit:
        raise RemoteStoreError(f"the cache {top} holds {used / 2**30:.2f} GiB of shards in use and cannot take "
                               f"{size / 2**30:.2f} GiB more under its limit of {limit / 2**30:.2f} GiB: raise "
                               "--cache-limit or use another --cache-dir")


def write_json(path: str, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f)


def metadata_root(url: str) -> str:
    """The local folder holding `url`'s manifest, classes.json and prep.json (downloaded now; no shards)."""
    cache = Cache(url)
    cache.fetch_metadata()
    return cache.root


_OPENED: dict[tuple[str, str | None], tuple[str, int]] = {}


def split_rows(cache: Cache, url: str, split: str | None) -> list[dict]:
    """The manifest rows of `split` (every row for None), the metadata fetched into the cache first."""
    rows = cache.fetch_metadata()
    if split is None:
        return rows
    splits = sorted({r["split"] for r in rows})
    if split not in splits:
        raise RemoteStoreError(f"{url} has no split {split!r} (it has {', '.join(splits)})")
    return [r for r in rows if r["split"] == split]


def materialize(url: str, split: str | None) -> str:
    """The local folder that holds `url`'s manifest and the shards of `split` (all of them for None), downloading
    what the cache lacks. A forked child (verify's workers, DataLoader workers) reuses its parent's: the AWS SDK
    must not be used across fork, and the parent has just checked everything."""
    done = _OPENED.get((url, split))
    if done is not None and done[1] != os.getpid():
        return done[0]
    cache = Cache(url)
    rows = split_rows(cache, url, split)
    cache.ensure(cache.wanted(rows))
    _OPENED[(url, split)] = (cache.root, os.getpid())
    return cache.root
