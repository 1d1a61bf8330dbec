"""One writer per part of a store on object storage, across machines: a claim object per writer.

pyarrow's S3 client has no conditional create (no If-None-Match on a PUT), and not every S3-compatible server
honours one, so a claim is taken in two steps that need only read-after-write and list-after-write consistency (AWS
S3, MinIO, SeaweedFS and Ceph give both):

    1. write  PREFIX/locks/<name>/<token>.json   holding {host, pid, since, token}, a name no other writer uses;
    2. list   PREFIX/locks/<name>/               the claim is held when it is the only one there.

Two writers that both list after both wrote each see the other: both withdraw and try again after a random wait; a
writer whose write lands after the other's list sees the other's claim and withdraws. So at most one holds it. A
claim stays until its holder ends (done, failed or interrupted); a writer killed outright (SIGKILL, a lost machine)
leaves it behind: the next writer is told who held it and since when (and that the process is gone when the holder
ran on this host), and takes it over with --take-over. Nothing secret goes into a claim or a message.
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from .guard import PrepFailed
from .remote import filesystem, split_url, translated

log = logging.getLogger("prep.remote")
TRIES = 6  # rounds of write, list, withdraw when writers start at the same moment
RECENT_S = 15.0  # a claim younger than this may be a writer starting now: wait and look again before refusing


class ClaimRefused(PrepFailed):
    """Another writer holds the claim: one line naming it."""


@dataclass
class Claim:
    """A held claim: `release()` removes it."""
    url: str
    key: str

    def release(self) -> None:
        try:
            with translated(self.url):
                filesystem().delete_file(self.key)
        except (FileNotFoundError, ValueError) as e:  # taken over meanwhile, or the server went away
            log.warning("%s: could not remove this writer's claim (%s)", self.url, e)


def _holder_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "time": time.time(),
            "token": f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"}


def claims_dir(url: str, name: str) -> str:
    bucket, prefix = split_url(url)
    return f"{bucket}/{prefix}/locks/{name}"


def current_claims(url: str, name: str) -> list[dict]:
    """Every claim object of `name` with its record ({} if unreadable), oldest first."""
    fs, found = filesystem(), []
    with translated(url):
        infos = fs.get_file_info(pafs.FileSelector(claims_dir(url, name), allow_not_found=True))
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            record = _read_claim(fs, info.path)
            if record is not None:
                found.append({**record, "key": info.path})
    return sorted(found, key=lambda r: (r.get("time", 0), r["key"]))


def _read_claim(fs: pafs.S3FileSystem, key: str, tries: int = 3) -> dict | None:
    """A claim's record; None when it was withdrawn meanwhile (a server may answer a read of an object being deleted
    with an error rather than 404: then it is looked up again); {} when it stays unreadable."""
    for attempt in range(tries):
        try:
            with fs.open_input_stream(key) as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        except OSError:
            if fs.get_file_info(key).type != pafs.FileType.File:
                return None
            time.sleep(0.1 * (attempt + 1))
    return {}


def acquire(url: str, name: str, what: str, take_over: bool = False) -> Claim:
    """Takes the claim `name` of the store at `url` for this process, or raises ClaimRefused naming the holder.
    `take_over`: the claims already there are removed first (their writers are gone, as the user says)."""
    url, fs = url.rstrip("/"), filesystem()
    if take_over:
        for old in current_claims(url, name):
            log.warning("%s: taking over the claim of %s (%s)", what, _describe(old), old["key"])
            with translated(url):
                fs.delete_file(old["key"])
    for attempt in range(TRIES):
        record = _holder_record()
        mine = f"{claims_dir(url, name)}/{record['token']}.json"
        with translated(url), fs.open_output_stream(mine) as f:
            f.write(json.dumps(record).encode())
        others = [c for c in current_claims(url, name) if c["key"] != mine]
        if not others:
            return Claim(url, mine)
        with translated(url):
            fs.delete_file(mine)
        settled = all(time.time() - c.get("time", 0) > RECENT_S for c in others)
        if settled or attempt == TRIES - 1:
            raise ClaimRefused(_refusal(what, others[0]))
        time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))
    raise AssertionError("unreachable")


def _describe(record: dict) -> str:
    if not record.get("host"):
        return "an unreadable claim"
    return f"{record['host']} pid {record.get('pid')} since {record.get('since')}"


def _refusal(what: str, holder: dict) -> str:
    where = f"s3://{holder['key'].removesuffix('.json').rsplit('/', 1)[0]}"
    if holder.get("host") == socket.gethostname() and not _alive(holder.get("pid")):
        return (f"{what}: a stale claim by {_describe(holder)} (no such process on this host now) in {where}: run "
                "again with --take-over to take it over")
    return (f"{what} is being written by {_describe(holder)} (claim in {where}): wait for it to end, or, if that "
            "job is gone, run again with --take-over")


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True
