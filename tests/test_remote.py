"""Prepped stores on S3-compatible object storage, against a real server (SeaweedFS, tests/s3fixture.py): prep to
s3://, read through the node's cache, eval identical to local disk, and the faults (wrong credentials, a truncated
or replaced shard object, the server stopped)."""
from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from prep import open_dataset, remote, remote_upload
from prep.__main__ import main as prep_main
from prep.remote import RemoteStoreError
from procs import alive
from bench.s3server import port_open
from s3fixture import BUCKET
from helpers import CPU, tsn_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = ["--videos", "20", "--frames", "8", "--size", "32", "--workers", "1", "--no-progress"]


def _prep(url: str, rc: int = 0) -> dict | None:
    """`python -m prep synthetic --out URL` in this process; its summary (exit status `rc` expected)."""
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert prep_main(["synthetic", "--out", url, *SYNTH]) == rc
    return json.loads(printed.getvalue().strip().splitlines()[-1]) if rc == 0 else None


def _fs(s3) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=s3.endpoint, access_key=s3.env["AWS_ACCESS_KEY_ID"],
                             secret_key=s3.env["AWS_SECRET_ACCESS_KEY"], region="us-east-1")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


@pytest.fixture(scope="module")
def store(s3):
    """A finished store on the server (20 synthetic videos, train and val) and its local staging folder."""
    env = {**s3.env, "VIDKIT_CACHE_DIR": os.path.join(s3.root, "prep-cache")}
    with pytest.MonkeyPatch.context() as mp_:
        for k, v in env.items():
            mp_.setenv(k, v)
        summary = _prep(f"s3://{BUCKET}/store")
        staging = remote_upload.staging_dir(f"s3://{BUCKET}/store")
    return {"url": f"s3://{BUCKET}/store", "staging": staging, "summary": summary}


def test_prep_uploads_the_manifest_last_and_reads_back_the_same_frames(s3_env, store, tmp_path):
    assert store["summary"]["upload"]["uploaded"] > 0
    names = [i.path.split("/store/")[1] for i in _fs(s3_env).get_file_info(pafs.FileSelector(f"{BUCKET}/store",
                                                                                             recursive=True))]
    assert "manifest.jsonl" in names and "objects.json" in names and any(n.startswith("shards/") for n in names)
    assert not any(n.startswith(("parts/", "source/")) for n in names)  # the staging folder's own files stay home
    log = json.loads(Path(os.path.join(store["staging"], "uploaded.json")).read_text())
    assert list(log)[-1] == "manifest.jsonl"  # uploaded (and logged) last
    local = open_dataset(store["staging"], "val")
    remote_ds = open_dataset(store["url"], "val")
    assert remote_ds.rows == local.rows and remote_ds.classes == local.classes
    for i in range(len(local)):
        assert remote_ds.frames(i, range(8), verify=True) == local.frames(i, range(8))
    assert remote_ds.root.startswith(str(tmp_path / "cache"))


def test_second_open_reads_the_cache_and_a_rerun_sends_nothing(s3_env, store, monkeypatch):
    first = open_dataset(store["url"], "train")
    shard = os.path.join(first.root, "shards", first.rows[0]["shard"])
    inode = os.stat(shard).st_ino
    open_dataset(store["url"], "train")
    assert os.stat(shard).st_ino == inode  # not downloaded again
    monkeypatch.setenv("VIDKIT_CACHE_DIR", os.path.join(s3_env.root, "prep-cache"))
    again = _prep(store["url"])
    assert again["upload"]["uploaded"] == 0 and again["upload"]["skipped"] == store["summary"]["upload"]["uploaded"]


def test_interrupted_upload_resumes_without_resending(s3_env, monkeypatch, capsys):
    url = f"s3://{BUCKET}/resume"
    sent = []
    real = remote_upload.upload_file

    def fail_on_manifest(path, key, what):
        if key.endswith("manifest.jsonl"):
            raise KeyboardInterrupt  # as a Ctrl-C while the last object goes up
        sent.append(key)
        real(path, key, what)

    monkeypatch.setattr(remote_upload, "upload_file", fail_on_manifest)
    _prep(url, rc=130)
    said = capsys.readouterr().err.strip().splitlines()
    assert said[-1].startswith("prep: interrupted by SIGINT while uploading to s3://vidkit/resume") and \
        said[-1].endswith("run the same command again to resume")
    assert _fs(s3_env).get_file_info(f"{BUCKET}/resume/manifest.jsonl").type == pafs.FileType.NotFound
    with pytest.raises(RemoteStoreError, match="no manifest.jsonl"):  # a reader sees no store yet
        open_dataset(url)
    monkeypatch.setattr(remote_upload, "upload_file", real)
    summary = _prep(url)
    assert summary["upload"]["uploaded"] == 1 and summary["upload"]["skipped"] == len(sent)  # the manifest only
    assert len(open_dataset(url)) == 20


def test_eval_on_the_s3_store_gives_the_local_metrics(s3_env, store, tmp_path):
    from eval.run import evaluate

    classes = open_dataset(store["staging"], "val").classes
    ckpt = tsn_checkpoint(tmp_path / "best.pt", store["staging"], classes)
    got = {}
    for name, data in (("local", store["staging"]), ("s3", store["url"])):
        got[name] = evaluate(ckpt, CPU, data=data, clips=2, crops=1, batch_size=4, py_workers=1, progress=False,
                             out_dir=str(tmp_path / name))
    for key in ("top1", "top5", "mean_class_acc", "videos"):
        assert got["s3"][key] == got["local"][key]
    preds = [json.loads(Path(tmp_path / n / "predictions.json").read_text()) for n in ("local", "s3")]
    assert preds[0] == preds[1] and len(preds[0]) == len(open_dataset(store["staging"], "val"))


def test_wrong_credentials_are_one_line_before_any_work(s3_env, store, tmp_path):
    bad = {"AWS_SECRET_ACCESS_KEY": "not-the-secret", "VIDKIT_CACHE_DIR": str(tmp_path / "c2")}
    r = _cli("-m", "prep", "verify", store["url"], env=bad)
    assert r.returncode == 2 and "access denied" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _cli("-m", "prep", "synthetic", "--out", f"s3://{BUCKET}/never", *SYNTH, env=bad)
    assert r.returncode == 2 and "access denied" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "c2" / "staging")  # nothing was prepped


def _copy_store(fs, src: str, dst: str) -> None:
    for info in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{src}", recursive=True)):
        if info.type == pafs.FileType.File:
            pafs.copy_files(info.path, info.path.replace(f"/{src}/", f"/{dst}/"), source_filesystem=fs,
                            destination_filesystem=fs)


def test_store_copied_up_without_objects_json_is_read_and_checked_by_identity(s3_env, store):
    """A store uploaded by other means (`aws s3 sync` of a prepped folder): sizes from the server, identities from
    the manifest."""
    fs = _fs(s3_env)
    _copy_store(fs, "store", "synced")
    fs.delete_file(f"{BUCKET}/synced/objects.json")
    ds = open_dataset(f"s3://{BUCKET}/synced", "val")
    local = open_dataset(store["staging"], "val")
    assert ds.frames(0, range(8), verify=True) == local.frames(0, range(8))
    assert not os.path.exists(os.path.join(ds.root, "objects.json"))


def test_truncated_shard_object_is_refused_and_not_cached(s3_env, store, tmp_path):
    fs = _fs(s3_env)
    _copy_store(fs, "store", "truncated")
    shard = f"{BUCKET}/truncated/shards/" + open_dataset(store["staging"]).rows[0]["shard"]
    with fs.open_input_stream(shard) as f:
        data = f.read()
    with fs.open_output_stream(shard) as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(RemoteStoreError, match="not a readable shard.*truncated") as e:
        open_dataset(f"s3://{BUCKET}/truncated", "train")
    assert f"s3://{shard}" in str(e.value) and "\n" not in str(e.value)
    cached = [n for _, _, names in os.walk(tmp_path / "cache") for n in names if n.endswith((".lmdb", ".ok"))]
    assert cached == []


def test_shard_of_another_run_is_refused_by_its_identity(s3_env, store, tmp_path, monkeypatch):
    fs = _fs(s3_env)
    _copy_store(fs, "store", "replaced")
    monkeypatch.setenv("VIDKIT_CACHE_DIR", str(tmp_path / "other-prep"))
    _prep(f"s3://{BUCKET}/other")  # same arguments, another run: same shard names, other identities
    shard = open_dataset(store["staging"]).rows[0]["shard"]
    pafs.copy_files(f"{BUCKET}/other/shards/{shard}", f"{BUCKET}/replaced/shards/{shard}", source_filesystem=fs,
                    destination_filesystem=fs)
    monkeypatch.setenv("VIDKIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RemoteStoreError, match="holds shard .* but the manifest names shard .*another prep run"):
        open_dataset(f"s3://{BUCKET}/replaced", "val")


def test_stopped_server_gives_one_line_naming_the_object_then_works_again(s3_env, store):
    cache = remote.Cache(store["url"])
    wanted = cache.wanted(cache.fetch_metadata())
    pid, ports = s3_env.proc.pid, list(s3_env.ports.values())
    s3_env.stop()
    try:
        assert not alive(pid) and not any(port_open(p) for p in ports)  # stopped for certain, ports free
        start = time.time()
        with pytest.raises(RemoteStoreError, match="no answer from .* after 3 attempts") as e:
            cache.ensure(wanted)
        assert "/shards/" in str(e.value) and "run the same command again" in str(e.value)
        assert time.time() - start < 60
    finally:
        s3_env.start()
    assert cache.ensure(wanted)["shards"] == len(wanted)  # the same call succeeds once the server is back


def _open_in_child(url: str, env: dict, queue) -> None:
    os.environ.update(env)
    try:
        cache = remote.Cache(url)
        queue.put(cache.ensure(cache.wanted(cache.fetch_metadata()))["downloaded"])
    except Exception as e:  # the parent fails with the child's reason instead of waiting for it
        queue.put(f"{type(e).__name__}: {e}")


def test_concurrent_processes_download_each_shard_once(s3_env, store):
    ctx = mp.get_context("spawn")  # fresh interpreters, as torchrun's ranks
    queue = ctx.Queue()
    env = {k: os.environ[k] for k in (*s3_env.env, "VIDKIT_CACHE_DIR", "VIDKIT_S3_ATTEMPTS")}
    procs = [ctx.Process(target=_open_in_child, args=(store["url"], env, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    counts = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(isinstance(c, int) for c in counts), counts
    shards = len({r["shard"] for r in open_dataset(store["staging"]).rows})
    assert sum(counts) == shards


def test_cache_limit_refuses_a_split_too_large_and_evicts_unused_shards(s3_env, store, tmp_path, monkeypatch):
    size = sum(o["size"] for o in json.loads(Path(os.path.join(store["staging"], "objects.json")).read_text()).values())
    monkeypatch.setenv("VIDKIT_CACHE_LIMIT", str(size - 1))
    with pytest.raises(RemoteStoreError, match="more than the cache limit"):
        open_dataset(store["url"])
    # an unused store's shards make room; one in use by a process stays
    monkeypatch.setenv("VIDKIT_CACHE_LIMIT", str(size))
    stale = tmp_path / "cache" / "stores" / "stale" / "shards"
    stale.mkdir(parents=True)
    (stale / "old.lmdb").write_bytes(b"x" * 1000)
    os.utime(stale / "old.lmdb", (0, 0))
    assert len(open_dataset(store["url"])) == 20
    assert not (stale / "old.lmdb").exists()
    # this process reads the first store's shards: a second store cannot evict them
    _copy_store(_fs(s3_env), "store", "second")
    with pytest.raises(RemoteStoreError, match="in use .* raise --cache-limit or use another --cache-dir"):
        open_dataset(f"s3://{BUCKET}/second")


def test_cache_options_reach_the_environment_and_leave_the_train_config(monkeypatch, tmp_path):
    from train.__main__ import _without_cache_options

    monkeypatch.delenv("VIDKIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("VIDKIT_CACHE_LIMIT", raising=False)
    rest = _without_cache_options(["--model", "tsn_tiny", "--cache-dir", str(tmp_path / "c"), "--data", "s3://b/p",
                                   "--cache-limit", "2G"])
    assert rest == ["--model", "tsn_tiny", "--data", "s3://b/p"]
    assert remote.cache_dir() == str(tmp_path / "c") and remote.cache_limit() == 2 << 30
    r = _cli("-m", "prep", "verify", "s3://b/p", "--cache-limit", "lots")
    assert r.returncode == 2 and "--cache-limit: size must look like" in r.stderr


@pytest.mark.slow
def test_train_and_eval_from_s3_match_local(s3_env, store, tmp_path):
    """`python -m train --data s3://...` trains as many steps as on the same store on local disk (in the shard
    plan's order, pipelines/shard_plan.py, not the local sampler's: the weights differ from the local run's), the
    same weights bit for bit from a cold cache and from a warm one, and `python -m eval` reads it too; all through
    the node cache named by --cache-dir."""
    import torch

    node_cache = str(tmp_path / "node-cache")
    common = ["-m", "train", "--model", "tsn_tiny", "--output", str(tmp_path), "--batch-size", "4", "--py-workers",
              "1", "--threads", "1", "--amp", "none", "--no-progress", "--optimizer", "adamw", "--lr", "0.002",
              "--epochs", "1", "--eval-every", "0", "--seed", "3"]
    for name, data, extra in (("local", store["staging"], []), ("s3", store["url"], ["--cache-dir", node_cache]),
                              ("s3-warm", store["url"], ["--cache-dir", node_cache])):
        r = _cli(*common, "--name", name, "--data", data, *extra)
        assert r.returncode == 0, r.stderr[-2000:]
    local, s3, warm = (torch.load(tmp_path / n / "last.pt", map_location="cpu", weights_only=True)
                       for n in ("local", "s3", "s3-warm"))
    assert local["step"] == s3["step"] == warm["step"] > 0
    for key, value in s3["model"].items():  # the streamed epoch reads the plan's items whatever the cache holds
        assert torch.equal(value, warm["model"][key]), key
    assert os.listdir(os.path.join(node_cache, "stores"))
    r = _cli("-m", "eval", "--ckpt", str(tmp_path / "s3" / "last.pt"), "--data", store["url"], "--cache-dir",
             node_cache, "--clips", "1", "--crops", "1", "--batch-size", "4", "--py-workers", "1", "--no-progress",
             "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["videos"] == \
        len(open_dataset(store["staging"], "val"))


def test_predict_stores_frames_as_the_s3_store_of_the_run(s3_env, store):
    """eval predict preps videos as the run's data was prepped (its prep.json): for a run trained on an s3 store
    too, not prep's defaults."""
    from eval.predict import decode_options

    assert decode_options(store["url"]) == decode_options(store["staging"])
    assert decode_options(store["url"]).short_side == 0  # the synthetic preset's, not prep's default of 256
