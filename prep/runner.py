"""Run prep over a task list: parallel decode, one writer, resumable, rejects logged, manifest at the end.

Layout of OUT:
    prep.json                 the job's arguments; a re-run must match them (that is what makes resume safe)
    classes.json              class names, index = label
    shards/<part>-NNNN.lmdb   the data (or .arrow)
    parts/<part>.manifest.jsonl, parts/<part>.rejects.jsonl, parts/<part>.done
    manifest.jsonl            one row per stored video (written by merge, when every part is done)
    rejects.jsonl             every video that could not be used, and why
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass

from tqdm import tqdm

from .decode import DecodeOptions, Decoded, decode_video
from .store import ShardWriter
from .tasks import Task

log = logging.getLogger("prep")
MANIFEST_KEYS = ("id", "split", "label", "label_name", "num_frames", "fps", "orig_size", "size",
                 "shard", "checksum", "key", "store")


@dataclass(frozen=True)
class JobOptions:
    fmt: str = "lmdb"
    shard_bytes: int = 1 << 30
    workers: int = 1
    part: tuple[int, int] = (0, 1)
    progress: bool = True


def parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--part {text}: need 0 <= I < N")
    return i, n


def part_tag(part: tuple[int, int]) -> str:
    return f"part{part[0]:03d}of{part[1]:03d}"


def run_prep(tasks: list[Task], classes: list[str], out: str, decode: DecodeOptions, job: JobOptions) -> dict:
    """Preps this part's share of `tasks` into `out`; merges when the job has a single part."""
    os.makedirs(os.path.join(out, "parts"), exist_ok=True)
    _check_or_write_job(out, tasks, classes, decode, job)
    mine = tasks[job.part[0]::job.part[1]]
    tag = part_tag(job.part)
    writer = ShardWriter(os.path.join(out, "shards"), tag, job.fmt, job.shard_bytes)
    rejects = RejectLog(os.path.join(out, "parts", f"{tag}.rejects.jsonl"))
    todo = [t for t in mine if t.key not in writer.done and t.key not in rejects.keys]
    for t in [t for t in todo if t.reject]:
        rejects.add(t, t.reject)
    todo = [t for t in todo if not t.reject]
    stats = _decode_all(todo, writer, rejects, decode, job, already=len(mine) - len(todo))
    writer.close()
    rows = [manifest_row(writer.done[t.key], t, decode.store) for t in mine if t.key in writer.done]
    _write_jsonl_atomic(os.path.join(out, "parts", f"{tag}.manifest.jsonl"), rows)
    open(os.path.join(out, "parts", f"{tag}.done"), "w").close()
    summary = {"part": tag, "stored": len(rows), "rejected": len(rejects.keys), **stats}
    if job.part[1] == 1:
        summary["merged"] = merge(out)
    return summary


def _decode_all(todo, writer, rejects, decode, job, already) -> dict:
    bar = tqdm(total=len(todo) + already, initial=already, unit="video", desc="prep",
               disable=not job.progress, dynamic_ncols=True)
    frames = done = 0
    start = time.time()
    results = _results(todo, decode, job.workers)
    delay = float(os.environ.get("VIDKIT_PREP_DELAY", 0))  # tests: slow the writer so a kill lands mid-run
    try:
        for task, result in results:
            time.sleep(delay)
            if isinstance(result, Decoded):
                meta = dict(result.meta, id=task.id, split=task.split, label=task.label, label_name=task.label_name)
                writer.add(task.key, meta, frames=result.frames, video=result.video)
                frames += result.meta["num_frames"]
                for note in result.notes:
                    log.warning("%s: %s", task.id, note)
            else:
                rejects.add(task, result.reason)
            done += 1
            dt = max(time.time() - start, 1e-6)
            bar.set_postfix(videos_s=f"{done / dt:.1f}", frames_s=f"{frames / dt:.0f}", rejects=len(rejects.keys))
            bar.update(1)
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()
    elapsed = time.time() - start
    return {"decoded_now": done, "frames_now": frames, "seconds": round(elapsed, 2),
            "frames_per_s": round(frames / elapsed, 1) if elapsed > 0 else 0.0}


def _results(todo: list[Task], decode: DecodeOptions, workers: int):
    if workers <= 1:
        return ((t, decode_video(t.path, decode)) for t in todo)
    return _pool_results(todo, decode, workers)


def _pool_results(todo, decode, workers):
    threads = max(1, (os.cpu_count() or 1) // workers)
    decode = DecodeOptions(**{**asdict(decode), "threads": threads})
    with mp.get_context("fork").Pool(workers) as pool:
        # unordered: a slow video must not hold back the writer; the manifest is sorted later
        yield from pool.imap_unordered(_decode_task, [(t, decode) for t in todo], chunksize=1)


def _decode_task(args):
    task, decode = args
    return task, decode_video(task.path, decode)


def manifest_row(meta: dict, task: Task, store: str) -> dict:
    row = {k: meta.get(k) for k in MANIFEST_KEYS}
    row.update(id=task.id, split=task.split, label=task.label, label_name=task.label_name, store=store)
    if "codec" in meta:
        row["codec"] = meta["codec"]
    return row


class RejectLog:
    """Append-only JSON lines, fsynced per line; a half-written last line from a kill is dropped."""

    def __init__(self, path: str):
        self.path = path
        self.keys: set[str] = set()
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) != len(data):
                with open(path, "wb") as f:
                    f.write(whole)
            self.keys = {json.loads(line)["key"] for line in whole.splitlines() if line.strip()}

    def add(self, task: Task, reason: str) -> None:
        row = {"id": task.id, "path": task.path, "split": task.split, "reason": reason, "key": task.key}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.keys.add(task.key)
        log.info("rejected %s: %s", task.id, reason)


def _job_signature(tasks, classes, decode: DecodeOptions, job: JobOptions) -> dict:
    digest = hashlib.sha1()
    for t in tasks:
        digest.update(f"{t.key}\t{t.id}\t{t.path}\t{t.split}\t{t.label}\n".encode())
    opts = {k: v for k, v in asdict(decode).items() if k != "threads"}
    return {"format": job.fmt, "decode": opts, "shard_bytes": job.shard_bytes, "parts": job.part[1],
            "tasks": len(tasks), "tasks_sha1": digest.hexdigest(), "classes": classes}


def _check_or_write_job(out, tasks, classes, decode, job) -> None:
    sig = _job_signature(tasks, classes, decode, job)
    path = os.path.join(out, "prep.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = sorted(k for k in sig if old.get(k) != sig[k])
        if diff:
            raise ValueError(f"{out} holds a prep run with other arguments ({', '.join(diff)} differ): "
                             "re-run with the same ones to resume, or use a new --out")
        return
    _write_json_atomic(path, sig)
    _write_json_atomic(os.path.join(out, "classes.json"), classes)


def merge(out: str) -> dict:
    """Joins the parts' manifests and rejects into OUT/manifest.jsonl and OUT/rejects.jsonl."""
    with open(os.path.join(out, "prep.json")) as f:
        job = json.load(f)
    tags = [part_tag((i, job["parts"])) for i in range(job["parts"])]
    missing = [t for t in tags if not os.path.exists(os.path.join(out, "parts", f"{t}.done"))]
    if missing:
        raise ValueError(f"cannot merge {out}: unfinished parts {', '.join(missing)}")
    rows = [r for t in tags for r in read_jsonl(os.path.join(out, "parts", f"{t}.manifest.jsonl"))]
    rejects = {r["key"]: r for t in tags for r in read_jsonl(os.path.join(out, "parts", f"{t}.rejects.jsonl"))}
    rows.sort(key=lambda r: r["key"])
    _write_jsonl_atomic(os.path.join(out, "manifest.jsonl"), rows)
    _write_jsonl_atomic(os.path.join(out, "rejects.jsonl"), sorted(rejects.values(), key=lambda r: r["key"]))
    counts = {}
    for r in rows:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    return {"videos": len(rows), "rejected": len(rejects), "per_split": counts}


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl_atomic(path: str, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_json_atomic(path: str, obj) -> None:
    _write_atomic(path, json.dumps(obj, indent=1))


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
