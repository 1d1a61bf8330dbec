"""Writing a prepped store to S3-compatible object storage: prep runs into a local staging folder (under the cache
dir, named for the destination; it survives an interrupted run, which resumes there), then uploads every object,
objects.json, and the manifest last, so a reader never sees a store whose manifest names objects that are not there.
An object already on the server with the size and ETag this machine recorded when it uploaded the same bytes
(sha256) is not sent again. The reading side and the client are in prep/remote.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal

import pyarrow.fs as pafs

from .guard import PrepInterrupted, stop_on_signals
from .remote import (METADATA_FILES, Cache, RemoteStoreError, cache_dir, etag, filesystem, local_name, object_info,
                     translated, write_json)

_BLOCK = 16 << 20


def staging_dir(url: str) -> str:
    return os.path.join(cache_dir(), "staging", local_name(url.rstrip("/")))


def prepare_destination(url: str, part: tuple[int, int]) -> str:
    """Checks, before any work, that `url` can take this prep (credentials, and no other run's store there); the
    local staging folder prep writes into (kept across runs: an interrupted prep resumes there)."""
    url = url.rstrip("/")
    if part[1] != 1:
        raise RemoteStoreError(f"--part with an s3:// --out is not supported yet: prep the parts into a local "
                               f"folder, `python -m prep merge` it, then prep again with --out {url} to upload")
    cache, staging = Cache(url), staging_dir(url)
    remote = object_info(cache.key("prep.json"), url)  # the first request: wrong credentials stop here
    if remote.type == pafs.FileType.File:
        with translated(url), filesystem().open_input_stream(cache.key("prep.json")) as f:
            theirs = json.loads(f.read()).get("run")
        ours = _local_run(staging)
        if ours != theirs:
            raise RemoteStoreError(f"{url} holds another prep run ({theirs}) than the one staged on this machine "
                                   f"({ours or 'none'} in {staging}): use a new prefix, or delete the old store first")
    os.makedirs(staging, exist_ok=True)
    return staging


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


def _store_files(staging: str) -> list[str]:
    """What goes up, relative to the staging folder: closed shards, then the small files; the manifest apart."""
    shard_dir = os.path.join(staging, "shards")
    shards = sorted(f"shards/{n}" for n in os.listdir(shard_dir) if n.endswith((".lmdb", ".arrow")))
    small = [n for n in METADATA_FILES if n != "objects.json" and os.path.exists(os.path.join(staging, n))]
    return shards + small


def upload_store(staging: str, url: str) -> dict:
    """Uploads a finished staging folder: every object, objects.json, and the manifest last. An object the log of
    earlier uploads shows on the server with the same bytes (size, sha256, and the server's ETag) is not sent again."""
    url = url.rstrip("/")
    cache = Cache(url)
    log_path = os.path.join(staging, "uploaded.json")
    try:
        with open(log_path) as f:
            sent = json.load(f)
    except (OSError, ValueError):
        sent = {}
    objects, counts = {}, {"uploaded": 0, "skipped": 0, "bytes_uploaded": 0}
    files = _store_files(staging) + ["objects.json", "manifest.jsonl"]
    try:
        with stop_on_signals():
            for rel in files:
                _upload_one(cache, staging, rel, sent, objects, counts)
    except (KeyboardInterrupt, PrepInterrupted) as e:
        stop = e if isinstance(e, PrepInterrupted) else PrepInterrupted(signal.SIGINT)
        stop.progress = f" while uploading to {url} ({counts['uploaded'] + counts['skipped']} of {len(files)} " \
                        "objects there; those are not sent again)"
        raise stop from None
    return {"url": url, **counts}


def _upload_one(cache: Cache, staging: str, rel: str, sent: dict, objects: dict, counts: dict) -> None:
    """Uploads one file of the staging folder unless the server has it; logs it in `sent` (uploaded.json)."""
    if rel == "objects.json":
        write_json(os.path.join(staging, rel), objects)
    path = os.path.join(staging, rel)
    size, sha256 = os.path.getsize(path), _sha256(path)
    if rel.startswith("shards/"):
        objects[rel] = {"size": size, "sha256": sha256}
    if _already_there(cache, rel, sent.get(rel), size, sha256):
        counts["skipped"] += 1
        return
    upload_file(path, cache.key(rel), cache.obj(rel))
    sent[rel] = {"size": size, "sha256": sha256, "etag": etag(cache.key(rel), cache.obj(rel))}
    write_json(os.path.join(staging, "uploaded.json"), sent)
    counts["uploaded"] += 1
    counts["bytes_uploaded"] += size


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
