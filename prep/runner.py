"""Run prep over a task list: parallel decode, one writer, resumable, rejects logged, manifest at the end.

Layout of OUT:
    prep.json                 the job's arguments and its run identity; a re-run must match them (that is what
                              makes resume safe)
    classes.json              class names, index = label
    shards/<part>-NNNN.lmdb   the data (or .arrow)
    parts/<part>.lock         held by the process writing that part (one writer per part; parts run in parallel)
    parts/<part>.manifest.jsonl, parts/<part>.rejects.jsonl, parts/<part>.done
    parts/<part>.spool/       frames on their way from the decode workers to the shard (emptied at every start)
    manifest.jsonl            one row per stored video (written by merge, when every part is done)
    rejects.jsonl             every video that could not be used, and why
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass

from tqdm import tqdm

from .decode import decode_video, keep_frame_buffers
from .decoded import DecodeOptions, Decoded
from .guard import PrepFailed, PrepInterrupted, exclusive, quiet_worker, signals_blocked, stop_on_signals
from .jsonl import read_jsonl
from .outputs import atomic_write, check_writable, refuse_input_as_output, write_text
from .store import DEFAULT_CHUNK_BYTES, ShardWriter, disk_guard
from .tasks import Task

log = logging.getLogger("prep")
MANIFEST_KEYS = ("id", "split", "label", "label_name", "num_frames", "fps", "orig_size", "size",
                 "shard", "shard_id", "checksum", "key", "store")


OUT_FILES = ("prep.json", "classes.json", "manifest.jsonl", "rejects.jsonl")  # what a run writes at OUT's top


def check_out(out: str, inputs: list[tuple[str, str]]) -> None:
    """Before anything is written: OUT can be written, and no input file ((option, path) pairs: a list, class list,
    subset file) is one of the files prep writes in OUT, which would replace it. One line each."""
    check_writable(out, "--out")
    refuse_input_as_output([("--out", os.path.join(out, name)) for name in OUT_FILES], inputs)


class NothingStored(PrepFailed):
    """Every video of the run was rejected."""


@dataclass(frozen=True)
class JobOptions:
    fmt: str = "lmdb"
    shard_bytes: int = 1 << 30
    workers: int = 1
    part: tuple[int, int] = (0, 1)
    progress: bool = True
    chunk_bytes: int = DEFAULT_CHUNK_BYTES  # a longer video's frames are committed in pieces of about this size
    dataset: str = ""  # the preset's name (ssv2, kinetics400, ...): prep.json records it for `make train DATA=...`
    run: str = ""  # the run identity a new prep.json takes (parts on several machines agree on one); "": a new one


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


def part_lock(out: str, part: tuple[int, int]):
    """The exclusive lock of one part of OUT (of all of it for a single-part job); re-entrant in one process."""
    what = str(out) if part[1] == 1 else f"part {part[0]}/{part[1]} of {out}"
    return exclusive(os.path.join(out, "parts", f"{part_tag(part)}.lock"), what)


def run_prep(tasks: list[Task], classes: list[str], out: str, decode: DecodeOptions, job: JobOptions) -> dict:
    """Preps this part's share of `tasks` into `out`; merges when the job has a single part."""
    os.makedirs(os.path.join(out, "parts"), exist_ok=True)
    with part_lock(out, job.part), stop_on_signals():
        run = _check_or_write_job(out, tasks, classes, decode, job)
        summary = _run_part(tasks[job.part[0]::job.part[1]], out, run, decode, job)
        if job.part[1] == 1:
            summary["merged"] = merge(out)
        if summary["stored"] == 0 and summary["rejected"]:
            raise NothingStored(_nothing_stored(out, job.part, summary["rejected"]))
    return summary


def _run_part(mine: list[Task], out: str, run: str | None, decode: DecodeOptions, job: JobOptions) -> dict:
    tag = part_tag(job.part)
    writer = ShardWriter(os.path.join(out, "shards"), tag, job.fmt, job.shard_bytes, run, job.chunk_bytes)
    rejects = RejectLog(os.path.join(out, "parts", f"{tag}.rejects.jsonl"))
    todo = [t for t in mine if t.key not in writer.done and t.key not in rejects.keys]
    for t in [t for t in todo if t.reject]:
        rejects.add(t, t.reject)
    todo = [t for t in todo if not t.reject]
    spool = os.path.join(out, "parts", f"{tag}.spool")
    shutil.rmtree(spool, ignore_errors=True)  # what a killed run left on its way to a shard
    os.makedirs(spool)
    try:
        stats = _decode_all(todo, writer, rejects, decode, job, already=len(mine) - len(todo), spool=spool)
        writer.close()
    except BaseException as e:
        writer.abort()
        if isinstance(e, PrepInterrupted):
            e.progress = f" with {sum(t.key in writer.done for t in mine)} of {len(mine)} videos stored"
        raise
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    rows = [manifest_row(writer.done[t.key], t, decode.store) for t in mine if t.key in writer.done]
    _write_jsonl_atomic(os.path.join(out, "parts", f"{tag}.manifest.jsonl"), rows)
    open(os.path.join(out, "parts", f"{tag}.done"), "w").close()
    return {"part": tag, "stored": len(rows), "rejected": len(rejects.keys), **stats}


def rejects_path(out: str, part: tuple[int, int]) -> str:
    """The rejects file of a part: the merged OUT/rejects.jsonl for a job of one part."""
    return os.path.join(out, "rejects.jsonl" if part[1] == 1 else os.path.join("parts", f"{part_tag(part)}.rejects.jsonl"))


def rejects_report(out: str, part: tuple[int, int], stored: int, rejected: int, max_percent: float,
                   first: int = 5) -> tuple[list[str], bool]:
    """(lines for the user, whether the rejected share is within `max_percent`): the rejected count and share, the
    `first` rejected videos (in input order) with their reasons, and the file that lists them all."""
    if not rejected:
        return [], True
    path = rejects_path(out, part)
    rows = read_jsonl(path)
    share = 100 * rejected / max(stored + rejected, 1)
    shown = f"; the first {first}" if len(rows) > first else ""
    lines = [f"prep: {rejected} of {stored + rejected} videos rejected ({share:.3g}%){shown}:"]
    lines += [f"  {r['path']}: {r['reason']}" for r in rows[:first]]
    lines.append(f"  all {len(rows)} with their reasons: {path}")
    if share > max_percent:
        lines.append(f"prep: error: {share:.3g}% of the videos rejected, more than --max-rejected {max_percent:g}%: "
                     "fix the videos or lists above, or raise --max-rejected (the store holds the others)")
    return lines, share <= max_percent


def _nothing_stored(out: str, part: tuple[int, int], rejected: int) -> str:
    """One line: how many were rejected for what, and a hint when the cause is plain."""
    name = os.path.relpath(rejects_path(out, part), out)
    reasons = [r["reason"] for r in read_jsonl(os.path.join(out, name))]
    kinds = Counter(_reason_kind(r) for r in reasons).most_common()
    said = ", ".join(f"{n} {kind}" for kind, n in kinds[:3])
    if len(kinds) > 3:
        said += f", {sum(n for _, n in kinds[3:])} other"
    hint = " — is --root the folder that holds the videos?" if kinds[0][0] == "missing file" else ""
    return f"nothing stored: {rejected} of {rejected} rejected: {said}{hint} (see {os.path.join(out, name)})"


def _reason_kind(reason: str) -> str:
    """A reason without its particulars: 'unreadable: moov atom not found' -> 'unreadable'."""
    return re.sub(r"\d+", "N", re.split(r"[:(;'\"]", reason, maxsplit=1)[0]).strip()


def _decode_all(todo, writer, rejects, decode, job, already, spool) -> dict:
    bar = tqdm(total=len(todo) + already, initial=already, unit="video", desc="prep",
               disable=not job.progress, dynamic_ncols=True)
    frames = done = 0
    start = time.time()
    results = _results(todo, decode, job.workers, spool)
    delay = float(os.environ.get("VIDKIT_PREP_DELAY", 0))  # tests: slow the writer so a kill lands mid-run
    try:
        for task, result in results:
            time.sleep(delay)
            if isinstance(result, Decoded):
                _store(writer, task, result)
                frames += result.meta["num_frames"]
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


def _store(writer: ShardWriter, task: Task, result: Decoded) -> None:
    meta = dict(result.meta, id=task.id, split=task.split, label=task.label, label_name=task.label_name)
    try:
        writer.add(task.key, meta, frames=result.spool, video=result.video)
    finally:
        if result.spool is not None:
            result.spool.discard()
    for note in result.notes:
        log.warning("%s: %s", task.id, note)


def _results(todo: list[Task], decode: DecodeOptions, workers: int, spool: str):
    if workers <= 1:
        keep_frame_buffers()
        return ((t, decode_video(t.path, decode, spool)) for t in todo)
    return _pool_results(todo, decode, workers, spool)


def _pool_results(todo, decode, workers, spool):
    threads = max(1, (os.cpu_count() or 1) // workers)
    decode = DecodeOptions(**{**asdict(decode), "threads": threads})
    pool = None
    try:  # leaving it (done, error or interrupt) terminates the workers
        with signals_blocked():
            pool = mp.get_context("fork").Pool(workers, initializer=_worker_init)
        # a stop signal that came while the pool started is delivered here, as the mask is restored: already
        # inside the try, so the workers are terminated and not left orphaned
        # unordered: a slow video must not hold back the writer; the manifest is sorted later
        yield from pool.imap_unordered(_decode_task, [(t, decode, spool) for t in todo], chunksize=1)
    finally:
        if pool is not None:
            pool.terminate()


def _worker_init() -> None:
    quiet_worker()
    keep_frame_buffers()


def _decode_task(args):
    task, decode, spool = args
    return task, decode_video(task.path, decode, spool)


def manifest_row(meta: dict, task: Task, store: str) -> dict:
    row = {k: meta.get(k) for k in MANIFEST_KEYS}
    row.update(id=task.id, split=task.split, label=task.label, label_name=task.label_name, store=store)
    for optional in ("codec", "profile", "pix_fmt", "bit_depth", "reencoded_from", "gop", "chunk_frames"):
        if optional in meta:
            row[optional] = meta[optional]
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
                with disk_guard(path), atomic_write(path, "wb") as f:
                    f.write(whole)
            self.keys = {json.loads(line)["key"] for line in whole.splitlines() if line.strip()}

    def add(self, task: Task, reason: str) -> None:
        row = {"id": task.id, "path": task.path, "split": task.split, "reason": reason, "key": task.key}
        with disk_guard(self.path), open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.keys.add(task.key)
        log.info("rejected %s: %s", task.id, reason)


def _job_signature(tasks, classes, decode: DecodeOptions, job: JobOptions) -> dict:
    digest = hashlib.sha1()
    for t in tasks:
        digest.update(f"{t.key}\t{t.id}\t{t.path}\t{t.split}\t{t.label}\n".encode())
    # reencode only when set: a run prepped before the option existed resumes under the same signature; the JPEG
    # encoder, like threads, changes how frames are made, not what they are (size, quality, subsampling)
    opts = {k: v for k, v in asdict(decode).items() if k not in ("threads", "encoder") and (k != "reencode" or v)}
    return {"format": job.fmt, "decode": opts, "shard_bytes": job.shard_bytes, "parts": job.part[1],
            "tasks": len(tasks), "tasks_sha1": digest.hexdigest(), "classes": classes}


def _check_or_write_job(out, tasks, classes, decode, job) -> str | None:
    """The run's identity: made by the first part to start (parts may start at once), read back by the others."""
    sig = _job_signature(tasks, classes, decode, job)
    path = os.path.join(out, "prep.json")
    if not os.path.exists(path):
        _write_json_atomic(os.path.join(out, "classes.json"), classes)
        # the dataset's name is no argument of the job: a store resumes whichever preset named it
        ident = {"run": job.run or uuid.uuid4().hex[:12], **({"dataset": job.dataset} if job.dataset else {})}
        _write_atomic(path, json.dumps({**sig, **ident}, indent=1), exclusive=True)
    with open(path) as f:
        old = json.load(f)
    diff = sorted(k for k in sig if old.get(k) != sig[k])
    if diff:
        raise ValueError(f"{out} holds a prep run with other arguments ({', '.join(diff)} differ): "
                         "re-run with the same ones to resume, or use a new --out")
    return old.get("run")  # None: made before runs had identities


def merge(out: str) -> dict:
    """Joins the parts' manifests and rejects into OUT/manifest.jsonl and OUT/rejects.jsonl."""
    with open(os.path.join(out, "prep.json")) as f:
        job = json.load(f)
    parts = [(i, job["parts"]) for i in range(job["parts"])]
    tags = [part_tag(p) for p in parts]
    missing = [t for t in tags if not os.path.exists(os.path.join(out, "parts", f"{t}.done"))]
    if missing:
        raise ValueError(f"cannot merge {out}: unfinished parts {', '.join(missing)}")
    with ExitStack() as locks:  # no part may be re-run while its rows are read
        for p in parts:
            locks.enter_context(part_lock(out, p))
        rows = [r for t in tags for r in read_jsonl(os.path.join(out, "parts", f"{t}.manifest.jsonl"))]
        rejects = {r["key"]: r for t in tags for r in read_jsonl(os.path.join(out, "parts", f"{t}.rejects.jsonl"))}
        rows.sort(key=lambda r: r["key"])
        _write_jsonl_atomic(os.path.join(out, "manifest.jsonl"), rows)
        _write_jsonl_atomic(os.path.join(out, "rejects.jsonl"), sorted(rejects.values(), key=lambda r: r["key"]))
    counts = {}
    for r in rows:
        counts[r["split"]] = counts.get(r["split"], 0) + 1
    # the largest stored frame: the GPU JPEG decoder's preallocation hint (pipelines.resources.largest_frame)
    sizes = [r["size"] for r in rows if r.get("size")]
    largest = [max((s[0] for s in sizes), default=0), max((s[1] for s in sizes), default=0)]
    return {"videos": len(rows), "rejected": len(rejects), "per_split": counts, "max_size": largest}


def _write_jsonl_atomic(path: str, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_json_atomic(path: str, obj) -> None:
    _write_atomic(path, json.dumps(obj, indent=1))


def _write_atomic(path: str, text: str, exclusive: bool = False) -> None:
    """Whole or not at all; `exclusive`: only if `path` does not exist yet (another process's stays). The
    temporary name is per process: parts starting at once write prep.json side by side."""
    with disk_guard(path):
        write_text(path, text, exclusive=exclusive)
