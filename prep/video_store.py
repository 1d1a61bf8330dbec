"""Encoded videos for the GPU decoder (NVDEC, DALI's `mixed` video decoder): what it decodes, and re-encoding.

NVDEC fails inside DALI on a stream it cannot decode, and that error stops the whole pipeline (the damaged-sample
replacement never sees it). So `prep --store video` records each stored stream's codec, profile, pixel format and
bit depth in the manifest and rejects, with the reason, a video that no NVDEC decodes; the loader refuses a store
holding one before it builds anything (`check_store`). The rules are those every GPU DALI's NVDEC path supports
has in common, A100 and H100 included (NVIDIA Video Codec SDK support matrix; DALI 2.4's decoders.video):
  - 8-bit 4:2:0 only (yuv420p / yuvj420p / nv12): no High 10, 4:2:2 or 4:4:4 H.264, no VP9 profile 1-3, no
    HEVC Main 10 / RExt;
  - codecs H.264 (Baseline, Main, High), HEVC (Main), VP8, VP9 (profile 0), MPEG-4 part 2; AV1 is refused (the
    NVDEC of A100 and H100 has no AV1);
  - frame sizes within the codec's limits (checked by the loader: the CPU path reads small videos fine).

`--store video --reencode` (`reencode`) makes any readable video decodable and cheap to sample: one pass with
PyAV to the stored short side, H.264 High 8-bit 4:2:0, a keyframe every `REENCODE_GOP` frames and no B-frames,
so a clip decodes only the few frames between each sampled index and the keyframe before it. `vp9` re-encodes
the same way for DALI's CPU video decoder (its FFmpeg has no H.264).
"""
from __future__ import annotations

import hashlib
import io
import logging
from fractions import Fraction

import av

from .decoded import Decoded, FpsKeeper, Rejected, display_size, sample_aspect, target_size

log = logging.getLogger("prep")

EIGHT_BIT_420 = ("yuv420p", "yuvj420p", "nv12")
# codec -> (profiles accepted, lowercase; None: any), (min width, min height), (max width, max height)
NVDEC_RULES = {
    "h264": (("baseline", "constrained baseline", "main", "extended", "high"), (48, 16), (4096, 4096)),
    "hevc": (("main",), (144, 144), (8192, 8192)),
    "vp8": (None, (48, 16), (4096, 4096)),
    "vp9": (("profile 0",), (128, 128), (8192, 8192)),
    "mpeg4": (("simple profile", "advanced simple profile"), (48, 16), (2032, 2032)),
}
NOT_ON_EVERY_NVDEC = {"av1": "AV1, which the NVDEC of A100 and H100 GPUs does not decode"}
REENCODE_CODECS = ("h264", "vp9")
REENCODE_GOP = 8  # frames per keyframe: a sampled frame is at most 7 decodes away from one


def stream_info(source) -> dict:
    """codec, profile, pix_fmt and bit_depth of the first video stream of `source` (a path or encoded bytes)."""
    with av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as container:
        ctx = container.streams.video[0].codec_context
        fmt = ctx.format
        # the codec's canonical name, not the decoder's: AV1 decodes through "libdav1d"
        return {"codec": ctx.codec.canonical_name, "profile": ctx.profile or "", "pix_fmt": fmt.name if fmt else "",
                "bit_depth": max((c.bits for c in fmt.components), default=0) if fmt else 0}


def refusal(info: dict, size=None) -> str | None:
    """Why NVDEC cannot decode a stream with these facts (a manifest row or `stream_info`), or None. Facts a row
    lacks (older preps recorded the codec only) are not held against it; `size` = (width, height) adds the codec's
    frame-size limits."""
    codec = str(info.get("codec") or "")
    if codec in NOT_ON_EVERY_NVDEC:
        return f"codec {NOT_ON_EVERY_NVDEC[codec]}"
    if codec not in NVDEC_RULES:
        return f"codec {codec or 'unknown'}, which DALI's GPU video decoder does not handle " \
               f"({', '.join(NVDEC_RULES)} do)"
    profiles, low, high = NVDEC_RULES[codec]
    profile = str(info.get("profile") or "")
    if profiles and profile and profile.lower() not in profiles:
        return f"{codec} profile {profile} (NVDEC decodes {', '.join(profiles)})"
    pix_fmt, depth = info.get("pix_fmt"), info.get("bit_depth")
    if pix_fmt and pix_fmt not in EIGHT_BIT_420:
        return f"{codec} pixel format {pix_fmt} (NVDEC decodes 8-bit 4:2:0 only)"
    if depth and depth != 8:
        return f"{codec} at {depth} bits (NVDEC decodes 8-bit 4:2:0 only)"
    if size is not None:
        width, height = size
        if not (low[0] <= width <= high[0] and low[1] <= height <= high[1]):
            return f"{codec} frames of {width}x{height} (NVDEC decodes {low[0]}x{low[1]} to {high[0]}x{high[1]})"
    return None


def check_store(root: str, rows: list[dict]) -> None:
    """One-line ValueError when a video store holds any stream NVDEC cannot decode."""
    bad = [(r, why) for r in rows if (why := refusal(r, r.get("size"))) is not None]
    if bad:
        row, why = bad[0]
        raise ValueError(f"{root} holds {len(bad)} of {len(rows)} videos that NVDEC cannot decode (first: "
                         f"{row['id']}: {why}): prep again with --store video --reencode, or --store frames")
    if rows and not any("pix_fmt" in r for r in rows):
        log.warning("%s was prepped before prep recorded profiles and pixel formats: only codecs and sizes were "
                    "checked for NVDEC", root)


# --------------------------------------------------------------------------------------------- storing


def store_video(path: str, count: int, rate: float, size, opts):
    """prep --store video: the source bytes with their stream facts (rejected if NVDEC cannot decode them), or
    with opts.reencode the re-encoded video. Returns decoded.Decoded or decoded.Rejected."""
    if opts.reencode:
        return _reencoded(path, size, opts)
    with open(path, "rb") as f:
        data = f.read()
    info = stream_info(path)
    why = refusal(info)
    if why:
        return Rejected(f"NVDEC cannot decode {why}: prep with --store video --reencode, or --store frames")
    meta = {"num_frames": count, "fps": round(float(rate), 4), "orig_size": list(size), "size": list(size),
            "checksum": hashlib.sha1(data).hexdigest(), **info}
    return Decoded(meta=meta, video=data)


def _reencoded(path: str, size, opts):
    try:
        data, meta = reencode(path, opts.short_side, opts.reencode, fps=opts.fps, threads=opts.threads)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        return Rejected(f"re-encoding failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    if meta["num_frames"] < opts.min_frames:
        return Rejected(f"only {meta['num_frames']} frames (< {opts.min_frames})")
    meta.update(orig_size=list(size), checksum=hashlib.sha1(data).hexdigest(), **stream_info(data))
    return Decoded(meta=meta, video=data)


def _encoder_options(codec: str, gop: int, crf: int | None) -> tuple[str, str, dict]:
    """(encoder, container format, options): a keyframe every `gop` frames exactly, no frame reordering."""
    if codec == "h264":
        crf = 18 if crf is None else crf  # about JPEG quality 90's PSNR at a third of its bytes (docs/benchmarks.md)
        return "libx264", "mp4", {"crf": str(crf), "preset": "fast", "profile": "high", "tune": "fastdecode",
                                  "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
    if codec == "vp9":
        crf = 24 if crf is None else crf
        # no alternate reference frames: VP9's hidden frames play the part of B-frames
        return "libvpx-vp9", "webm", {"crf": str(crf), "b": "0", "g": str(gop), "keyint_min": str(gop),
                                      "deadline": "good", "cpu-used": "5", "auto-alt-ref": "0",
                                      "lag-in-frames": "0", "row-mt": "1"}
    raise ValueError(f"cannot re-encode to {codec!r}: choose one of {REENCODE_CODECS}")


def reencode(path: str, short_side: int, codec: str = "h264", gop: int = REENCODE_GOP, fps: float | None = None,
             crf: int | None = None, threads: int = 1) -> tuple[bytes, dict]:
    """(encoded bytes, meta: num_frames, fps, size) of `path` decoded and encoded again in 8-bit 4:2:0 `codec`,
    its short side at `short_side` (0: kept, square pixels), about `fps` frames per second (None: all)."""
    encoder, container_format, options = _encoder_options(codec, gop, crf)
    out = io.BytesIO()
    with av.open(path, metadata_errors="ignore") as src:
        stream = src.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        source_codec, keeper = stream.codec_context.codec.canonical_name, FpsKeeper(fps, rate)
        out_rate = Fraction(keeper.fps or rate).limit_denominator(1001)
        with av.open(out, "w", format=container_format, options={"fflags": "+bitexact"}) as dst:
            enc, count, shape = None, 0, None
            for n, frame in enumerate(src.decode(stream)):
                if enc is None:
                    shape = target_size(*display_size(frame.width, frame.height, sample_aspect(stream)), short_side)
                    enc = _open_encoder(dst, encoder, out_rate, shape, options, threads)
                t = frame.time if frame.time is not None else n / rate
                if not keeper.keep(t):
                    continue
                image = frame.reformat(width=shape[0], height=shape[1], format="yuv420p", interpolation="AREA")
                image.pts, image.time_base = count, 1 / out_rate
                dst.mux(enc.encode(image))
                count += 1
            if enc is None:
                raise ValueError("no decodable frame")
            dst.mux(enc.encode())
    return out.getvalue(), {"num_frames": count, "fps": round(float(out_rate), 4), "size": list(shape),
                            "reencoded_from": source_codec, "gop": gop}


def _open_encoder(container, encoder: str, rate: Fraction, shape, options: dict, threads: int):
    enc = container.add_stream(encoder, rate=rate, options=options)
    enc.width, enc.height = shape
    enc.pix_fmt = "yuv420p"
    enc.time_base = 1 / rate
    enc.thread_count = max(1, threads)
    return enc

