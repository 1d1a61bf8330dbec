"""`--part I/N` jobs on several machines writing one s3:// prefix, joined by `prep merge s3://...`, and the one-writer
rule across machines (a claim object per part), against the real server (tests/s3fixture.py). A "machine" is a cache
dir of its own: its staging folder, upload log and claims are its own."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from prep import open_dataset, remote_claim, remote_upload
from prep.__main__ import main as prep_main
from prep.remote import RemoteStoreError
from prep.verify import report
from s3fixture import BUCKET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = ["--videos", "20", "--frames", "8", "--size", "32", "--workers", "1", "--no-progress"]


def _fs(s3) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=s3.endpoint, access_key=s3.env["AWS_ACCESS_KEY_ID"],
                             secret_key=s3.env["AWS_SECRET_ACCESS_KEY"], region="us-east-1")


def _on(monkeypatch, tmp_path, machine: str) -> None:
    monkeypatch.setenv("VIDKIT_CACHE_DIR", str(tmp_path / machine))


def _prep(args: list[str], capsys, rc: int = 0) -> dict | str:
    """`python -m prep ARGS` in this process: its summary, or its error line when `rc` is not 0."""
    printed = io.StringIO()
    with redirect_stdout(printed):
        got = prep_main(args)
    err = capsys.readouterr().err.strip()
    assert got == rc, err
    return json.loads(printed.getvalue().strip().splitlines()[-1]) if rc == 0 else err


def _part(url: str, part: str, src, *extra: str) -> list[str]:
    return ["synthetic", "--out", url, "--root", str(src), "--part", part, *SYNTH, *extra]


def _names(s3, prefix: str) -> set[str]:
    infos = _fs(s3).get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path.split(f"/{prefix}/", 1)[1] for i in infos if i.type == pafs.FileType.File}


def test_parts_on_two_machines_are_merged_on_the_server_and_an_interrupted_part_resumes(s3_env, tmp_path,
                                                                                          monkeypatch, capsys):
    url, src = f"s3://{BUCKET}/parts", tmp_path / "videos"
    _on(monkeypatch, tmp_path, "machine0")
    first = _prep(_part(url, "0/2", src), capsys)
    assert first["upload"]["part"] == "part000of002" and "manifest.jsonl" not in _names(s3_env, "parts")
    with pytest.raises(RemoteStoreError, match="no manifest.jsonl"):  # no reader sees a store before the merge
        open_dataset(url)
    said = _prep(["merge", url], capsys, rc=2)
    assert "unfinished parts part001of002" in said and len(said.splitlines()) == 1

    _on(monkeypatch, tmp_path, "machine1")  # the other part, interrupted as its done mark goes up
    real = remote_upload.upload_file

    def stop_at_done(path, key, what):
        if key.endswith(".done"):
            raise KeyboardInterrupt
        real(path, key, what)

    monkeypatch.setattr(remote_upload, "upload_file", stop_at_done)
    said = _prep(_part(url, "1/2", src), capsys, rc=130)
    assert said.endswith("run the same command again to resume")
    assert "parts/part001of002.done" not in _names(s3_env, "parts")
    assert not any(n.startswith("locks/") for n in _names(s3_env, "parts"))  # the claim went with the writer
    monkeypatch.setattr(remote_upload, "upload_file", real)
    again = _prep(_part(url, "1/2", src), capsys)
    assert again["upload"]["uploaded"] == 1 and again["decoded_now"] == 0  # the done mark only; nothing decoded

    merged = _prep(["merge", url], capsys)
    assert merged["videos"] + merged["rejected"] == 20
    names = _names(s3_env, "parts")
    assert {"manifest.jsonl", "objects.json", "prep.json", "classes.json", "rejects.jsonl"} <= names
    assert {n.split("-")[0] for n in names if n.startswith("shards/")} == {"shards/part000of002",
                                                                           "shards/part001of002"}
    _on(monkeypatch, tmp_path, "reader")
    assert len(open_dataset(url)) == merged["videos"]
    assert report(url, workers=1, progress=False) == 0  # every frame of both parts decodes and checks
    runs = {json.loads(Path(os.path.join(tmp_path, m, "staging", os.listdir(tmp_path / m / "staging")[0],
                                         "prep.json")).read_text())["run"] for m in ("machine0", "machine1")}
    assert len(runs) == 1  # the parts agreed on one run identity


def test_merge_refuses_parts_prepped_with_other_arguments(s3_env, tmp_path, monkeypatch, capsys):
    url, src = f"s3://{BUCKET}/mixed", tmp_path / "videos"
    _on(monkeypatch, tmp_path, "machine0")
    _prep(_part(url, "0/2", src), capsys)
    _on(monkeypatch, tmp_path, "machine1")
    _prep(_part(url, "1/2", src, "--quality", "70"), capsys)
    said = _prep(["merge", url], capsys, rc=2)
    assert "parts/part001of002 was prepped with other arguments than parts/part000of002 (decode differ)" in said
    assert "manifest.jsonl" not in _names(s3_env, "mixed")


def _claim_object(s3, prefix: str, name: str, **record) -> str:
    key = f"{BUCKET}/{prefix}/locks/{name}/{record['token']}.json"
    with _fs(s3).open_output_stream(key) as f:
        f.write(json.dumps(record).encode())
    return key


HOLD_CLAIM = """
import sys, time
from prep import remote_claim
remote_claim.acquire(sys.argv[1], "part000of002", "a writer")
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_writer_of_a_part_is_refused_naming_the_holder_and_a_stale_claim_is_taken_over(
        s3_env, tmp_path, monkeypatch, capsys):
    url, src, host = f"s3://{BUCKET}/claimed", tmp_path / "videos", socket.gethostname()
    _on(monkeypatch, tmp_path, "machine1")
    _prep(_part(url, "1/2", src), capsys)
    _on(monkeypatch, tmp_path, "machine0")
    _prep(_part(url, "0/2", src), capsys)
    writer = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, url], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert writer.stdout.readline().strip() == "held"
        said = _prep(_part(url, "0/2", src), capsys, rc=1)  # a second writer of part 0, on another machine
        assert said.startswith(f"prep: error: part 0/2 of {url} is being written by {host} pid {writer.pid} since ")
        assert said.endswith(f"(claim in {url}/locks/part000of002): wait for it to end, or, if that job is gone, "
                             "run again with --take-over") and len(said.splitlines()) == 1
        said = _prep(["merge", url], capsys, rc=2)
        assert f"part 0/2 is being written by {host} pid {writer.pid}" in said
        assert "manifest.jsonl" not in _names(s3_env, "claimed")
    finally:
        writer.kill()  # killed outright: its claim stays behind
        writer.wait()
        writer.stdout.close()
    said = _prep(_part(url, "0/2", src), capsys, rc=1)
    assert f"a stale claim by {host} pid {writer.pid} since " in said and "(no such process on this host now)" in \
        said and said.endswith("run again with --take-over to take it over")
    assert _prep(_part(url, "0/2", src, "--take-over"), capsys)["upload"]["part"] == "part000of002"
    assert not any(n.startswith("locks/") for n in _names(s3_env, "claimed"))
    assert _prep(["merge", url], capsys)["videos"] > 0

    # a claim from another host: its process cannot be checked from here, so it is named, not called stale
    _claim_object(s3_env, "claimed", "part001of002", host="node-7", pid=4242, since="2026-12-03 10:00:00 UTC",
                  time=time.time() - 600, token="0-other")
    _on(monkeypatch, tmp_path, "machine1")
    said = _prep(_part(url, "1/2", src), capsys, rc=1)
    assert said == (f"prep: error: part 1/2 of {url} is being written by node-7 pid 4242 since 2026-12-03 "
                    f"10:00:00 UTC (claim in {url}/locks/part001of002): wait for it to end, or, if that job is gone, "
                    "run again with --take-over")


def test_writers_starting_at_the_same_moment_get_one_claim(s3_env, monkeypatch):
    monkeypatch.setattr(remote_claim, "TRIES", 3)
    url, held, refused = f"s3://{BUCKET}/race", [], []
    barrier = threading.Barrier(4)

    def writer():
        barrier.wait()
        try:
            held.append(remote_claim.acquire(url, "part000of001", url))
        except remote_claim.ClaimRefused as e:
            refused.append(str(e))

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(held) <= 1 and len(held) + len(refused) == 4
    assert all("is being written by" in r for r in refused)
    if held:
        assert [c["key"] for c in remote_claim.current_claims(url, "part000of001")] == [held[0].key]
        held[0].release()
    assert remote_claim.current_claims(url, "part000of001") == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_prep_with_parts_and_merge_writes_an_s3_store(s3_env, tmp_path, monkeypatch):
    """`make prep OUT=s3://... PART=I/N` on each machine, then `make prep-merge OUT=s3://...` (install taken as
    done: -o install)."""
    url, src = f"s3://{BUCKET}/made", tmp_path / "videos"
    args = f"ARGS=--root {src} {' '.join(SYNTH)}"
    for i, machine in enumerate(("machine0", "machine1")):
        env = {**os.environ, "VIDKIT_CACHE_DIR": str(tmp_path / machine), "PYTHONPATH": ROOT}
        r = subprocess.run(["make", "-o", "install", "--no-print-directory", "prep", f"PYTHON={sys.executable}",
                            "DATASET=synthetic", f"OUT={url}", f"PART={i}/2", args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(["make", "-o", "install", "--no-print-directory", "prep-merge", f"PYTHON={sys.executable}",
                        f"OUT={url}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["videos"] == 20
    _on(monkeypatch, tmp_path, "reader")
    assert len(open_dataset(url)) == 20


def test_take_over_is_refused_for_a_local_out(tmp_path, capsys):
    said = _prep(["synthetic", "--out", str(tmp_path / "local"), *SYNTH, "--take-over"], capsys, rc=2)
    assert said == "prep: error: --take-over is for an s3:// --out: a local part's lock ends with its process"
    assert not (tmp_path / "local").exists()
