"""prep: real codecs round trip into LMDB/Arrow shards; bad input rejected; resume after a kill; verify."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from av.video.reformatter import Interpolation
from PIL import Image

from procs import children, wait_gone
from prep import open_dataset
from prep.__main__ import main as prep_main
from prep.decode import decode_video
from prep.decoded import DecodeOptions, Decoded, Rejected, keep_by_fps, target_size
from prep.synthetic import encode_video, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clip(seed: int, frames: int = 12, size=(72, 96)) -> np.ndarray:
    return render(seed % 10, np.random.default_rng(seed), frames, size)


def _damage_packet(path, n: int) -> bytes:
    """The file with the n-th packet (in file order) scrambled: the frames before it stay decodable."""
    with av.open(str(path)) as c:
        packets = sorted((p.pos, p.size) for p in c.demux(video=0) if p.size)
    data = bytearray(path.read_bytes())
    pos, size = packets[n]
    for k in range(pos + size // 4, pos + size, 7):
        data[k] ^= 0x5A
    return bytes(data)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A small source tree: H.264 and VP9 videos plus every kind of bad input, and a video list."""
    root = tmp_path_factory.mktemp("src")
    os.makedirs(root / "v")
    lines = []
    for i in range(4):
        for codec, ext in (("h264", "mp4"), ("vp9", "webm")):
            rel = f"v/{codec}_{i}.{ext}"
            encode_video(root / rel, _clip(i), fps=12, codec=codec)
            lines.append(f"{rel} {'left' if i % 2 else 'right'}")
    good = (root / "v/h264_0.mp4").read_bytes()
    (root / "v/empty.mp4").write_bytes(b"")
    (root / "v/text.mp4").write_bytes(b"this is not a video\n" * 50)
    (root / "v/truncated.mp4").write_bytes(good[: len(good) // 2])  # moov atom lost
    (root / "v/corrupt.mp4").write_bytes(_damage_packet(root / "v/h264_0.mp4", 6))
    encode_video(root / "v/short.webm", _clip(9, frames=2), fps=12, codec="vp9")
    lines += ["v/empty.mp4 left", "v/text.mp4 left", "v/truncated.mp4 left", "v/missing.mp4 left",
              "v/other.mp4 jump", "v/h264_0.mp4 right"]  # unknown label, then a duplicate id
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("right\nleft\n")
    (root / "val.txt").write_text("v/vp9_0.webm right\nv/corrupt.mp4 left\nv/short.webm left\n")
    return root


def _prep(src, out, *extra):
    argv = ["videos", "--list", str(src / "train.txt"), "--list", str(src / "val.txt"), "--root", str(src),
            "--classes", str(src / "classes.txt"), "--out", str(out), "--short-side", "48", "--workers", "1", "--no-progress",
            "--max-rejected", "100", *extra]  # 8 of 17 rejected on purpose
    assert prep_main(argv) == 0


@pytest.fixture(scope="module")
def prepped(src, tmp_path_factory):
    outs = {}
    for fmt in ("lmdb", "arrow"):
        outs[fmt] = tmp_path_factory.mktemp(fmt)
        _prep(src, outs[fmt], "--format", fmt)
    return outs


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def _direct_decode(path, size) -> list[np.ndarray]:
    """Each frame to RGB at full size with exact chroma upsampling and rounding, then area-scaled to `size` in RGB.
    (swscale's fast scaled RGB, the reference until prep scaled in YUV, is itself 34-40 dB from it on these clips.)"""
    exact = Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
    with av.open(str(path)) as c:
        return [f.reformat(format="rgb24", interpolation=exact | Interpolation.BICUBIC)
                .reformat(width=size[0], height=size[1], interpolation=exact | Interpolation.AREA).to_ndarray()
                for f in c.decode(video=0)]


@pytest.mark.parametrize("codec,ext", [("h264", "mp4"), ("vp9", "webm")])
def test_stored_frames_match_direct_decode(prepped, src, codec, ext):
    ds = open_dataset(str(prepped["lmdb"]))
    i = next(i for i in range(len(ds)) if ds.record(i)["id"] == f"v/{codec}_2.{ext}")
    rec = ds.record(i)
    assert rec["num_frames"] == 12 and rec["orig_size"] == [96, 72] and rec["size"] == [64, 48]
    direct = _direct_decode(src / rec["id"], rec["size"])
    stored = [np.asarray(Image.open(io.BytesIO(b))) for b in ds.frames(i, range(rec["num_frames"]))]
    assert len(direct) == len(stored) == 12
    assert min(_psnr(a, b) for a, b in zip(direct, stored)) > 35.0


def test_lmdb_and_arrow_hold_the_same_frames(prepped):
    a, b = open_dataset(str(prepped["lmdb"])), open_dataset(str(prepped["arrow"]))
    assert [a.record(i)["id"] for i in range(len(a))] == [b.record(i)["id"] for i in range(len(b))]
    for i in range(len(a)):
        n = a.record(i)["num_frames"]
        assert a.frames(i, range(n)) == b.frames(i, range(n), verify=True)
        assert a.record(i)["checksum"] == b.record(i)["checksum"]


def test_manifest_rows_and_rejects(prepped, src):
    out = prepped["lmdb"]
    ds = open_dataset(str(out))
    rows = [ds.record(i) for i in range(len(ds))]
    assert sorted(r["id"] for r in rows if r["split"] == "train") == sorted(
        f"v/{c}_{i}.{e}" for i in range(4) for c, e in (("h264", "mp4"), ("vp9", "webm")))
    for r in rows:
        assert set(r) >= {"id", "split", "label", "label_name", "num_frames", "fps", "orig_size", "size",
                          "shard", "checksum"}
        assert ds.classes[r["label"]] == r["label_name"]
    rejected = map(json.loads, Path(out / "rejects.jsonl").read_text().splitlines())
    rejects = {(r["id"], r["split"]): r["reason"] for r in rejected}
    assert rejects[("v/empty.mp4", "train")] == "zero-length file"
    assert rejects[("v/missing.mp4", "train")] == "missing file"
    assert rejects[("v/text.mp4", "train")].startswith("unreadable")
    assert rejects[("v/truncated.mp4", "train")].startswith("unreadable")
    assert "unknown label" in rejects[("v/other.mp4", "train")]
    assert "duplicate" in rejects[("v/h264_0.mp4", "train")]
    assert "(< 4)" in rejects[("v/short.webm", "val")]  # 2 frames: too short to use
    # the partly corrupt video keeps only its clean leading frames, never garbage
    val = {r["id"]: r for r in rows if r["split"] == "val"}
    n = val["v/corrupt.mp4"]["num_frames"]
    i = rows.index(val["v/corrupt.mp4"])
    clean = _direct_decode(src / "v/h264_0.mp4", val["v/corrupt.mp4"]["size"])[:n]
    got = [np.asarray(Image.open(io.BytesIO(b))) for b in ds.frames(i, range(n))]
    assert 4 <= n < 12 and min(_psnr(a, b) for a, b in zip(clean, got)) > 35.0


def test_corrupt_h264_keeps_only_clean_frames(src):
    result = decode_video(str(src / "v/corrupt.mp4"), DecodeOptions(short_side=0, min_frames=1))
    assert isinstance(result, Decoded) and result.notes and result.meta["num_frames"] == 6
    with_min = decode_video(str(src / "v/corrupt.mp4"), DecodeOptions(short_side=0, min_frames=8))
    assert isinstance(with_min, Rejected) and "clean frames" in with_min.reason
    as_video = decode_video(str(src / "v/corrupt.mp4"), DecodeOptions(store="video"))
    assert isinstance(as_video, Rejected) and "partly corrupt" in as_video.reason


def test_verify_names_a_flipped_byte(prepped, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepped["lmdb"], out)
    ds = open_dataset(str(out))
    rec = ds.record(3)
    blob = ds.frames(3, [5])[0]
    shard = out / "shards" / rec["shard"]
    data = bytearray(shard.read_bytes())
    at = data.find(blob)
    assert at >= 0
    data[at + len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = subprocess.run([sys.executable, "-m", "prep", "verify", str(out), "--workers", "1"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    damaged = [line for line in proc.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 1 and rec["id"] in damaged[0] and "frame 5" in damaged[0]
    ok = subprocess.run([sys.executable, "-m", "prep", "verify", str(prepped["arrow"])], capture_output=True,
                        cwd=ROOT)
    assert ok.returncode == 0


def test_store_video_keeps_the_encoded_bytes(src, prepped, tmp_path):
    _prep(src, tmp_path / "vid", "--store", "video")
    ds = open_dataset(str(tmp_path / "vid"), split="train")
    rec = ds.record(1)
    assert rec["store"] == "video" and rec["num_frames"] == 12
    assert ds.video(1, verify=True) == (src / rec["id"]).read_bytes()
    frames_only = open_dataset(str(prepped["lmdb"]))
    with pytest.raises(ValueError, match="stores JPEG frames"):
        frames_only.video(0)


def test_parts_and_merge_equal_a_single_run(src, prepped, tmp_path):
    out = tmp_path / "parts"
    for part in ("0/3", "2/3"):
        _prep(src, out, "--part", part)
    assert not (out / "manifest.jsonl").exists()
    assert prep_main(["merge", str(out)]) == 2  # part 1 missing: one-line error
    _prep(src, out, "--part", "1/3")
    assert prep_main(["merge", str(out)]) == 0
    merged, single = open_dataset(str(out)), open_dataset(str(prepped["lmdb"]))
    strip = lambda r: {k: v for k, v in r.items() if k not in ("shard", "shard_id")}  # noqa: E731
    assert [strip(merged.record(i)) for i in range(len(merged))] == [strip(single.record(i)) for i in range(len(single))]
    assert merged.frames(2, [0, 3]) == single.frames(2, [0, 3])


def test_rerun_with_other_arguments_is_refused(prepped, src, capsys):
    argv = ["videos", "--list", str(src / "train.txt"), "--list", str(src / "val.txt"), "--root", str(src),
            "--classes", str(src / "classes.txt"), "--out", str(prepped["lmdb"]), "--short-side", "64", "--no-progress"]
    assert prep_main(argv) == 2
    assert "other arguments" in capsys.readouterr().err


def test_rerun_of_a_finished_job_changes_nothing(prepped, src):
    before = (prepped["arrow"] / "manifest.jsonl").read_text()
    _prep(src, prepped["arrow"], "--format", "arrow")
    assert (prepped["arrow"] / "manifest.jsonl").read_text() == before


@pytest.mark.parametrize("fmt", ["lmdb", "arrow"])
def test_resume_after_kill(tmp_path, fmt):
    root = tmp_path / "src"
    os.makedirs(root / "v")
    lines = []
    for i in range(40):
        encode_video(root / f"v/{i}.mp4", _clip(i, frames=8, size=(48, 64)), fps=12, codec="h264")
        lines.append(f"v/{i}.mp4 {i % 3}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prep", "videos", "--list", str(root / "train.txt"), "--root", str(root),
           "--out", str(out), "--format", fmt, "--workers", "1", "--short-side", "32", "--no-progress",
           "--shard-size", "40K"]
    env = dict(os.environ, VIDKIT_PREP_DELAY="0.05")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_shards(out / "shards", proc, fmt)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.jsonl").exists(), "the kill should land mid-run"
    if fmt == "arrow":  # a kill in the middle of a write leaves half a batch at the end of the open shard
        open_shard = next((out / "shards").glob("*.arrows"))
        open_shard.write_bytes(open_shard.read_bytes() + b"\x01\x02partial")
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = open_dataset(str(out))
    assert sorted(resumed.record(i)["id"] for i in range(len(resumed))) == sorted(f"v/{i}.mp4" for i in range(40))
    reference = tmp_path / "ref"
    subprocess.run(cmd[:cmd.index("--out") + 1] + [str(reference)] + cmd[cmd.index("--out") + 2:], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ref = open_dataset(str(reference))
    for i in range(len(ref)):
        assert resumed.record(i)["checksum"] == ref.record(i)["checksum"]
        assert resumed.frames(i, range(8), verify=True) == ref.frames(i, range(8))
    assert subprocess.run([sys.executable, "-m", "prep", "verify", str(out)], cwd=ROOT,
                          capture_output=True).returncode == 0


def test_killed_prep_leaves_no_workers(tmp_path):
    root = tmp_path / "src"
    os.makedirs(root / "v")
    for i in range(12):
        encode_video(root / f"v/{i}.mp4", _clip(i, frames=8, size=(48, 64)), fps=12, codec="h264")
    (root / "train.txt").write_text("".join(f"v/{i}.mp4 0\n" for i in range(12)))
    cmd = [sys.executable, "-m", "prep", "videos", "--list", str(root / "train.txt"), "--root", str(root),
           "--out", str(tmp_path / "out"), "--workers", "2", "--short-side", "32", "--no-progress"]
    env = dict(os.environ, VIDKIT_PREP_DELAY="0.5")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.time()
    while len(workers := children(proc.pid)) < 2:
        assert proc.poll() is None and time.time() - start < 60, "prep ended before its pool started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_gone(workers) == [], "prep's decode workers outlived the killed job"


def _wait_for_shards(shard_dir, proc, fmt, timeout=60.0):
    """Until one shard is closed and the next one open, so the kill lands between shards' lifetimes."""
    closed_suffix, open_suffix = (".lmdb", ".lmdb") if fmt == "lmdb" else (".arrow", ".arrows")
    start = time.time()
    while time.time() - start < timeout:
        names = [p.name for p in shard_dir.iterdir()] if shard_dir.exists() else []
        closed = [n for n in names if n.endswith(closed_suffix)]
        opened = [n for n in names if n.endswith(open_suffix)]
        if (len(closed) >= 2 if fmt == "lmdb" else closed and opened):
            return
        assert proc.poll() is None, "prep finished before it could be killed"
        time.sleep(0.01)
    raise AssertionError("prep made no progress")


def test_keep_by_fps_and_target_size():
    times = [i / 30 for i in range(90)]
    kept = keep_by_fps(times, 10, 30)
    assert len(kept) == 30 and kept[:3] == [0, 3, 6]
    assert keep_by_fps(times, 60, 30) == list(range(90))  # never duplicates frames
    assert target_size(1920, 1080, 256) == (456, 256)
    assert target_size(240, 427, 256) == (256, 456)
    assert target_size(320, 240, 0) == (320, 240)


def test_bad_arguments_are_one_line_errors(src, tmp_path, capsys):
    assert prep_main(["videos", "--list", str(tmp_path / "nope.txt"), "--root", str(src),
                      "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prep: error:") and "nope.txt" in err and "\n" not in err
    with pytest.raises(SystemExit):
        prep_main(["videos", "--list", "x", "--root", ".", "--out", "o", "--part", "3/2"])


def test_two_readers_of_one_folder_in_one_process(prepped):
    train, val = open_dataset(str(prepped["lmdb"]), "train"), open_dataset(str(prepped["lmdb"]), "val")
    assert train.frames(0, [0]) and val.frames(0, [0])
    again = open_dataset(str(prepped["lmdb"]), "train")
    assert again.frames(0, [1]) == train.frames(0, [1])
