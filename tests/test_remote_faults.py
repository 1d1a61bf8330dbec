"""Faults around a store on object storage, against the real server (tests/s3fixture.py): the cache disk full during
a download, wrong credentials for every command that reads or writes s3://, and two training runs on one node
sharing a cache dir. (A truncated or replaced shard object and the server stopped: tests/test_remote.py.)"""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from prep import open_dataset, remote_upload
from prep.__main__ import main as prep_main
from s3fixture import BUCKET, prepped_on_server
from helpers import FillingFile, tsn_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = ["--videos", "20", "--frames", "8", "--size", "32", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def store(s3):
    """A finished store on the server (20 synthetic videos) and its local staging folder."""
    url = prepped_on_server(s3, "faults", SYNTH)
    with pytest.MonkeyPatch.context() as mp_:
        mp_.setenv("VIDKIT_CACHE_DIR", os.path.join(s3.root, "faults-prep"))
        staging = remote_upload.staging_dir(url)
    return {"url": url, "staging": staging}


def _cache_files(top) -> list[str]:
    return sorted(n for _, _, names in os.walk(top) for n in names if n.endswith((".lmdb", ".ok", ".part")))


def _verify(url: str, capsys) -> tuple[int, str]:
    with redirect_stdout(io.StringIO()):
        rc = prep_main(["verify", url, "--workers", "1"])
    return rc, capsys.readouterr().err.strip()


def test_cache_disk_full_during_a_download_is_one_line_and_the_partial_file_is_never_read(s3_env, store, tmp_path,
                                                                                           monkeypatch, capsys):
    real_fdopen = os.fdopen

    def filling_fdopen(fd, *args, **kwargs):  # only the cache's downloads (NAME.PID.part) land on the full disk
        f = real_fdopen(fd, *args, **kwargs)
        return FillingFile(f, [3000]) if os.readlink(f"/proc/self/fd/{fd}").endswith(".part") else f

    monkeypatch.setattr(os, "fdopen", filling_fdopen)
    rc, said = _verify(store["url"], capsys)
    assert rc == 2 and len(said.splitlines()) == 1, said
    assert f"cannot cache {store['url']}/shards/" in said and f"in {tmp_path / 'cache'}: No space left on device: " \
        "free some space, or lower --cache-limit" in said
    assert _cache_files(tmp_path / "cache") == []  # no partial file, no marker vouching for one

    def no_room(fd, offset, length):  # the space reservation before a download fails instead
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", real_fdopen)
    monkeypatch.setattr(os, "posix_fallocate", no_room)
    rc, said = _verify(store["url"], capsys)
    assert rc == 2 and len(said.splitlines()) == 1 and "cannot cache" in said and "No space left" in said
    assert _cache_files(tmp_path / "cache") == []

    monkeypatch.undo()
    for k, v in {**s3_env.env, "VIDKIT_CACHE_DIR": str(tmp_path / "cache"), "VIDKIT_S3_ATTEMPTS": "3"}.items():
        monkeypatch.setenv(k, v)
    assert _verify(store["url"], capsys)[0] == 0  # with room, every shard arrives whole and reads back
    local = open_dataset(store["staging"], "val")
    cached = open_dataset(store["url"], "val")
    assert all(cached.frames(i, range(8), verify=True) == local.frames(i, range(8)) for i in range(len(local)))


def test_wrong_credentials_are_one_line_before_any_work_for_every_command(s3_env, store, tmp_path, monkeypatch,
                                                                          capsys):
    from eval.__main__ import main as eval_main
    from train.__main__ import main as train_main

    ckpt = tsn_checkpoint(tmp_path / "best.pt", store["staging"], open_dataset(store["staging"]).classes)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    monkeypatch.setenv("VIDKIT_CACHE_DIR", str(tmp_path / "bad-cache"))
    url, out = store["url"], tmp_path / "outputs"
    commands = {
        "train": (train_main, ["--model", "tsn_tiny", "--data", url, "--output", str(out), "--name", "run",
                               "--epochs", "1", "--threads", "1", "--py-workers", "1", "--no-progress"]),
        "eval": (eval_main, ["--ckpt", ckpt, "--data", url, "--out", str(out / "report"), "--no-progress"]),
        "features": (eval_main, ["features", "--ckpt", ckpt, "--data", url, "--out", str(out / "features.npz"),
                                 "--no-progress"]),
        "verify": (prep_main, ["verify", url]),
        "prep": (prep_main, ["synthetic", "--out", f"s3://{BUCKET}/never", *SYNTH]),
    }
    for name, (main, args) in commands.items():
        with redirect_stdout(io.StringIO()) as printed:
            rc = main(args)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc != 0 and len(lines) == 1, (name, err[-3000:])
        assert "access denied" in lines[0] and "check the credentials" in lines[0], (name, lines[0])
        assert "not-the-secret" not in err + printed.getvalue()  # the secret is never printed
        assert not out.exists() or not os.listdir(out), (name, os.listdir(out))  # nothing made, nothing written
        assert _cache_files(tmp_path / "bad-cache") == [] and not (tmp_path / "bad-cache" / "staging").exists()


COUNTING_TRAIN = """
import os, runpy, sys
import prep.remote as r
real = r.Cache._fetch
def counted(self, w):
    n = real(self, w)
    if n:
        with open(os.environ["FETCH_LOG"], "a") as f:
            f.write(w.name + "\\n")
    return n
r.Cache._fetch = counted
sys.argv = ["train", *sys.argv[1:]]
runpy.run_module("train", run_name="__main__")
"""


@pytest.mark.slow
def test_two_training_runs_sharing_a_cache_dir_both_finish_downloading_each_shard_once(s3_env, store, tmp_path):
    import torch

    shared, log = str(tmp_path / "node-cache"), str(tmp_path / "fetched.txt")
    common = ["--model", "tsn_tiny", "--data", store["url"], "--cache-dir", shared, "--output", str(tmp_path),
              "--batch-size", "4", "--py-workers", "1", "--threads", "1", "--amp", "none", "--no-progress",
              "--optimizer", "adamw", "--lr", "0.002", "--epochs", "1", "--eval-every", "0", "--seed", "3"]
    env = {**os.environ, "PYTHONPATH": ROOT, "FETCH_LOG": log}
    runs = [subprocess.Popen([sys.executable, "-c", COUNTING_TRAIN, *common, "--name", name], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    results = [(p.wait(timeout=900), p.stderr.read()) for p in runs]
    for p in runs:
        p.stdout.close()
        p.stderr.close()
    assert all(rc == 0 for rc, _ in results), [err[-2000:] for _, err in results]
    fetched = Counter(Path(log).read_text().split())
    train_shards = {r["shard"] for r in open_dataset(store["staging"], "train").rows}
    assert train_shards <= set(fetched) and set(fetched.values()) == {1}  # each shard once for the node
    a, b = (torch.load(tmp_path / n / "last.pt", map_location="cpu", weights_only=True) for n in ("a", "b"))
    assert a["step"] == b["step"] > 0
    for key, value in a["model"].items():  # the same data read by both, whole: the same weights
        assert torch.equal(value, b["model"][key]), key
