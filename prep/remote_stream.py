"""Streaming an s3:// split: only the shards a node reads, fetched ahead of use and evicted after, so a split larger
than --cache-limit trains.

`open_dataset(url, split, stream=True)` downloads the manifest and the small files only; the dataset carries a
`ShardGate`, which every read passes (PreppedDataset.frames/video):
- in the process that opened the dataset (a training rank), a `Prefetcher` thread downloads the windows of shards
  the loader's plan names (pipelines/shard_plan.py), `ahead` windows past the one being read, and lets go of the
  windows read, which the cache then evicts when it needs room (prep/remote.py's LRU eviction, under its limit).
  The AWS SDK runs only in that thread of that process: it must not be used across fork, and DALI's parallel
  external source forks (or spawns) its workers, which only wait for a shard's `.ok` marker;
- in a worker, `ready(shard)` waits for the marker. A download that failed for good (the server down past the
  SDK's retries) is written to an error file the workers watch, and the loader raises it in the main process as one
  line naming the object and how to resume;
- a process that reads without a prefetcher (a direct read, a tool) downloads the shard itself, at first use.

A worker drops its handles of shards that were evicted since it read them, so that their disk space is freed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from .remote import (Cache, RemoteStoreError, TransientError, Wanted, attempts, hold_in_use, release_in_use,
                     split_rows)
from .store import forget_handle

log = logging.getLogger("prep.remote")
DOWN_LIMIT_ENV = "VIDKIT_S3_DOWN_LIMIT"  # seconds a server may stay silent before a streamed run stops
WAIT_S = 1800.0  # a worker's longest wait for one shard: past the SDK's retries of a download gone wrong
_POLL_S = 0.02
_ASK_POLL_S = 0.05  # how often an idle prefetcher looks for a worker's ask
# how often a reader looks for evicted shards among those it opened: a look stats every one of them, which on
# every read cost 0.7 ms of a 0.9 ms read (80 shards); the disk space of a shard evicted meanwhile is freed up
# to this much later
_SWEEP_S = 1.0
PARALLEL = 8  # downloads at once: each waits two round trips (HEAD, GET); python -m bench.remote --prefetch


class ShardGate:
    """What a reader of a streamed split needs: where its shards arrive and what each must be. Picklable (the
    prefetcher stays with the process that made it)."""

    def __init__(self, cache: Cache, wanted: list[Wanted]):
        self.url, self.root = cache.url, cache.root
        self.wanted = {w.name: w for w in wanted}
        self.owner = os.getpid()
        self.prefetcher: Prefetcher | None = None
        self._opened: set[str] = set()
        self._swept = 0.0

    def __getstate__(self):
        return {**self.__dict__, "prefetcher": None, "_opened": set(), "_swept": 0.0}

    @property
    def error_file(self) -> str:
        return os.path.join(self.root, "locks", f"feed-{self.owner}.error")

    def marker(self, shard: str) -> str:
        return os.path.join(self.root, "shards", shard + ".ok")

    @property
    def asks(self) -> str:
        """Where this rank's workers ask for a shard they wait for (the name of an empty file)."""
        return os.path.join(self.root, "locks", f"asks-{self.owner}")

    def ready(self, shard: str) -> None:
        """Returns once `shard` is in the cache."""
        if not os.path.exists(self.marker(shard)):
            if os.getpid() == self.owner and self.prefetcher is None:
                cache = Cache(self.url)
                hold_in_use(cache, shard)
                cache.ensure([self.wanted[shard]])
            else:
                self._wait(shard)
        self._forget_evicted(shard)

    def _wait(self, shard: str) -> None:
        """Waits for the prefetcher to bring `shard`, and asks it for the shard: DALI may read further ahead than
        the windows the loader tells the prefetcher (its queues' depths are the loader's estimate), and a worker
        waiting for a shard outside them waited for ever, the prefetcher idle."""
        if os.path.exists(self.marker(shard)):
            return
        ask = os.path.join(self.asks, shard)
        os.makedirs(self.asks, exist_ok=True)
        open(ask, "a").close()
        try:
            self._wait_marker(shard)
        finally:
            with contextlib.suppress(FileNotFoundError):  # another worker's wait for the same shard ended too
                os.remove(ask)

    def _wait_marker(self, shard: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not os.path.exists(self.marker(shard)):
            if os.path.exists(self.error_file):
                with open(self.error_file) as f:
                    raise RemoteStoreError(f.read().strip())
            if time.monotonic() > deadline:
                raise RemoteStoreError(f"{self.url}/shards/{shard} did not reach the cache {self.root} within "
                                       f"{WAIT_S:.0f} s: run the same command again to resume")
            time.sleep(_POLL_S)

    def _forget_evicted(self, shard: str) -> None:
        self._opened.add(shard)
        now = time.monotonic()
        if now - self._swept < _SWEEP_S:
            return
        self._swept = now
        for name in [n for n in self._opened if n != shard and not os.path.exists(self.marker(n))]:
            forget_handle(os.path.join(self.root, "shards", name))
            self._opened.discard(name)


class Prefetcher:
    """A thread that keeps the window being read and the next `ahead` windows in the cache, in use by this process,
    and lets go of the windows before. `windows`: the shard names of each window, in read order."""

    def __init__(self, gate: ShardGate, ahead: int = 1, parallel: int = PARALLEL):
        self.gate, self.ahead, self.parallel = gate, ahead, parallel
        self.cache = Cache(gate.url)
        self.error: RemoteStoreError | None = None
        self.fetched = self.fetched_bytes = 0  # downloads this process made
        self._windows: list[list[str]] = []
        self._current = self._reach = 0
        self._held: set[str] = set()
        self._cached: set[str] = set()  # held shards known to be in the cache
        self._pending: dict[str, Future] = {}  # downloads in flight
        self._changed = threading.Condition()
        self._closed = False
        if os.path.exists(gate.error_file):
            os.remove(gate.error_file)
        shutil.rmtree(gate.asks, ignore_errors=True)  # a previous loader's in this process
        self._thread = threading.Thread(target=self._run, name="shard-prefetch", daemon=True)
        self._thread.start()

    def check_fits(self, windows: list[list[str]], reach: int) -> None:
        """One line before any work when the windows held at once do not fit the cache limit."""
        sizes = [sum(self.gate.wanted[s].size for s in w) for w in windows]
        span = reach + 1 + self.ahead
        need = max((sum(sizes[i:i + span]) for i in range(len(sizes))), default=0)
        if need > self.cache.limit:
            raise RemoteStoreError(f"{self.gate.url}: {span} windows of shards ({need / 2**30:.2f} GiB) must be in "
                                   f"the cache at once, more than its limit of {self.cache.limit / 2**30:.2f} GiB: "
                                   "raise --cache-limit or lower VIDKIT_SHUFFLE_WINDOW")

    def start(self, windows: list[list[str]], current: int = 0, reach: int = 0) -> None:
        """A new epoch: `windows` in read order; the reader is at window `current` and its queues may reach
        window `reach`."""
        self.check_fits(windows, reach - current)
        with self._changed:
            self._windows, self._current, self._reach = windows, current, reach
            self._changed.notify()

    def advance(self, current: int, reach: int) -> None:
        with self._changed:
            if (current, reach) != (self._current, self._reach):
                self._current, self._reach = current, reach
                self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=5)
        for shard in list(self._held):
            release_in_use(self.cache, shard)
        self._held.clear()

    def _wanted_now(self) -> tuple | None:
        """(shards to hold, in fetch order; the state they were computed from), None once closed."""
        with self._changed:
            return None if self._closed else self._wanted_locked()

    def _wanted_locked(self) -> tuple:
        """The shards a worker asked for first (it waits), then the windows' in read order."""
        asked = self._asked()
        keep = asked + [s for w in self._windows[self._current:self._reach + 1 + self.ahead] for s in w]
        return list(dict.fromkeys(keep)), (id(self._windows), self._current, self._reach, tuple(asked))

    def _asked(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.gate.asks) if n in self.gate.wanted)
        except FileNotFoundError:
            return []

    def _run(self) -> None:
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="shard-get")
        try:
            while (state := self._wanted_now()) is not None:
                keep, _ = state
                # read by this rank: the cache may evict it (one still downloading is let go of at the next turn)
                for shard in self._held - set(keep) - set(self._pending):
                    release_in_use(self.cache, shard)
                self._held &= set(keep) | set(self._pending)
                self._cached &= set(keep)
                if self._submit(pool, keep, state):
                    self._collect(return_when=ALL_COMPLETED)
                    with self._changed:
                        while not self._closed and self._wanted_locked() == state:
                            self._changed.wait(_ASK_POLL_S)  # a worker's ask comes as a file, not a notify
        except RemoteStoreError as e:
            self._fail(e)
        except Exception as e:  # noqa: BLE001 - a reader must not wait for ever on a thread that died
            self._fail(RemoteStoreError(f"{self.gate.url}: prefetching shards failed: {type(e).__name__}: {e}"))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pool: ThreadPoolExecutor, keep: list[str], state: tuple) -> bool:
        """Downloads `keep` in order, `parallel` at a time, each started as soon as one ends (a batch that waits for
        its slowest download leaves the others idle); False when the reader moved on meanwhile."""
        for shard in keep:
            if shard in self._cached or shard in self._pending:
                continue
            if self._wanted_now() != state:
                return False
            hold_in_use(self.cache, shard)
            self._held.add(shard)
            self._pending[shard] = pool.submit(self._fetch, shard)
            if len(self._pending) >= self.parallel:
                self._collect(return_when=FIRST_COMPLETED)
        return True

    def _collect(self, return_when: str) -> None:
        """Waits for downloads in flight; a download that failed for good raises here, in the prefetch thread."""
        done, _ = wait(self._pending.values(), return_when=return_when)
        for shard in [s for s, f in self._pending.items() if f in done]:
            fetched, size = self._pending.pop(shard).result()
            self.fetched += fetched
            self.fetched_bytes += size
            self._cached.add(shard)

    def _fetch(self, shard: str) -> tuple[int, int]:
        """Downloads the shard unless cached: (1, its size) if this process did, else (0, 0). A silent server is
        tried again with a doubling pause (from 0.5 s to 30 s) until VIDKIT_S3_DOWN_LIMIT seconds have passed
        (default 600)."""
        delay, deadline = 0.5, time.monotonic() + down_limit()
        wanted = self.gate.wanted[shard]
        while True:
            try:
                got = self.cache.ensure([wanted], check_limit=False, announce=False)["downloaded"]
                return got, wanted.size if got else 0
            except TransientError as e:
                if time.monotonic() + delay > deadline or self._closed:
                    raise TransientError(f"{e} (down for over {down_limit():g} s, {DOWN_LIMIT_ENV})") from None
                log.warning("%s: no answer from the server; trying again in %.1f s", self.gate.url, delay)
                time.sleep(delay)
                delay = min(2 * delay, 30.0)

    def _fail(self, e: RemoteStoreError) -> None:
        self.error = e
        log.error("%s", e)
        tmp = f"{self.gate.error_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{e} (then resume: the run continues exactly from its last checkpoint)\n")
        os.replace(tmp, self.gate.error_file)


def down_limit() -> float:
    return float(os.environ.get(DOWN_LIMIT_ENV, "600"))


def stream(url: str, split: str | None) -> tuple[str, ShardGate]:
    """The cache folder holding `url`'s metadata, and the gate its split's shards will pass."""
    cache = Cache(url)
    rows = split_rows(cache, url, split)
    attempts()  # a bad VIDKIT_S3_ATTEMPTS fails here, before any work
    return cache.root, ShardGate(cache, cache.wanted(rows))
