"""`make bench-remote`: training epochs from the S3 store (streamed, pipelines/shard_plan.py) against the same store
on local disk, with 20 ms added to every request by a delaying TCP proxy on loopback, for 2 simulated nodes.

Each node (world size 2, one rank per node, its own cache dir) runs two epochs of the real DALI training loader
(CPU decode); the local store runs the same loader with EpochPlan. Bytes per node: what its prefetcher downloaded
against its share (the split's bytes / nodes). The last line is the one scripts read."""
from __future__ import annotations

import asyncio
import io
import os
import tempfile
import threading
import time
from contextlib import contextmanager, redirect_stdout

import pyarrow.fs as pafs

from bench.s3server import LocalS3
from prep import open_dataset, remote_upload
from prep.remote_stream import PARALLEL, Prefetcher
from prep.__main__ import main as prep_main

BUCKET = "bench"


class DelayProxy:
    """Forwards 127.0.0.1:port to `target`, holding every chunk a client sends (a request) for `delay` s."""

    def __init__(self, target_port: int, delay: float):
        self.target, self.delay, self.port = target_port, delay, 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _serve(self, ready):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _pipe(self, reader, writer, delay):
        try:
            while data := await reader.read(1 << 16):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _client(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            await asyncio.gather(self._pipe(reader, up_writer, self.delay), self._pipe(up_reader, writer, 0))
        except asyncio.CancelledError:  # close() ends the connections still open: not an error of the bench
            writer.close()

    def close(self):
        async def stop():
            tasks = asyncio.all_tasks(self.loop) - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.loop.call_soon(self.loop.stop)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)


@contextmanager
def _environ_kept():
    """The server's credentials and endpoint, the proxy's, the caches: set in os.environ for pyarrow's S3 client,
    which reads the process environment, and put back as they were after."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _prepped_on(s3, tmp: str, videos: int, frames: int, size: int, shard_size: str) -> str:
    """A synthetic store prepped onto the server (its staging copy stays in `tmp`'s cache)."""
    os.environ.update(s3.env)
    os.environ["VIDKIT_CACHE_DIR"] = os.path.join(tmp, "prep")
    pafs.S3FileSystem(endpoint_override=s3.endpoint, allow_bucket_creation=True).create_dir(BUCKET)
    url = f"s3://{BUCKET}/store"
    with redirect_stdout(io.StringIO()):
        assert prep_main(["synthetic", "--out", url, "--videos", str(videos), "--frames", str(frames), "--size",
                          str(size), "--shard-size", shard_size, "--no-progress"]) == 0
    return url


def _epochs(data, rank: int, batch: int) -> tuple[list[float], object]:
    from models.registry import InputContract
    from pipelines import build_loader

    loader = build_loader(data, "train", InputContract("NCTHW", num_frames=8, crop_size=112), batch_size=batch,
                          training=True, rank=rank, world_size=2, py_workers=2, num_threads=2, seed=0)
    rates = []
    for _ in range(2):
        start, clips = time.perf_counter(), 0
        for b in loader:
            clips += b["clips"].shape[0]
        rates.append(clips / (time.perf_counter() - start))
    return rates, loader


def measure(videos: int, frames: int, size: int, shard_size: str, delay: float, batch: int) -> dict:
    with _environ_kept(), LocalS3() as s3, tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        os.environ["LOCAL_WORLD_SIZE"] = "1"  # two nodes of one rank
        url = _prepped_on(s3, tmp, videos, frames, size, shard_size)
        local = open_dataset(remote_upload.staging_dir(url), "train")
        proxy = DelayProxy(int(s3.endpoint.rsplit(":", 1)[1]), delay)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
        out = {"local": [], "s3": [], "bytes": [], "share": 0}
        _epochs(local, 0, batch)  # warm-up (imports, DALI's first build): not counted on either side
        for rank in (0, 1):
            out["local"].append(_epochs(local, rank, batch)[0])
            os.environ["VIDKIT_CACHE_DIR"] = os.path.join(tmp, f"node{rank}")
            ds = open_dataset(url, "train", stream=True)
            rates, loader = _epochs(ds, rank, batch)
            out["s3"].append(rates)
            out["bytes"].append(loader.shard_feed.prefetcher.fetched_bytes)
            out["share"] = sum(w.size for w in ds.gate.wanted.values()) / 2
            loader.shard_feed.close()
        proxy.close()
        return out


def prefetch_rates(videos: int, frames: int, size: int, shard_size: str, delay: float,
                   parallels=(4, PARALLEL), rounds: int = 3) -> dict:
    """Shards per second the prefetcher alone downloads through the delaying proxy with `parallel` downloads at once:
    every shard of the split as windows of 4, the reader never moving; each round into an empty cache, the settings
    taking turns so that the machine's load falls on all of them."""
    rates = {p: [] for p in parallels}
    with _environ_kept(), LocalS3() as s3, tempfile.TemporaryDirectory(prefix="bench-prefetch-") as tmp:
        url = _prepped_on(s3, tmp, videos, frames, size, shard_size)
        proxy = DelayProxy(int(s3.endpoint.rsplit(":", 1)[1]), delay)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy.port}"
        for turn in range(rounds):
            for parallel in parallels:
                os.environ["VIDKIT_CACHE_DIR"] = os.path.join(tmp, f"cache-{turn}-{parallel}")
                gate = open_dataset(url, "train", stream=True).gate
                names = sorted(gate.wanted)
                prefetcher = Prefetcher(gate, ahead=len(names), parallel=parallel)
                start = time.perf_counter()
                prefetcher.start([names[i:i + 4] for i in range(0, len(names), 4)])
                while not all(os.path.exists(gate.marker(n)) for n in names) and prefetcher.error is None:
                    time.sleep(0.005)
                rates[parallel].append(len(names) / (time.perf_counter() - start))
                prefetcher.close()
        proxy.close()
    return rates


def prefetch_report(rates: dict, delay: float) -> str:
    base = min(rates)
    median = {p: sorted(r)[len(r) // 2] for p, r in rates.items()}
    for p, r in rates.items():
        print(f"{p} downloads at once: {', '.join(f'{x:.1f}' for x in r)} shards/s")
    return f"prefetch at {delay * 1000:.0f} ms: " + "; ".join(
        f"{p} at once {median[p]:.1f} shards/s ({median[p] / median[base]:.2f}x {base})" for p in rates)


def report(out: dict, delay: float) -> str:
    local = [sum(r[e] for r in out["local"]) / 2 for e in (0, 1)]
    s3 = [sum(r[e] for r in out["s3"]) / 2 for e in (0, 1)]
    for name, rates in (("local disk", local), (f"S3 at {delay * 1000:.0f} ms per request", s3)):
        print(f"{name}: {rates[0]:.1f} clips/s in the first epoch, {rates[1]:.1f} in the second (per node)")
    print(f"bytes fetched per node: {', '.join(str(b) for b in out['bytes'])}; share {out['share']:.0f}")
    ratio_b = max(out["bytes"]) / out["share"]
    return (f"first epoch at {delay * 1000:.0f} ms: {s3[0] / local[0]:.2f}x local; second epoch: "
            f"{s3[1] / local[1]:.2f}x local; bytes per node: {ratio_b:.2f}x its share")
