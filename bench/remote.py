"""`python -m bench.remote`: which way of reading a prepped store from S3 (docs/benchmarks.md, "Stores on object
storage"), measured on a local SeaweedFS server (bench/s3server.py) over loopback.

One synthetic store (Arrow shards, so that all three engines read the same bytes) is uploaded by
`prep --out s3://`; each engine then reads every video's frames twice, in a shuffled order (as training does):
  cache       whole-shard downloads into the node cache (prep/remote.py), read by the existing Arrow reader
  range       range reads of the Arrow shards through pyarrow's S3 filesystem (no local copy)
  webdataset  the same videos as WebDataset tar shards ("<key>.frames" members), streamed shard by shard (its order
              is shard order plus a shuffle buffer, not a free shuffle)
and the local folder as the yardstick. Loopback has no latency, so each engine's GET requests are counted too: at a
per-request latency L a sequential reader pays about requests x L more (the last column, at 20 ms).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
from contextlib import redirect_stdout

import pyarrow as pa
import pyarrow.fs as pafs

from bench import remote_epochs
from bench.s3server import LocalS3
from prep import PreppedDataset, open_dataset, remote, remote_upload
from prep.__main__ import main as prep_main
from prep.cli import POSITIVE_INT, add_debug_option, run_main
from prep.store import pack_frames, unpack_frames

BUCKET = "bench"
LATENCY_S = 0.020
TAR_BUFFER = 8 << 20  # unbuffered, pyarrow's S3 stream makes one GET per tarfile read of 512 bytes


class CountingFile:
    """A file-like view of a pyarrow S3 file that counts its reads (each is one ranged GET)."""

    def __init__(self, f):
        self.f, self.reads, self.bytes = f, 0, 0
        self.closed = False

    def read(self, n=-1):
        data = self.f.read(n)
        self.reads += 1
        self.bytes += len(data)
        return data

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)

    def tell(self):
        return self.f.tell()

    def size(self):
        return self.f.size()

    def readable(self):
        return True

    def seekable(self):
        return True

    def close(self):
        self.closed = True


def read_local(ds, order) -> int:
    n = 0
    for i in order:
        n += sum(len(b) for b in ds.frames(i, range(ds.rows[i]["num_frames"])))
    return n


def read_cache(url: str, order) -> tuple[int, dict]:
    """open_dataset(url) step by step, to count the downloads."""
    cache = remote.Cache(url)
    start = time.perf_counter()
    rows = cache.fetch_metadata()
    metadata_s = time.perf_counter() - start
    stats = cache.ensure(cache.wanted(rows))
    small = 1 + len(remote.METADATA_FILES) + 1  # the manifest's HEAD, the small files, the manifest
    return read_local(PreppedDataset(cache.root), order), {"requests": stats["downloaded"] + small,
                                                           "metadata_s": round(metadata_s, 3),
                                                           "shards_s": stats["seconds"]}


def read_range(url: str, rows: list[dict], order) -> tuple[int, dict]:
    fs, (bucket, prefix) = remote.filesystem(), remote.split_url(url)
    files, readers = {}, {}
    for shard in sorted({r["shard"] for r in rows}):
        files[shard] = CountingFile(fs.open_input_file(f"{bucket}/{prefix}/shards/{shard}"))
        reader = pa.ipc.open_file(pa.PythonFile(files[shard], mode="r"))
        names = [reader.get_batch(i).column("key")[0].as_py() for i in range(reader.num_record_batches)]
        readers[shard] = (reader, {n: i for i, n in enumerate(names)})
    opened = sum(f.reads for f in files.values())
    n = 0
    for i in order:
        reader, batch_of = readers[rows[i]["shard"]]
        values = reader.get_batch(batch_of[rows[i]["key"]]).column("frames")[0].values
        n += sum(len(values[j].as_py()) for j in range(len(values)))
    return n, {"requests": sum(f.reads for f in files.values()), "of_them_opening": opened}


def write_tars(ds, folder: str) -> list[str]:
    """The store's videos as WebDataset shards, one tar per Arrow shard, members in the shard's order."""
    paths = {}
    os.makedirs(folder, exist_ok=True)
    for i, row in enumerate(ds.rows):
        path = os.path.join(folder, row["shard"].replace(".arrow", ".tar"))
        with tarfile.open(path, "a") as tar:
            blob = pack_frames(ds.frames(i, range(row["num_frames"])))
            info = tarfile.TarInfo(f"{row['key']}.frames")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        paths[path] = True
    return list(paths)


def read_tars(url: str, names: list[str]) -> tuple[int, dict]:
    fs, (bucket, prefix) = remote.filesystem(), remote.split_url(url)
    n = gets = 0
    for name in random.sample(names, len(names)):
        key = f"{bucket}/{prefix}/wds/{name}"
        gets += -(-fs.get_file_info(key).size // TAR_BUFFER)  # each buffer fill is one ranged GET
        with fs.open_input_stream(key, buffer_size=TAR_BUFFER) as src, tarfile.open(fileobj=src, mode="r|") as tar:
            for member in tar:
                blob = tar.extractfile(member).read()
                count = int.from_bytes(blob[4:8], "little")
                n += sum(len(b) for b in unpack_frames(blob, range(count)))
    return n, {"requests": gets}


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def measure(videos: int, frames: int, size: int, shard_size: str) -> list[dict]:
    with LocalS3() as s3, tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        os.environ.update(s3.env)
        os.environ[remote.CACHE_DIR_ENV] = os.path.join(tmp, "cache")
        pafs.S3FileSystem(endpoint_override=s3.endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        url = f"s3://{BUCKET}/store"
        with redirect_stdout(io.StringIO()):
            assert prep_main(["synthetic", "--out", url, "--videos", str(videos), "--frames", str(frames),
                              "--size", str(size), "--format", "arrow", "--shard-size", shard_size,
                              "--no-progress"]) == 0
        local = open_dataset(remote_upload.staging_dir(url))
        order = random.Random(0).sample(range(len(local)), len(local))
        wds = write_tars(local, os.path.join(tmp, "wds"))
        for path in wds:
            remote_upload.upload_file(path, f"{BUCKET}/store/wds/{os.path.basename(path)}", path)
        results = []
        engines = {"local": lambda: (read_local(local, order), {"requests": 0}),
                   "cache": lambda: read_cache(url, order),
                   "range": lambda: read_range(url, local.rows, order),
                   "webdataset": lambda: read_tars(url, [os.path.basename(p) for p in wds])}
        for name, fn in engines.items():
            first, (nbytes, info) = timed(fn)
            second, (_, info2) = timed(fn)
            results.append({"engine": name, "videos": len(local), "MB": round(nbytes / 2**20, 1),
                            "first_s": round(first, 3), "second_s": round(second, 3),
                            "requests_first": info["requests"], "requests_second": info2["requests"],
                            **{f"{k}_first": v for k, v in info.items() if k.endswith("_s")}})
        shutil.rmtree(os.path.join(tmp, "cache"), ignore_errors=True)
        return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.remote", description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=POSITIVE_INT, default=200)
    p.add_argument("--frames", type=POSITIVE_INT, default=16)
    p.add_argument("--size", type=POSITIVE_INT, default=128)
    p.add_argument("--shard-size", default="4M")
    p.add_argument("--epochs", action="store_true", help="training epochs from S3 (streamed, 2 simulated nodes, "
                   "20 ms per request through a delaying proxy) against local disk: bench/remote_epochs.py")
    p.add_argument("--prefetch", action="store_true", help="the streaming prefetcher alone: shards per second with 4 "
                   "and with its default number of downloads at once, through the same proxy")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8)
    add_debug_option(p)
    args = p.parse_args(argv)
    if args.prefetch:
        rates = remote_epochs.prefetch_rates(args.videos, args.frames, args.size, args.shard_size, LATENCY_S)
        print(remote_epochs.prefetch_report(rates, LATENCY_S))
        return 0
    if args.epochs:
        out = remote_epochs.measure(args.videos, args.frames, args.size, args.shard_size, LATENCY_S, args.batch_size)
        print(remote_epochs.report(out, LATENCY_S))
        return 0
    results = measure(args.videos, args.frames, args.size, args.shard_size)
    local = results[0]
    print("| engine | first read s | second read s | GETs first / second | first / local | second / local | "
          "first at 20 ms per GET (est.) s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        est = r["first_s"] + r["requests_first"] * LATENCY_S
        print(f"| {r['engine']} | {r['first_s']:.3f} | {r['second_s']:.3f} | {r['requests_first']} / "
              f"{r['requests_second']} | {r['first_s'] / local['first_s']:.2f} | "
              f"{r['second_s'] / local['second_s']:.2f} | {est:.2f} |")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_main("bench.remote", main))
