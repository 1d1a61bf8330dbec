"""prep's JPEG encoders: colours, chroma subsampling, sizes, aspect ratio and source formats, both paths
("yuv": scaled in YUV, planes to libjpeg-turbo; "pil": the first path, through RGB and Pillow)."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.reformatter import Interpolation
from PIL import Image, JpegImagePlugin

from prep import open_dataset
from prep.decode import chroma_siting, decode_video
from prep.decoded import ENCODERS, DecodeOptions, Decoded
from prep.runner import JobOptions, run_prep
from prep.synthetic import render
from prep.tasks import number_tasks, parse_video_lists

BARS = [(220, 30, 30), (30, 200, 40), (40, 40, 230), (240, 240, 20), (128, 128, 128), (20, 200, 220), (16, 16, 16)]


def _video(path, frames, codec="libx264", pix_fmt="yuv420p", colorspace=None, color_range=None, sar=None,
           options=None) -> str:
    """Encodes RGB frames; colorspace/color_range (AVColorSpace/AVColorRange numbers) convert and tag them."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=12, options=options or {})
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if sar is not None:
            s.codec_context.sample_aspect_ratio = sar
        for tag in ("colorspace", "color_range"):
            if locals()[tag] is not None:
                setattr(s.codec_context, tag, locals()[tag])
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range)
            if colorspace is not None:
                frame.colorspace = colorspace
            if color_range is not None:
                frame.color_range = color_range
            c.mux(s.encode(frame))
        c.mux(s.encode())
    return str(path)


def _clip(frames=4, size=(144, 176), seed=4) -> np.ndarray:
    return render(seed % 10, np.random.default_rng(seed), frames, size)


def _bars() -> np.ndarray:
    img = np.zeros((64, 32 * len(BARS), 3), np.uint8)
    for i, colour in enumerate(BARS):
        img[:, 32 * i:32 * (i + 1)] = colour
    return img


def _decode(path, **opts) -> Decoded:
    result = decode_video(str(path), DecodeOptions(min_frames=1, **opts))
    assert isinstance(result, Decoded), result
    return result


def _rgb(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(np.int16)


def _pyav_rgb(path, size=None) -> list[np.ndarray]:
    """PyAV's own RGB of each frame (its reformat reads the frame's matrix, range and chroma position)."""
    kw = {} if size is None else {"width": size[0], "height": size[1], "interpolation": "AREA"}
    with av.open(str(path)) as c:
        return [f.reformat(format="rgb24", **kw).to_ndarray().astype(np.int16) for f in c.decode(video=0)]


def _exact_rgb(path, size) -> list[np.ndarray]:
    """RGB at full size with exact chroma upsampling and rounding, then area-scaled in RGB."""
    exact = Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND
    with av.open(str(path)) as c:
        return [f.reformat(format="rgb24", interpolation=exact | Interpolation.BICUBIC)
                .reformat(width=size[0], height=size[1], interpolation=exact | Interpolation.AREA).to_ndarray()
                for f in c.decode(video=0)]


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_colours_match_pyav_on_a_limited_range_video(tmp_path, encoder):
    path = _video(tmp_path / "v.mp4", _clip())  # H.264 4:2:0, limited range, untagged (BT.601)
    result = _decode(path, short_side=128, encoder=encoder)
    assert result.meta["size"] == [156, 128]
    ref = _pyav_rgb(path, result.meta["size"])
    got = [_rgb(j) for j in result.frames]
    # both paths measured at 1.6-2.3 (JPEG q90 at 4:2:0 on sharp-edged shapes); a range or matrix mistake is 5-20
    assert np.mean([np.abs(a - b).mean() for a, b in zip(ref, got)]) < 3.0


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("chroma", ["420", "444"])
@pytest.mark.parametrize("colorspace,color_range", [(None, None), (1, 1), (1, 2), (5, 2)],
                         ids=["untagged", "bt709-limited", "bt709-full", "bt601-full"])
def test_flat_colours_survive_every_matrix_and_range(tmp_path, encoder, chroma, colorspace, color_range):
    path = _video(tmp_path / "bars.mp4", [_bars()] * 2, colorspace=colorspace, color_range=color_range,
                  options={"crf": "0"})
    got = _rgb(_decode(path, short_side=0, chroma=chroma, encoder=encoder).frames[0])
    want = _pyav_rgb(path)[0]
    centres = (slice(24, 40), [32 * i + 16 for i in range(len(BARS))])
    assert np.abs(got[centres] - want[centres]).max() <= 4, (got[32, centres[1]], want[32, centres[1]])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_chroma_subsampling_follows_the_size_and_the_option(tmp_path, encoder):
    path = _video(tmp_path / "v.mp4", _clip(frames=2, size=(144, 192)))
    sampling = {}
    for short_side, chroma in ((64, "auto"), (127, "auto"), (128, "auto"), (144, "auto"), (64, "420"),
                               (64, "422"), (144, "444")):
        jpeg = _decode(path, short_side=short_side, chroma=chroma, encoder=encoder).frames[0]
        sampling[short_side, chroma] = JpegImagePlugin.get_sampling(Image.open(io.BytesIO(jpeg)))
    # PIL: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0; auto keeps full chroma below a 128 px short side
    assert sampling == {(64, "auto"): 0, (127, "auto"): 0, (128, "auto"): 2, (144, "auto"): 2, (64, "420"): 2,
                        (64, "422"): 1, (144, "444"): 0}


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("chroma", ["420", "422", "444"])
def test_odd_sizes(tmp_path, encoder, chroma):
    frames = _clip(frames=3, size=(75, 97))
    path = _video(tmp_path / "odd.mkv", frames, codec="ffv1")  # FFV1 takes odd sizes; H.264 4:2:0 does not
    result = _decode(path, short_side=0, chroma=chroma, encoder=encoder)
    got = [_rgb(j) for j in result.frames]
    assert result.meta["size"] == [97, 75] and all(g.shape == (75, 97, 3) for g in got)
    assert np.mean([np.abs(a - b).mean() for a, b in zip(_pyav_rgb(path), got)]) < 3.5


@pytest.mark.parametrize("encoder", ENCODERS)
def test_sample_aspect_ratio_makes_a_circle_round(tmp_path, encoder):
    w, h = 128, 96
    yy, xx = np.mgrid[:h, :w]
    disc = ((xx - w / 2) * 2) ** 2 + (yy - h / 2) ** 2 < 40 ** 2  # a circle squeezed to half its width
    frame = np.where(disc[..., None], np.array([230, 20, 20], np.uint8), np.uint8(235))
    path = _video(tmp_path / "anamorphic.mp4", [frame] * 4, sar=Fraction(2, 1))
    result = _decode(path, short_side=0, encoder=encoder)
    assert result.meta["size"] == [256, 96] and result.meta["sample_aspect"] == "2:1"
    red = _rgb(result.frames[0])[..., 1] < 128
    rows, cols = np.nonzero(red)
    assert abs((cols.max() - cols.min()) - (rows.max() - rows.min())) <= 2


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("codec,pix_fmt", [("libx264", "yuv420p10le"), ("libx264", "yuv422p"), ("ffv1", "bgr0"),
                                           ("ffv1", "gray"), ("mjpeg", "yuvj420p")])
def test_sources_other_than_8_bit_420(tmp_path, encoder, codec, pix_fmt):
    path = _video(tmp_path / "v.mkv", _clip(frames=3), codec=codec, pix_fmt=pix_fmt)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).format.name == pix_fmt
    result = _decode(path, short_side=128, encoder=encoder)
    ref = _pyav_rgb(path, result.meta["size"])
    got = [_rgb(j) for j in result.frames]
    assert len(got) == 3 and got[0].shape == (128, 156, 3)
    assert np.mean([np.abs(a - b).mean() for a, b in zip(ref, got)]) < 3.0


def test_chroma_position_is_read_from_the_decoder(tmp_path):
    """H.264 puts 4:2:0 chroma left of each luma pair, VP9 between them: the yuv encoder has to know which."""
    h264 = _video(tmp_path / "v.mp4", _clip(frames=2))
    vp9 = _video(tmp_path / "v.webm", _clip(frames=2), codec="libvpx-vp9")
    sitings = []
    for path in (h264, vp9):
        with av.open(str(path)) as c:
            sitings.append(chroma_siting(next(c.decode(video=0))))
    assert sitings == ["left", "center"]


@pytest.mark.parametrize("codec,ext", [("libx264", "mp4"), ("libvpx-vp9", "webm")])
def test_yuv_path_is_closer_to_the_picture_than_the_rgb_path(tmp_path, codec, ext):
    """At the same --quality, against an exact reference (not swscale's fast RGB, the old path's own input)."""
    path = _video(tmp_path / f"v.{ext}", _clip(frames=4, seed=2), codec=codec)
    scores = {}
    for encoder in ENCODERS:
        result = _decode(path, short_side=128, encoder=encoder)
        ref = _exact_rgb(path, result.meta["size"])
        scores[encoder] = np.mean([_psnr(a, _rgb(j)) for a, j in zip(ref, result.frames)])
    assert scores["yuv"] > scores["pil"] + 1.0, scores


@pytest.mark.parametrize("encoder", ENCODERS)
def test_quality_is_monotone(tmp_path, encoder):
    path = _video(tmp_path / "v.mp4", _clip(frames=2, seed=1))
    sizes, scores = [], []
    for quality in (40, 60, 80, 90, 97):
        result = _decode(path, short_side=128, quality=quality, encoder=encoder)
        ref = _exact_rgb(path, result.meta["size"])
        sizes.append(sum(map(len, result.frames)))
        scores.append(np.mean([_psnr(a, _rgb(j)) for a, j in zip(ref, result.frames)]))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
    assert scores == sorted(scores), scores


def test_unknown_encoder_is_refused_at_once():
    with pytest.raises(ValueError, match="encoder must be one of yuv, pil"):
        DecodeOptions(encoder="jpegli")


def test_a_run_resumes_under_the_other_encoder(tmp_path):
    """The encoder is not part of a run's identity (like threads): a run prepped before it existed, or with the
    other encoder, resumes instead of being refused."""
    for i in range(2):
        _video(tmp_path / f"v{i}.mp4", _clip(frames=4, seed=i))
    (tmp_path / "train.txt").write_text("v0.mp4 a\nv1.mp4 b\n")
    tasks, classes = parse_video_lists([f"train={tmp_path / 'train.txt'}"], str(tmp_path))
    out, job = str(tmp_path / "out"), JobOptions(progress=False)
    first = run_prep(number_tasks(tasks), classes, out, DecodeOptions(short_side=64, encoder="pil"), job)
    again = run_prep(number_tasks(tasks), classes, out, DecodeOptions(short_side=64, encoder="yuv"), job)
    assert first["stored"] == 2 and again["decoded_now"] == 0 and len(open_dataset(out)) == 2


@pytest.mark.parametrize("encoder", ENCODERS)
def test_the_command_line_chooses_the_encoder(tmp_path, monkeypatch, encoder):
    import prep.__main__ as cli

    seen = []
    monkeypatch.setattr(cli, "run_prep", lambda tasks, classes, out, decode, job: seen.append(decode) or {"stored": 1, "rejected": 0})
    assert cli.main(["synthetic", "--out", str(tmp_path / "out"), "--videos", "10", "--frames", "4", "--size", "32",
                     "--workers", "1", "--no-progress", "--encoder", encoder]) == 0
    assert [d.encoder for d in seen] == [encoder]
