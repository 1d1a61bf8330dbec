"""Writing a prepped store to S3-compatible object storage: prep runs into a local staging folder (under the cache
dir, named for the destination; it survives an interrupted run, which resumes there), then uploads every object,
objects.json, and the manifest last, so a reader never sees a store whose manifest names objects that are not there.
An object already on the server with the size and ETag this machine recorded when it uploaded the same bytes
(sha256) is not sent again. The reading side and the client are in prep/remote.py.

`--part I/N` jobs on several machines write one prefix: each claims its part (prep/remote_claim.py), preps it in its
own staging folder, then uploads its shards and, after them, parts/<part>.{prep.json, manifest.jsonl,
rejects.jsonl, objects.json} and parts/<part>.done last. The job's run identity is agreed on by the first part to
start (parts/job.json). `python -m prep merge s3://...` joins the finished parts: the store's small files, then its
manifest.jsonl last; until then no reader sees a store.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import uuid
from contextlib import contextmanager

import pyarrow.fs as pafs

from . import remote_claim
from .guard import PrepInterrupted, stop_on_signals
from .remote import (METADATA_FILES, Cache, RemoteStoreError, cache_dir, etag, filesystem, local_name, object_info,
                     translated, write_json)
from .runner import merge, part_tag, read_jsonl

_BLOCK = 16 << 20
JOB_RECORD = "parts/job.json"  # {"run", "parts"} of a --part job, written by the first part to start


def staging_dir(url: str) -> str:
    return os.path.join(cache_dir(), "staging", local_name(url.rstrip("/")))


@contextmanager
def destination(url: str, part: tuple[int, int], take_over: bool = False):
    """Checks, before any work, that `url` can take this prep (credentials, no other run's store there, and this
    part's claim, held until the block ends); yields (the local staging folder prep writes into, kept across runs so
    that an interrupted prep resumes there; the job's run identity, agreed on by the parts, or "")."""
    url = url.rstrip("/")
    cache, staging = Cache(url), staging_dir(url)
    object_info(cache.key("prep.json"), url)  # the first request: wrong credentials stop here
    what = url if part[1] == 1 else f"part {part[0]}/{part[1]} of {url}"
    claim = remote_claim.acquire(url, part_tag(part), what, take_over)
    try:
        run = _check_single(cache, staging) if part[1] == 1 else _agree_run(cache, staging, part[1], take_over)
        os.makedirs(staging, exist_ok=True)
        yield staging, run
    finally:
        claim.release()


def _check_single(cache: Cache, staging: str) -> str:
    """A one-part prep: the prefix holds nothing, or this machine's staged run."""
    if _exists(cache, JOB_RECORD):
        job = _read_json(cache, JOB_RECORD)
        raise RemoteStoreError(f"{cache.url} holds a --part job of {job.get('parts')} parts: prep with the same "
                               "--part I/N, or use a new prefix")
    if _exists(cache, "prep.json"):
        _same_run(cache, staging, _read_json(cache, "prep.json").get("run"))
    return ""


def _agree_run(cache: Cache, staging: str, parts: int, take_over: bool) -> str:
    """The run identity of a --part job: the one on the server, else a new one this part records there."""
    claim = remote_claim.acquire(cache.url, "job", f"the job record of {cache.url}", take_over)
    try:
        if _exists(cache, JOB_RECORD):
            job = _read_json(cache, JOB_RECORD)
            if job.get("parts") != parts:
                raise RemoteStoreError(f"{cache.url} holds a --part job of {job.get('parts')} parts, not {parts}: "
                                       "use the same N, or a new prefix")
        elif _exists(cache, "prep.json"):
            raise RemoteStoreError(f"{cache.url} holds a store prepped in one part: use a new prefix for a --part job")
        else:
            job = {"run": _local_run(staging) or uuid.uuid4().hex[:12], "parts": parts}
            with translated(cache.obj(JOB_RECORD)), filesystem().open_output_stream(cache.key(JOB_RECORD)) as f:
                f.write(json.dumps(job).encode())
    finally:
        claim.release()
    _same_run(cache, staging, job["run"], fresh_ok=True)  # a machine that starts its first part adopts the job's run
    return job["run"]


def _same_run(cache: Cache, staging: str, theirs: str | None, fresh_ok: bool = False) -> None:
    ours = _local_run(staging)
    if ours != theirs and (ours or not fresh_ok):
        raise RemoteStoreError(f"{cache.url} holds another prep run ({theirs}) than the one staged on this machine "
                               f"({ours or 'none'} in {staging}): use a new prefix, or delete the old store first")


def _exists(cache: Cache, rel: str) -> bool:
    return object_info(cache.key(rel), cache.obj(rel)).type == pafs.FileType.File


def _read_json(cache: Cache, rel: str):
    with translated(cache.obj(rel)), filesystem().open_input_stream(cache.key(rel)) as f:
        return json.loads(f.read())


def _local_run(staging: str) -> str | None:
    try:
        with open(os.path.join(staging, "prep.json")) as f:
            return json.load(f).get("run")
    except (OSError, ValueError):
        return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _store_files(staging: str, part: tuple[int, int]) -> list[tuple[str, str]]:
    """What goes up, as (file in the staging folder, object under the prefix): closed shards (this part's), then the
    small files; objects.json and the manifest (or the part's done mark) last, apart."""
    shard_dir = os.path.join(staging, "shards")
    prefix = "" if part[1] == 1 else part_tag(part) + "-"
    shards = sorted(f"shards/{n}" for n in os.listdir(shard_dir)
                    if n.endswith((".lmdb", ".arrow")) and n.startswith(prefix))
    if part[1] == 1:
        small = [n for n in METADATA_FILES if n != "objects.json" and os.path.exists(os.path.join(staging, n))]
        return [(n, n) for n in shards + small]
    tag = f"parts/{part_tag(part)}"
    return [(n, n) for n in shards] + [("prep.json", f"{tag}.prep.json"), *(
        (f"{tag}.{n}", f"{tag}.{n}") for n in ("manifest.jsonl", "rejects.jsonl")
        if os.path.exists(os.path.join(staging, f"{tag}.{n}")))]


def upload_store(staging: str, url: str, part: tuple[int, int] = (0, 1)) -> dict:
    """Uploads a finished staging folder (of one part of a --part job): every object, objects.json, and the
    manifest (the part's done mark) last. An object the log of earlier uploads shows on the server with the same
    bytes (size, sha256, and the server's ETag) is not sent again."""
    url = url.rstrip("/")
    cache = Cache(url)
    single = part[1] == 1
    log_path = os.path.join(staging, "uploaded.json" if single else f"parts/{part_tag(part)}.uploaded.json")
    try:
        with open(log_path) as f:
            sent = json.load(f)
    except (OSError, ValueError):
        sent = {}
    index = "objects.json" if single else f"parts/{part_tag(part)}.objects.json"
    last = "manifest.jsonl" if single else f"parts/{part_tag(part)}.done"
    files = _store_files(staging, part) + [(index, index), (last, last)]
    upload = _Upload(cache, staging, sent, log_path, index)
    try:
        with stop_on_signals():
            for local, rel in files:
                upload.one(local, rel)
    except (KeyboardInterrupt, PrepInterrupted) as e:
        stop = e if isinstance(e, PrepInterrupted) else PrepInterrupted(signal.SIGINT)
        stop.progress = f" while uploading to {url} ({upload.counts['uploaded'] + upload.counts['skipped']} of " \
                        f"{len(files)} objects there; those are not sent again)"
        raise stop from None
    return {"url": url, **({} if single else {"part": part_tag(part)}), **upload.counts}


class _Upload:
    """Sends the files of a staging folder one by one, logging each in `log_path` (uploaded.json)."""

    def __init__(self, cache: Cache, staging: str, sent: dict, log_path: str, index: str):
        self.cache, self.staging, self.sent, self.log_path, self.index = cache, staging, sent, log_path, index
        self.objects: dict = {}
        self.counts = {"uploaded": 0, "skipped": 0, "bytes_uploaded": 0}

    def one(self, local: str, rel: str) -> None:
        """Uploads one file unless the server has it."""
        path = os.path.join(self.staging, local)
        if local == self.index:
            write_json(path, self.objects)
        elif local.endswith(".done") and not os.path.exists(path):
            raise RemoteStoreError(f"{path} is missing: the part did not finish; run the same command again")
        size, sha256 = os.path.getsize(path), _sha256(path)
        if rel.startswith("shards/"):
            self.objects[rel] = {"size": size, "sha256": sha256}
        if _already_there(self.cache, rel, self.sent.get(rel), size, sha256):
            self.counts["skipped"] += 1
            return
        upload_file(path, self.cache.key(rel), self.cache.obj(rel))
        self.sent[rel] = {"size": size, "sha256": sha256, "etag": etag(self.cache.key(rel), self.cache.obj(rel))}
        write_json(self.log_path, self.sent)
        self.counts["uploaded"] += 1
        self.counts["bytes_uploaded"] += size


def _already_there(cache: Cache, rel: str, record: dict | None, size: int, sha256: str) -> bool:
    if record is None or record.get("size") != size or record.get("sha256") != sha256:
        return False
    info = object_info(cache.key(rel), cache.obj(rel))
    return info.type == pafs.FileType.File and info.size == size and etag(cache.key(rel), cache.obj(rel)) == \
        record.get("etag")


def upload_file(path: str, key: str, what: str) -> None:
    """The object appears whole when the upload completes, or not at all."""
    with translated(what), open(path, "rb") as src, filesystem().open_output_stream(key) as dst:
        while block := src.read(_BLOCK):
            dst.write(block)


def merge_remote(url: str) -> dict:
    """`prep merge s3://...`: joins the finished parts of a --part job into the store (its small files, then the
    manifest last); refused in one line while a part is unfinished or being written, or when the parts disagree."""
    url = url.rstrip("/")
    cache = Cache(url)
    if not _exists(cache, JOB_RECORD):  # the first request: wrong credentials stop here
        why = "a store prepped in one part: nothing to merge" if _exists(cache, "manifest.jsonl") else \
            f"run its parts first with --part I/N --out {url}"
        raise RemoteStoreError(f"{url} holds no --part job ({why})")
    claim = remote_claim.acquire(url, "job", f"the job record of {url}")
    try:
        job = _read_json(cache, JOB_RECORD)
        parts = [(i, job["parts"]) for i in range(job["parts"])]
        missing = [part_tag(p) for p in parts if not _exists(cache, f"parts/{part_tag(p)}.done")]
        if missing:
            raise RemoteStoreError(f"cannot merge {url}: unfinished parts {', '.join(missing)}: run them (again) with "
                                   f"--part I/{job['parts']} --out {url}")
        for p in parts:
            for holder in remote_claim.current_claims(url, part_tag(p))[:1]:
                raise RemoteStoreError(f"cannot merge {url}: part {p[0]}/{p[1]} is being written by "
                                       f"{holder.get('host')} pid {holder.get('pid')} since {holder.get('since')}: "
                                       "merge once it has ended")
        os.makedirs(cache_dir(), exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="merge-", dir=cache_dir()) as tmp:
            objects = _gather_parts(cache, tmp, parts, job["run"])
            summary = merge(tmp)
            _publish(cache, tmp, objects, summary)
    finally:
        claim.release()
    return {"url": url, **summary}


def _gather_parts(cache: Cache, tmp: str, parts: list[tuple[int, int]], run: str) -> dict:
    """Lays the parts' records out in `tmp` as a local --part job (prep.json, parts/*) for runner.merge; checks that
    every part ran the same job; the parts' objects.json joined."""
    os.makedirs(os.path.join(tmp, "parts"))
    first, objects = None, {}
    for p in parts:
        tag = f"parts/{part_tag(p)}"
        job = _read_json(cache, f"{tag}.prep.json")
        first = first or (tag, job)
        diff = sorted(k for k in first[1].keys() | job.keys() if first[1].get(k) != job.get(k))
        if diff or job.get("run") != run:
            raise RemoteStoreError(f"cannot merge {cache.url}: {tag} was prepped with other arguments than "
                                   f"{first[0]} ({', '.join(diff or ['run'])} differ): prep it again as the others")
        objects.update(_read_json(cache, f"{tag}.objects.json"))
        for name in ("manifest.jsonl", "rejects.jsonl"):
            if _exists(cache, f"{tag}.{name}"):
                _download(cache, f"{tag}.{name}", os.path.join(tmp, f"{tag}.{name}"))
        open(os.path.join(tmp, f"{tag}.done"), "w").close()
    write_json(os.path.join(tmp, "prep.json"), first[1])
    write_json(os.path.join(tmp, "classes.json"), first[1]["classes"])
    write_json(os.path.join(tmp, "objects.json"), objects)
    return objects


def _publish(cache: Cache, tmp: str, objects: dict, summary: dict) -> None:
    """The merged store's small files, the manifest last, once every shard it names is on the server."""
    rows = read_jsonl(os.path.join(tmp, "manifest.jsonl"))
    absent = sorted({r["shard"] for r in rows} - {k.removeprefix("shards/") for k in objects})
    if absent:
        raise RemoteStoreError(f"cannot merge {cache.url}: shards/{absent[0]} is named by a part's manifest but no "
                               "part uploaded it: prep that part again")
    for rel in ("classes.json", "prep.json", "rejects.jsonl", "objects.json", "manifest.jsonl"):
        upload_file(os.path.join(tmp, rel), cache.key(rel), cache.obj(rel))


def _download(cache: Cache, rel: str, dest: str) -> None:
    with translated(cache.obj(rel)), filesystem().open_input_stream(cache.key(rel)) as src, open(dest, "wb") as f:
        f.write(src.read())
