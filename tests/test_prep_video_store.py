"""prep.video_store: the codec facts recorded with --store video, NVDEC's refusals at prep and load time, and
--store video --reencode. CPU only: what NVDEC would do is decided from the stream facts."""
import io
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from models.registry import InputContract
from pipelines import build_loader
from prep import open_dataset
from prep.__main__ import main as prep_main
from prep.video_store import REENCODE_GOP, check_store, reencode, refusal, stream_info

from helpers import ordinary_scheduling, prep_store, run_epoch, synthetic_store


def _encode(path, encoder: str, pix_fmt: str, size=(144, 192), frames: int = 12, options=None) -> str:
    """A moving ramp in any encoder and pixel format PyAV has."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width]
    with ordinary_scheduling(), av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=12, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            image = np.stack([(xs * 4 + i * 8) % 256, ys * 2 % 256, np.full_like(xs, 100)], -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


QUIET_X265 = {"x265-params": "log-level=none"}
# file, encoder, pixel format, options, what refusal() names (None: NVDEC decodes it)
STREAMS = [
    ("high.mp4", "libx264", "yuv420p", {}, None),
    ("high10.mp4", "libx264", "yuv420p10le", {}, "High 10"),
    ("high422.mp4", "libx264", "yuv422p", {}, "High 4:2:2"),
    ("vp9p0.webm", "libvpx-vp9", "yuv420p", {}, None),
    ("vp9p1.webm", "libvpx-vp9", "yuv444p", {}, "Profile 1"),
    ("av1.mp4", "libsvtav1", "yuv420p", {}, "AV1"),
    ("hevc.mp4", "libx265", "yuv420p", QUIET_X265, None),
    ("hevc10.mp4", "libx265", "yuv420p10le", QUIET_X265, "Main 10"),
    ("mpeg4.avi", "mpeg4", "yuv420p", {}, None),
]


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """The STREAMS (192x144: within every codec's NVDEC size limits) as a video list with classes, ready for prep."""
    src = tmp_path_factory.mktemp("codecs")
    (src / "videos").mkdir()
    for name, encoder, pix_fmt, options, _ in STREAMS:
        _encode(src / "videos" / name, encoder, pix_fmt, options=options)
    (src / "train.txt").write_text("".join(f"videos/{name} a\n" for name, *_ in STREAMS))
    (src / "classes.txt").write_text("a\n")
    return src


def test_stream_facts_and_refusals(streams):
    for name, _, pix_fmt, _, refused in STREAMS:
        info = stream_info(str(streams / "videos" / name))
        assert info["pix_fmt"] == pix_fmt and info["bit_depth"] == (10 if "10" in pix_fmt else 8)
        why = refusal(info)
        assert (why is None) if refused is None else (refused in why), (name, info, why)
    assert stream_info(Path(streams / "videos" / "av1.mp4").read_bytes())["codec"] == "av1"  # not the decoder's name


def test_refusal_rules_from_manifest_facts():
    assert refusal({"codec": "h264", "profile": "High", "pix_fmt": "yuv420p", "bit_depth": 8}) is None
    assert refusal({"codec": "h264"}) is None  # an older row: only what it records is checked
    assert "mpeg2video" in refusal({"codec": "mpeg2video"})
    assert "8-bit 4:2:0" in refusal({"codec": "vp8", "pix_fmt": "yuva420p"})
    assert "12 bits" in refusal({"codec": "hevc", "profile": "Main", "bit_depth": 12})
    assert refusal({"codec": "vp9", "profile": "Profile 0"}, (64, 48)).startswith("vp9 frames of 64x48")
    assert refusal({"codec": "vp9", "profile": "Profile 0"}, (426, 240)) is None
    assert refusal({"codec": "h264"}, (64, 48)) is None and "4097x2160" in refusal({"codec": "h264"}, (4097, 2160))
    assert "144x144" in refusal({"codec": "hevc"}, (128, 128))


def test_store_video_records_facts_and_rejects_what_nvdec_cannot_decode(streams, tmp_path):
    out = prep_store(str(streams), [f"train={streams / 'train.txt'}"], str(tmp_path / "video"), "video")
    rows = {r["id"]: r for r in open_dataset(out).rows}
    rejected = map(json.loads, Path(out, "rejects.jsonl").read_text().splitlines())
    rejects = {r["id"]: r["reason"] for r in rejected}
    for name, _, pix_fmt, _, refused in STREAMS:
        key = f"videos/{name}"
        if refused is None:
            assert rows[key]["pix_fmt"] == pix_fmt and rows[key]["bit_depth"] == 8 and rows[key]["profile"]
        else:
            assert key not in rows and "NVDEC cannot decode" in rejects[key] and refused in rejects[key]
            assert "--reencode" in rejects[key]
    check_store(out, list(rows.values()))  # what was stored passes the loader's check


def test_reencode_stores_every_readable_video_as_short_gop_h264(streams, tmp_path, capsys):
    out = str(tmp_path / "reencoded")
    argv = ["videos", "--list", f"train={streams / 'train.txt'}", "--root", str(streams), "--out", out,
            "--store", "video", "--reencode", "--short-side", "64", "--workers", "1", "--no-progress",
            "--min-frames", "2"]
    assert prep_main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["merged"]["max_size"] == [86, 64]  # the largest stored frame: nvJPEG's preallocation hint
    ds = open_dataset(out)
    assert len(ds) == len(STREAMS) and not Path(os.path.join(out, "rejects.jsonl")).read_text()
    for i, row in enumerate(ds.rows):
        assert (row["codec"], row["profile"], row["pix_fmt"], row["bit_depth"]) == ("h264", "High", "yuv420p", 8)
        assert row["size"] == [86, 64] and row["orig_size"] == [192, 144] and row["num_frames"] == 12
        assert row["reencoded_from"] in {"h264", "vp9", "av1", "hevc", "mpeg4"} and refusal(row, row["size"]) is None
        keys, reordered = _keyframes(ds.video(i, verify=True))
        assert keys == list(range(0, 12, REENCODE_GOP)) and not reordered
    assert prep_main(argv) == 0  # the same command resumes (nothing to do) under the same job signature


def _keyframes(data: bytes) -> tuple[list[int], bool]:
    """(indices of the keyframes in decode order, whether any frame is decoded out of display order)."""
    with av.open(io.BytesIO(data)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    return [i for i, p in enumerate(packets) if p.is_keyframe], any(p.pts != p.dts for p in packets)


def test_reencode_needs_store_video(streams, tmp_path, capsys):
    argv = ["videos", "--list", f"train={streams / 'train.txt'}", "--root", str(streams), "--out",
            str(tmp_path / "x"), "--reencode", "--no-progress"]
    assert prep_main(argv) == 2 and "--store video" in capsys.readouterr().err


def test_reencode_keeps_the_picture_and_frame_order(tmp_path):
    """Re-encoded at the stored size, each frame stays close to the source's frame of the same index."""
    src = _encode(tmp_path / "src.mp4", "libx264", "yuv420p", size=(96, 128), frames=20)
    data, meta = reencode(src, 0, "h264")
    assert meta["num_frames"] == 20 and meta["size"] == [128, 96] and meta["fps"] == 12.0
    with av.open(src) as a, av.open(io.BytesIO(data)) as b:
        original = [f.to_ndarray(format="rgb24").astype(float) for f in a.decode(video=0)]
        again = [f.to_ndarray(format="rgb24").astype(float) for f in b.decode(video=0)]
    same = np.mean([np.abs(x - y).mean() for x, y in zip(original, again)])
    shifted = np.mean([np.abs(x - y).mean() for x, y in zip(original[1:], again[:-1])])
    assert same < 2.0 and shifted > 3 * same, (same, shifted)
    with pytest.raises(ValueError, match="re-encode"):
        reencode(src, 0, "av1")


def test_reencoded_vp9_store_decodes_on_the_cpu_path_like_the_frames(tmp_path):
    """The CPU stand-in for the NVDEC store: DALI's CPU decoder reads the re-encoded VP9 at the sampled indices."""
    frames = synthetic_store(tmp_path, "vp9", "frames")
    src = tmp_path / "src-vp9"
    out = str(tmp_path / "vp9-reencoded")
    assert prep_main(["videos", "--list", f"val={src / 'val.txt'}", "--root", str(src), "--out", out, "--store",
                      "video", "--reencode", "vp9", "--short-side", "0", "--workers", "1", "--no-progress"]) == 0
    assert {r["codec"] for r in open_dataset(out).rows} == {"vp9"}
    contract = InputContract("NCTHW", num_frames=4, crop_size=32, sampling="dense", frame_stride=3)
    outs = [run_epoch(build_loader(d, "val", contract, 4, False, clips=2, py_workers=1))["clips"]
            for d in (out, frames)]
    same = np.abs(outs[0] - outs[1]).mean()
    shifted = np.abs(outs[0][:, :, 1:] - outs[1][:, :, :-1]).mean()
    assert same < 0.06 and same < shifted / 3, (same, shifted)


def test_loader_refuses_a_store_nvdec_cannot_decode_before_building(base_vp9, tmp_path):
    """device_id given: the check runs before anything touches CUDA, so it is tested here without a GPU."""
    contract = InputContract("NCTHW", num_frames=4, crop_size=32)
    with pytest.raises(ValueError, match=r"8 of 8 videos that NVDEC cannot decode .*vp9 frames of 64x48"):
        build_loader(base_vp9, "train", contract, 2, True, device_id=0)
    ds = open_dataset(base_vp9, "train")
    ds.rows = [dict(r, size=[426, 240]) for r in ds.rows]
    ds.rows[2]["profile"] = "Profile 2"
    with pytest.raises(ValueError, match="1 of 8 videos .*profile Profile 2.*--reencode"):
        build_loader(ds, "train", contract, 2, True, device_id=0)
    assert build_loader(base_vp9, "train", contract, 2, True).path == "video"  # the CPU decoder reads them


@pytest.fixture(scope="module")
def base_vp9(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("nvdec"), "vp9", "video")


@pytest.mark.gpu
def test_reencoded_h264_store_trains_on_gpu(gpu_data, tmp_path):
    frames, _ = gpu_data
    src = os.path.join(os.path.dirname(frames), "src-vp9-256p")
    out = str(tmp_path / "h264-reencoded")
    assert prep_main(["videos", "--list", f"train={src}/train.txt", "--root", src, "--out", out, "--store", "video",
                      "--reencode", "--short-side", "256", "--workers", "2", "--no-progress"]) == 0
    contract = InputContract("NCTHW", num_frames=4, crop_size=112)
    batch = next(iter(build_loader(out, "train", contract, 4, True, device_id=0, py_workers=1,
                                   dtype=torch.bfloat16)))
    assert batch["clips"].is_cuda and batch["clips"].shape == (4, 3, 4, 112, 112)
    assert batch["clips"].float().std() > 0.1



def test_reencode_can_thin_the_frame_rate(tmp_path):
    """DALI's decoders decode up to the last sampled frame, so fewer stored frames is less decoding per clip."""
    src = _encode(tmp_path / "src.mp4", "libx264", "yuv420p", frames=24)  # 12 fps
    data, meta = reencode(src, 64, "h264", fps=6)
    assert meta["num_frames"] == 12 and meta["fps"] == 6.0 and meta["size"] == [86, 64]
    assert stream_info(data)["codec"] == "h264" and _keyframes(data)[0] == [0, 8]


# --------------------------------------------------------------------------------------------- cutting to the clip


def test_needed_frames_run_from_each_keyframe_to_its_sampled_frame():
    from pipelines.gops import needed_frames

    assert needed_frames([10, 3, 20], 8).tolist() == [0, 1, 2, 3, 8, 9, 10, 16, 17, 18, 19, 20]
    assert needed_frames([16, 16], 8).tolist() == [16]


def _dali_cpu_decode(data: bytes, frames) -> np.ndarray:
    from nvidia.dali import fn, pipeline_def

    encoded = np.frombuffer(data, np.uint8)
    frames = np.asarray(frames, np.int32)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def decode():
        return fn.decoders.video(fn.external_source(source=lambda info: encoded, batch=False), frames=frames,
                                 device="cpu")

    pipe = decode()
    pipe.build()
    return np.array(pipe.run()[0].as_tensor())[0]


def test_cut_stream_decodes_to_the_same_frames(tmp_path):
    """The cut stream holds only the frames from each sampled frame's keyframe to it, and decodes (DALI's CPU
    decoder for VP9, PyAV for H.264) to exactly the frames of the whole stream."""
    from pipelines.gops import cut_stream

    src = _encode(tmp_path / "src.mp4", "libx264", "yuv420p", size=(128, 160), frames=60)
    indices = np.array([5, 21, 22, 40, 59, 5])
    for codec in ("vp9", "h264"):
        whole, _ = reencode(src, 0, codec)
        cut, remapped = cut_stream(whole, indices, REENCODE_GOP, codec)
        assert remapped.tolist() == [5, 11, 12, 13, 17, 5] and len(cut) < len(whole) / 2  # 0-5, 16-22, 40, 56-59
        if codec == "vp9":
            np.testing.assert_array_equal(_dali_cpu_decode(cut, remapped), _dali_cpu_decode(whole, indices))
        else:
            with av.open(io.BytesIO(whole)) as a, av.open(io.BytesIO(cut)) as b:
                full = [f.to_ndarray(format="rgb24") for f in a.decode(video=0)]
                part = [f.to_ndarray(format="rgb24") for f in b.decode(video=0)]
            assert len(part) == 18
            for i, j in zip(indices, remapped):
                np.testing.assert_array_equal(part[j], full[i])


def test_a_stream_that_cannot_be_cut_is_a_damaged_entry(tmp_path):
    from pipelines.gops import cut_stream
    from prep import DamagedEntry

    whole, _ = reencode(_encode(tmp_path / "src.mp4", "libx264", "yuv420p", frames=16), 0, "h264")
    with pytest.raises(DamagedEntry, match="fewer than the clip needs"):
        cut_stream(whole, [30], REENCODE_GOP, "h264")
    with pytest.raises(DamagedEntry, match="cannot cut"):
        cut_stream(b"not a video at all" * 10, [3], REENCODE_GOP, "h264")
