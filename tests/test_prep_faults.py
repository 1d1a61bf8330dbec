"""prep against real faults: damaged and foreign shards, two writers, bad lists, signals, a full disk, long videos,
non-square pixels. Each test failed on the code before its fix."""
from __future__ import annotations

import errno
import faulthandler
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from procs import children, wait_gone
from prep import DamagedShard, open_dataset
from prep.__main__ import main as prep_main
from prep.synthetic import encode_video, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _videos(root, count: int, frames: int = 8, first_seed: int = 0) -> list[str]:
    os.makedirs(root / "v", exist_ok=True)
    rels = []
    for i in range(first_seed, first_seed + count):
        rel = f"v/{i}.mp4"
        encode_video(root / rel, render(i % 10, np.random.default_rng(i), frames, (48, 64)), fps=12, codec="h264")
        rels.append(rel)
    return rels


def _list(path, lines) -> str:
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def _argv(lst, root, out, *extra):
    return ["videos", "--list", str(lst), "--root", str(root), "--out", str(out), "--short-side", "32",
            "--workers", "1", "--no-progress", "--max-rejected", "100", *map(str, extra)]  # rejects on purpose


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    rels = _videos(root, 8)
    _list(root / "train.txt", [f"{r} {i % 2}" for i, r in enumerate(rels)])
    return root


@pytest.fixture(scope="module")
def stores(src, tmp_path_factory):
    """The same 8 videos in several small shards of each format."""
    outs = {}
    for fmt in ("lmdb", "arrow"):
        outs[fmt] = tmp_path_factory.mktemp(fmt)
        assert prep_main(_argv(src / "train.txt", src, outs[fmt], "--format", fmt, "--shard-size", "20K")) == 0
    return outs


def _copy(store, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(store, out, ignore=shutil.ignore_patterns("*-lock"))
    return out


def _verify(out, workers: int):
    return subprocess.run([sys.executable, "-m", "prep", "verify", str(out), "--workers", str(workers)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _damaged_lines(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("DAMAGED")]


def _clip_source(ds):
    from models.registry import InputContract
    from pipelines.augment import AugmentConfig
    from pipelines.readers import reader_of
    from pipelines.sampling import ClipSpec, EpochPlan
    from pipelines.source import ClipSource, DamageLog

    plan = EpochPlan(len(ds), 2, True)
    log = DamageLog(os.path.join(ds.root, "damage.jsonl"))
    return ClipSource(ds, plan, ClipSpec.of(InputContract("NCTHW", 4, 32)), AugmentConfig(), reader_of("frames"), log)


# --------------------------------------------------------------------------- 1: truncated shards


@pytest.mark.parametrize("fmt", ["lmdb", "arrow"])
def test_truncated_shard_is_reported_and_replaced(src, stores, tmp_path, capsys, fmt):
    out = _copy(stores[fmt], tmp_path)
    ds = open_dataset(str(out))
    shards = sorted({r["shard"] for r in ds.rows})
    assert len(shards) >= 3
    victim = out / "shards" / shards[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    in_victim = sorted(r["id"] for r in ds.rows if r["shard"] == shards[1])
    for workers in (1, 2):  # used to be SIGBUS (exit 135) with one worker and a hang with several
        proc = _verify(out, workers)
        assert proc.returncode == 1, proc.stderr
        damaged = _damaged_lines(proc)
        assert sorted(line.split()[1] for line in damaged) == in_victim
        assert all("truncated" in line and shards[1] in line for line in damaged)
    index = next(i for i, r in enumerate(ds.rows) if r["shard"] == shards[1])
    with pytest.raises(DamagedShard, match="truncated"):
        ds.frames(index, [0])
    rerun = _argv(src / "train.txt", src, out, "--format", fmt, "--shard-size", "20K")
    assert prep_main(rerun) == 2  # a resume does not build on it either
    assert "truncated" in capsys.readouterr().err
    source = _clip_source(open_dataset(str(out)))  # training: the sample comes from the next readable video
    sample = source.sample(index, 0, 0)
    served = int(sample[-2][1])
    assert ds.rows[served]["shard"] != shards[1] and int(sample[-2][0]) == ds.rows[served]["label"]
    assert shards[1] in source.damage_log.entries()[0]["reason"]
    victim.unlink()  # what the refusal says to do: its videos are prepped again
    assert prep_main(rerun) == 0 and _verify(out, 2).returncode == 0
    assert sorted(r["id"] for r in open_dataset(str(out)).rows) == sorted(r["id"] for r in ds.rows)


def test_verify_finishes_when_a_reader_dies(stores, monkeypatch):
    """Whatever kills a reading process (a damaged mapped page), verify names that entry and goes on."""
    import prep.verify as verify_mod

    ds = open_dataset(str(stores["lmdb"]))
    victim = ds.rows[5]["id"]
    whole = verify_mod.check_entry

    def check(dataset, i):
        if dataset.rows[i]["id"] == victim:
            faulthandler.disable()  # pytest's would print the dying reader's stack
            os.kill(os.getpid(), signal.SIGBUS)
        return whole(dataset, i)

    monkeypatch.setattr(verify_mod, "check_entry", check)
    for workers in (1, 3):
        bad = verify_mod.verify(str(stores["lmdb"]), workers=workers, progress=False)
        assert [(vid, why) for vid, _, why in bad] == [(victim, "reading it killed the reader (killed by SIGBUS)")]


# --------------------------------------------------------------------------- 2: identity


@pytest.mark.parametrize("fmt", ["lmdb", "arrow"])
def test_shard_from_another_run_is_refused(src, stores, tmp_path, fmt):
    other = tmp_path / "other"
    assert prep_main(_argv(src / "train.txt", src, other, "--format", fmt, "--shard-size", "20K")) == 0
    out = _copy(stores[fmt], tmp_path)
    ds = open_dataset(str(out))
    shard = ds.rows[0]["shard"]
    mine, theirs = ds.rows[0]["shard_id"], open_dataset(str(other)).rows[0]["shard_id"]
    assert mine != theirs and mine.split("/")[0] == json.loads((out / "prep.json").read_text())["run"]
    shutil.copy(other / "shards" / shard, out / "shards" / shard)  # same name, same keys, other run
    with pytest.raises(DamagedShard) as e:
        open_dataset(str(out)).frames(0, [0])
    assert shard in str(e.value) and mine in str(e.value) and theirs in str(e.value) and "\n" not in str(e.value)
    proc = _verify(out, 2)
    assert proc.returncode == 1 and all(theirs in line for line in _damaged_lines(proc))
    assert len(_damaged_lines(proc)) == sum(r["shard"] == shard for r in ds.rows)
    # a re-run of the job does not take the foreign shard's videos for its own
    assert prep_main(_argv(src / "train.txt", src, out, "--format", fmt, "--shard-size", "20K")) == 2


# --------------------------------------------------------------------------- 3: the missing manifest


def test_missing_manifest_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        open_dataset(str(tmp_path))
    assert f"python -m prep merge {tmp_path}" in str(e.value) and "{root}" not in str(e.value)


# --------------------------------------------------------------------------- 4: one writer per OUT (per part)


@pytest.fixture
def writer(src):
    """Starts a slow prep of the 8 videos into OUT (the first writer) and waits until it is writing."""
    procs = []

    def start(out, *extra):
        cmd = [sys.executable, "-m", "prep", *_argv(src / "train.txt", src, out, *extra)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, VIDKIT_PREP_DELAY="0.4"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        start = time.time()
        while not list((out / "shards").glob("*")):
            assert proc.poll() is None and time.time() - start < 60
            time.sleep(0.02)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_second_writer_is_refused_naming_the_holder(src, tmp_path, writer, capsys):
    out = tmp_path / "out"
    first = writer(out)
    assert prep_main(_argv(src / "train.txt", src, out)) == 1  # used to write the same shards at the same time
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"pid {first.pid} on {socket.gethostname()}, started" in err
    assert first.wait(timeout=60) == 0
    assert len(open_dataset(str(out))) == 8 and _verify(out, 1).returncode == 0


def test_parts_lock_only_themselves(src, tmp_path, writer, capsys):
    out = tmp_path / "out"
    first = writer(out, "--part", "0/2")
    assert prep_main(_argv(src / "train.txt", src, out, "--part", "0/2")) == 1
    assert "part 0/2 of" in capsys.readouterr().err
    assert prep_main(_argv(src / "train.txt", src, out, "--part", "1/2")) == 0  # a Slurm array runs in parallel
    assert first.wait(timeout=60) == 0 and prep_main(["merge", str(out)]) == 0
    assert len(open_dataset(str(out))) == 8


# --------------------------------------------------------------------------- 5-7: what a list may say


def _rejects(out) -> dict:
    rows = map(json.loads, Path(out / "rejects.jsonl").read_text().splitlines())
    return {(r["id"], r["split"]): r["reason"] for r in rows}


def test_entries_outside_root_are_rejected(src, tmp_path):
    outside = tmp_path / "elsewhere.mp4"
    shutil.copy(src / "v/0.mp4", outside)
    shutil.copy(src / "v/3.mp4", tmp_path / "other.mp4")
    lst = _list(tmp_path / "train.txt", ["v/1.mp4 0", f"{outside} 1", "../other.mp4 1", "v/../v/2.mp4 0"])
    root = tmp_path / "root"
    shutil.copytree(src / "v", root / "v")
    out = tmp_path / "out"
    assert prep_main(_argv(lst, root, out)) == 0
    rejects = _rejects(out)
    assert set(rejects) == {(str(outside), "train"), ("../other.mp4", "train")}
    assert all("outside --root" in reason and "--allow-outside-root" in reason for reason in rejects.values())
    assert sorted(r["id"] for r in open_dataset(str(out)).rows) == ["v/../v/2.mp4", "v/1.mp4"]
    allowed = tmp_path / "allowed"
    assert prep_main(_argv(lst, root, allowed, "--allow-outside-root")) == 0
    assert len(open_dataset(str(allowed)).rows) == 4


def test_a_video_in_two_splits_is_rejected_once(src, tmp_path):
    train = _list(tmp_path / "train.txt", ["v/0.mp4 0", "v/1.mp4 1", "v/2.mp4 0"])
    val = _list(tmp_path / "val.txt", ["v/3.mp4 1", "v/1.mp4 0", "v/./2.mp4 0"])  # other label, other spelling
    out = tmp_path / "out"
    assert prep_main(["videos", "--list", train, "--list", val, *_argv(val, src, out)[3:]]) == 0
    rejects = _rejects(out)
    assert set(rejects) == {("v/1.mp4", "val"), ("v/./2.mp4", "val")}
    assert "same video as 'v/1.mp4' in split 'train'" in rejects[("v/1.mp4", "val")]
    assert all("leakage" in reason for reason in rejects.values())
    assert {(r["id"], r["split"]) for r in open_dataset(str(out)).rows} == {
        ("v/0.mp4", "train"), ("v/1.mp4", "train"), ("v/2.mp4", "train"), ("v/3.mp4", "val")}


def test_labels_outside_the_class_list_are_rejected(src, tmp_path, capsys):
    lst = _list(tmp_path / "train.txt", ["v/0.mp4 0", "v/1.mp4 1", "v/2.mp4 2000000", "v/3.mp4 99999999999",
                                         "v/4.mp4 2"])
    out = tmp_path / "out"
    assert prep_main(_argv(lst, src, out)) == 0  # used to make 2 million classes, or eat memory until killed
    ds = open_dataset(str(out))
    assert ds.classes == ["0", "1", "2"]
    rejects = _rejects(out)
    assert set(rejects) == {("v/2.mp4", "train"), ("v/3.mp4", "train")}
    assert "outside the 3 classes inferred" in rejects[("v/2.mp4", "train")]
    stated = tmp_path / "stated"
    assert prep_main(_argv(lst, src, stated, "--num-classes", "2")) == 0
    assert open_dataset(str(stated)).classes == ["0", "1"]
    assert "outside --num-classes 2" in _rejects(stated)[("v/4.mp4", "train")]
    assert prep_main(_argv(lst, src, tmp_path / "x", "--num-classes", "2", "--classes", lst)) == 2


def test_inferred_class_count_keeps_an_unused_class():
    from prep.tasks import classes_from_labels

    assert classes_from_labels(["0", "1", "3", "4"]) == ["0", "1", "2", "3", "4"]
    assert len(classes_from_labels([str(i) for i in range(10)] + ["2000000"])) == 10


# --------------------------------------------------------------------------- 8: a run that stores nothing


def test_storing_nothing_fails_with_the_reasons(src, tmp_path, capsys):
    out = tmp_path / "out"
    assert prep_main(_argv(src / "train.txt", tmp_path, out)) == 1  # --root is the wrong folder
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "8 of 8 rejected: 8 missing file — is --root the folder that holds the videos?" in err
    assert (out / "rejects.jsonl").exists()


# --------------------------------------------------------------------------- 9: stop signals


@pytest.mark.parametrize("how", ["SIGINT to the process group", "SIGTERM"])
def test_stop_signal_stops_quietly_and_resumes(tmp_path, how):
    root = tmp_path / "src"
    rels = _videos(root, 12)
    lst = _list(root / "train.txt", [f"{r} 0" for r in rels])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prep", *_argv(lst, root, out)]
    cmd[cmd.index("--workers") + 1] = "2"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, VIDKIT_PREP_DELAY="0.3"), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    start = time.time()
    while len(workers := children(proc.pid)) < 2 or not list((out / "shards").glob("*.lmdb")):
        assert proc.poll() is None and time.time() - start < 60
        time.sleep(0.05)
    time.sleep(0.5)
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:  # what Ctrl-C in a terminal does
        os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:  # a prep that hangs must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    signum = signal.SIGTERM if how == "SIGTERM" else signal.SIGINT
    assert proc.returncode == 128 + signum
    assert err.strip().count("\n") == 0, err  # was 68 lines of BrokenPipeError
    assert f"interrupted by {signum.name}" in err and "run the same command again to resume" in err
    assert wait_gone(workers) == []
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    assert sorted(r["id"] for r in open_dataset(str(out)).rows) == sorted(rels)


# --------------------------------------------------------------------------- 10: a full disk


def _leftovers(out) -> list[str]:
    return [str(p) for p in out.rglob("*") if p.name.endswith((".tmp", ".spool"))]


@pytest.mark.parametrize("fmt,where", [("lmdb", "add"), ("arrow", "close")])
def test_full_disk_stops_with_one_line_and_resumes(src, tmp_path, monkeypatch, capsys, fmt, where):
    import prep.store as store

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "add":  # the third video does not fit
        add, calls = store._LmdbShard.add, []

        def add_until_full(self, *args):
            calls.append(1)
            return full() if len(calls) == 3 else add(self, *args)

        monkeypatch.setattr(store._LmdbShard, "add", add_until_full)
    else:  # the closed copy of a shard is half written when the disk fills
        monkeypatch.setattr(store, "_fsync_path", full)
    out = tmp_path / "out"
    argv = _argv(src / "train.txt", src, out, "--format", fmt, "--shard-size", "20K")
    assert prep_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no space left on device while writing" in err and "/shards/part000of001-" in err
    assert _leftovers(out) == [] and not (out / "manifest.jsonl").exists()
    monkeypatch.undo()  # space freed
    assert prep_main(argv) == 0
    ds = open_dataset(str(out))
    assert len(ds) == 8 and _verify(out, 1).returncode == 0


# --------------------------------------------------------------------------- 11: long videos


def _noisy_video(path, frames: int, size=(96, 128)):
    rng = np.random.default_rng(0)
    encode_video(path, (rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(frames)), fps=12,
                 codec="h264", crf=10)


LONG = 64  # frames of ~15 KB each


@pytest.fixture(scope="module")
def long_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    os.makedirs(root / "v")
    _noisy_video(root / "v/long.mp4", LONG)
    _list(root / "train.txt", ["v/long.mp4 0"])
    return root


@pytest.mark.parametrize("fmt", ["lmdb", "arrow"])
def test_long_video_is_stored_in_chunks_and_reads_back(long_src, tmp_path, fmt):
    args = ["--format", fmt, "--short-side", "0"]
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    assert prep_main(_argv(long_src / "train.txt", long_src, whole, *args)) == 0
    assert prep_main(_argv(long_src / "train.txt", long_src, chunked, *args, "--chunk-size", "100K")) == 0
    a, b = open_dataset(str(whole)), open_dataset(str(chunked))
    assert "chunk_frames" not in a.rows[0] and 1 <= b.rows[0]["chunk_frames"] < LONG / 4
    order = [47, 0, 13, 14, 13, 30, 1]
    assert b.frames(0, order, verify=True) == a.frames(0, order) and b.rows[0]["checksum"] == a.rows[0]["checksum"]
    assert _verify(chunked, 1).returncode == 0


def test_memory_stays_at_one_chunk_whatever_the_length(long_src, tmp_path):
    """Peak Python memory while prepping a ~1 MB video (in JPEGs) with 64 KB chunks: it used to hold it all twice
    (the list of frames and the packed value), 1.4 MB here; now about 140 KB."""
    from prep.decode import DecodeOptions
    from prep.runner import JobOptions, run_prep
    from prep.tasks import number_tasks, parse_video_lists

    tasks, classes = parse_video_lists([str(long_src / "train.txt")], str(long_src))
    decode, job = DecodeOptions(short_side=0), JobOptions(progress=False, chunk_bytes=64 << 10)
    run_prep(number_tasks(tasks), classes, str(tmp_path / "warm"), decode, job)  # first-time imports are not prep's
    tracemalloc.start()
    try:
        run_prep(number_tasks(tasks), classes, str(tmp_path / "out"), decode, job)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    total = sum(len(f) for f in open_dataset(str(tmp_path / "out")).frames(0, range(LONG)))
    assert total > 12 * job.chunk_bytes
    assert peak < 4 * job.chunk_bytes, (peak, total)


def test_chunks_of_an_interrupted_video_are_not_taken(long_src, tmp_path, monkeypatch):
    """Killed between the chunks of a video: the re-run stores it whole, the stale chunks are never read."""
    import prep.store as store

    read = store.FrameSpool.read
    seen = []

    def fail_on_third(self, start, stop):
        seen.append(start)
        if len(seen) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return read(self, start, stop)

    for fmt in ("lmdb", "arrow"):
        out = tmp_path / fmt
        argv = _argv(long_src / "train.txt", long_src, out, "--format", fmt, "--short-side", "0", "--chunk-size",
                     "100K")
        seen.clear()
        monkeypatch.setattr(store.FrameSpool, "read", fail_on_third)
        assert prep_main(argv) == 1
        monkeypatch.setattr(store.FrameSpool, "read", read)
        # the re-run chunks differently: a stale chunk read by mistake would show in the frames
        assert prep_main([*argv[:-1], "90K"]) == 0
        ds = open_dataset(str(out))
        assert ds.frames(0, range(LONG), verify=True) and _verify(out, 1).returncode == 0


# --------------------------------------------------------------------------- 12: SSv2 release names


def test_ssv2_release_file_names(tmp_path):
    labels = {"Pushing something from left to right": "0", "Dropping something": "1"}
    ann = tmp_path / "labels"
    ann.mkdir()
    (ann / "something-something-v2-labels.json").write_text(json.dumps(labels))
    item = lambda vid, template: {"id": vid, "label": "x", "template": template, "placeholders": ["x"]}  # noqa: E731
    (ann / "something-something-v2-train.json").write_text(json.dumps([item("1", "Dropping [something]")]))
    (ann / "something-something-v2-validation.json").write_text(
        json.dumps([item("2", "Pushing [something] from left to right")]))
    (ann / "something-something-v2-test.json").write_text(json.dumps([{"id": "3"}]))
    for vid in ("1", "2"):
        os.makedirs(tmp_path / "20bn-something-something-v2", exist_ok=True)
        encode_video(tmp_path / "20bn-something-something-v2" / f"{vid}.webm",
                     render(int(vid), np.random.default_rng(int(vid)), 6, (48, 64)), fps=12, codec="vp9")
    out = tmp_path / "out"
    assert prep_main(["ssv2", "--root", str(tmp_path), "--out", str(out), "--short-side", "32", "--workers", "1",
                      "--no-progress", "--max-rejected", "100"]) == 0  # test video 3 is missing on purpose
    ds = open_dataset(str(out))
    assert ds.classes == list(labels)
    assert {(r["split"], r["id"], r["label"]) for r in ds.rows} == {("train", "1", 1), ("val", "2", 0)}


# --------------------------------------------------------------------------- 13: non-square pixels


def _anamorphic(path, sar: Fraction, size=(48, 64)):
    """A disc on a plain background, coded with `sar`: the disc is drawn squeezed so that it displays round."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((xx - w / 2) * sar) ** 2 + (yy - h / 2) ** 2 < (h / 3) ** 2
    frame = np.where(disc[..., None], np.uint8([250, 40, 40]), np.uint8([20, 20, 120])).astype(np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.sample_aspect_ratio = sar
        for _ in range(6):
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())


def test_sample_aspect_ratio_is_applied(tmp_path):
    os.makedirs(tmp_path / "v")
    _anamorphic(tmp_path / "v/pal.mp4", Fraction(128, 117))
    lst = _list(tmp_path / "train.txt", ["v/pal.mp4 0"])
    for short_side, size in ((0, [70, 48]), (32, [46, 32])):  # 64 * 128/117 = 70 wide at full height
        out = tmp_path / f"out{short_side}"
        argv = _argv(lst, tmp_path, out)
        argv[argv.index("--short-side") + 1] = str(short_side)
        assert prep_main(argv) == 0
        ds = open_dataset(str(out))
        assert ds.rows[0]["orig_size"] == [64, 48] and ds.rows[0]["size"] == size
    red = np.asarray(Image.open(io.BytesIO(ds.frames(0, [0])[0])))[..., 0] > 128
    rows, cols = np.nonzero(red)
    width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert abs(width - height) <= 1, (width, height)  # round, as displayed; it was stored squeezed


def test_a_stop_signal_while_the_pool_starts_leaves_no_worker(monkeypatch, tmp_path):
    """A signal that comes while the workers are forked is held (signals_blocked) and delivered when the mask is
    restored: the workers must be terminated then too, not orphaned."""
    from contextlib import contextmanager

    from prep import runner
    from prep.guard import PrepInterrupted

    started = []

    @contextmanager
    def delivered_on_unblock():
        before = set(children(os.getpid()))
        yield
        started.extend(set(children(os.getpid())) - before)
        raise PrepInterrupted(signal.SIGTERM)  # what the pending SIGTERM's handler raises as the mask is restored

    monkeypatch.setattr(runner, "signals_blocked", delivered_on_unblock)
    # the exception is kept, as the run's top level keeps it while it reports: its traceback holds the generator's
    # frame, so garbage collection of the pool cannot be what stops the workers
    with pytest.raises(PrepInterrupted) as caught:
        list(runner._pool_results([], runner.DecodeOptions(), 2, str(tmp_path)))
    assert len(started) == 2
    assert wait_gone(started, timeout=5) == [], "prep's workers outlived the interrupted run"
    del caught
