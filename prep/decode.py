"""Decode one video once with PyAV: sample frames in time, resize, JPEG-encode (or keep the bytes).

Runs in prep's worker processes. Never raises for bad input: returns a `Rejected` naming the reason,
so one broken file can never stop a run of 200k videos.
"""
from __future__ import annotations

import ctypes
import hashlib
import io
import os
import sys
import zlib
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
import simplejpeg
from PIL import Image

from .decoded import Decoded, DecodeOptions, FpsKeeper, Rejected, display_size, sample_aspect, target_size
from .store import FrameSpool
from .video_store import store_video  # stream facts, NVDEC's refusals, --reencode

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_buffers_kept = [False]


def keep_frame_buffers() -> None:
    """Once per decoding process (Linux glibc; elsewhere a no-op): keep freed frame-sized buffers for the next frame.
    glibc hands a large freed block back to the OS, and with nothing long-lived above it on the heap (frames are
    spooled, not held) every 1080p frame faulted its ~20 MB of buffers in afresh: 3x the system time, measured."""
    if _buffers_kept[0] or not sys.platform.startswith("linux"):
        return
    _buffers_kept[0] = True
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)  # frame buffers from the heap, not from a fresh mmap each
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)  # and not given back while under this
    except (OSError, AttributeError):
        pass  # another C library: only slower


def decode_video(path: str, opts: DecodeOptions, spool_dir: str | None = None) -> Decoded | Rejected:
    """Decodes `path`; the JPEG frames go to a FrameSpool in `spool_dir` (in memory when None)."""
    if not os.path.exists(path):
        return Rejected("missing file")
    if os.path.getsize(path) == 0:
        return Rejected("zero-length file")
    # made outside the try below: a failure here is prep's own disk, not a bad video
    spool = FrameSpool(spool_dir) if opts.store == "frames" else None
    try:
        result = _open_and_decode(path, opts, spool)
    except BaseException:
        if spool is not None:
            spool.discard()
        raise
    if spool is not None and not isinstance(result, Decoded):
        spool.discard()
    return result


def _open_and_decode(path: str, opts: DecodeOptions, spool: FrameSpool | None) -> Decoded | Rejected:
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                return Rejected("no video stream")
            return _decode_stream(path, container, container.streams.video[0], opts, spool)
    except (av.error.FFmpegError, OSError, ValueError, MemoryError) as e:
        return Rejected(f"unreadable: {in_words(e)}")


@dataclass
class _Scan:
    """What one pass over the frames found; the kept frames themselves are in the spool."""
    decoded: int = 0
    kept: int = 0
    notes: list[str] = field(default_factory=list)
    orig: tuple[int, int] | None = None
    out: tuple[int, int] | None = None
    sample_aspect: Fraction = Fraction(1)
    crcs: list[int] = field(default_factory=list)
    digest: object = field(default_factory=hashlib.sha1)


def _decode_stream(path: str, container, stream, opts: DecodeOptions, spool: FrameSpool | None):
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = max(1, opts.threads)
    # make bitstream damage an error instead of a concealed (garbage) frame
    stream.codec_context.options = {"err_detect": "careful"}
    rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    try:
        scan = _scan_frames(container, stream, opts, rate, spool)
    except MemoryError:
        return Rejected("out of memory while decoding")
    notes = scan.notes
    if not scan.decoded:
        return Rejected("no decodable frame" + (f" ({notes[0]})" if notes else ""))
    if opts.store == "video":
        return _keep_encoded(path, scan.decoded, rate, scan.orig, notes, opts)
    if scan.kept < opts.min_frames:
        return Rejected(f"only {scan.kept} clean frames (< {opts.min_frames})" + (f"; {notes[0]}" if notes else ""))
    meta = {"num_frames": scan.kept, "fps": round(float(min(opts.fps or rate, rate)), 4),
            "orig_size": list(scan.orig), "size": list(scan.out), "checksum": scan.digest.hexdigest()}
    if scan.sample_aspect != 1:
        meta["sample_aspect"] = f"{scan.sample_aspect.numerator}:{scan.sample_aspect.denominator}"
    meta["frame_crc"] = scan.crcs
    return Decoded(meta=meta, spool=spool.finish(), notes=notes)


def _scan_frames(container, stream, opts: DecodeOptions, rate: float, spool: FrameSpool | None) -> _Scan:
    """Decodes frame by frame, JPEG-encoding each kept one straight into the spool: memory holds one frame."""
    scan, keeper, encode = _Scan(), FpsKeeper(opts.fps, rate), None
    try:
        for frame in container.decode(stream):
            if frame.is_corrupt:
                scan.notes.append(f"corrupt frame at {scan.decoded}: kept the {scan.decoded} frames before it")
                break
            if scan.out is None:
                scan.orig, scan.sample_aspect = (frame.width, frame.height), sample_aspect(stream)
                scan.out = target_size(*display_size(frame.width, frame.height, scan.sample_aspect), opts.short_side)
            t = frame.time if frame.time is not None else scan.decoded / rate
            scan.decoded += 1
            if spool is not None and keeper.keep(t):
                if encode is None:
                    encode = make_encoder(*scan.out, opts)
                jpeg = encode(frame)
                spool.append(jpeg)
                scan.crcs.append(zlib.crc32(jpeg))
                scan.digest.update(jpeg)
                scan.kept += 1
    except av.error.FFmpegError as e:
        scan.notes.append(f"decode error after {scan.decoded} frames ({_short(e)}): kept those")
    return scan


def _keep_encoded(path, count, rate, size, notes, opts) -> Decoded | Rejected:
    if notes:  # the GPU decoder would meet the same damage at training time
        return Rejected(f"partly corrupt, cannot store as video: {notes[0]}")
    if count < opts.min_frames:
        return Rejected(f"only {count} frames (< {opts.min_frames})")
    return store_video(path, count, rate, size, opts)


def _chroma(width: int, height: int, opts: DecodeOptions) -> str:
    return opts.chroma if opts.chroma != "auto" else ("420" if min(width, height) >= 128 else "444")


def make_encoder(width: int, height: int, opts: DecodeOptions):
    """frame -> JPEG bytes at width x height, for the frames of one video (the yuv encoder keeps its scaler).
    Both stages are methods of their own, scale(frame) and encode(scaled), for bench.prep's per-stage profile."""
    cls = YuvJpeg if opts.encoder == "yuv" else PilJpeg
    return cls(width, height, _chroma(width, height, opts), opts.quality)


_SUBSAMPLING = {"444": 0, "422": 1, "420": 2}


class PilJpeg:
    """The first encoder, kept to compare (bench.prep): swscale scales and converts to RGB, Pillow converts back to
    YCbCr, subsamples and encodes with optimized Huffman tables."""

    def __init__(self, width: int, height: int, chroma: str, quality: int, optimize: bool = True):
        self.size, self.chroma, self.quality, self.optimize = (width, height), chroma, quality, optimize

    def __call__(self, frame) -> bytes:
        return self.encode(self.scale(frame))

    def scale(self, frame) -> np.ndarray:
        return frame.reformat(width=self.size[0], height=self.size[1], format="rgb24",
                              interpolation="AREA").to_ndarray()

    def encode(self, rgb: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=self.quality, subsampling=_SUBSAMPLING[self.chroma],
                                  optimize=self.optimize)
        return buf.getvalue()


_PLANAR = {"444": "yuv444p", "422": "yuv422p", "420": "yuv420p"}
# where JPEG's subsampled chroma samples sit (JFIF: centred), and the positions a decoder may report
_SITINGS = ("left", "center", "topleft", "top", "bottomleft", "bottom")


class YuvJpeg:
    """Scales frames in YUV straight to JFIF's colours (full-range BT.601 planes, chroma centred) with FFmpeg's
    scale filter, and has libjpeg-turbo (simplejpeg) encode the planes: no RGB image is ever made. Any source
    format works (10-bit, 4:2:2, RGB, grey: the filter converts); the source's matrix, range and chroma position
    come from the frame."""

    def __init__(self, width: int, height: int, chroma: str, quality: int):
        self.size, self.chroma, self.quality = (width, height), chroma, quality
        self.graph, self.source = None, None

    def __call__(self, frame) -> bytes:
        return self.encode(self.scale(frame))

    def scale(self, frame):
        source = (frame.width, frame.height, frame.format.name, frame.colorspace, frame.color_range)
        if source != self.source:  # the first frame, or the stream changed its format mid-way
            self.graph, self.source = self._graph(frame), source
        self.graph.push(frame)
        return self.graph.pull()

    def encode(self, scaled) -> bytes:
        # no per-image Huffman tables: 9-10% fewer bytes would cost 0.24-0.39 ms a frame, as much as this whole
        # encode (docs/benchmarks.md); simplejpeg does not offer them anyway
        y, u, v = _planes(scaled)
        return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=self.quality)

    def _graph(self, frame):
        w, h = self.size
        args = (f"w={w}:h={h}:flags=area:in_chroma_loc={chroma_siting(frame)}:out_chroma_loc=center"
                ":out_color_matrix=bt601:out_range=full")
        return _scale_graph(frame, args, _PLANAR[self.chroma])


def _scale_graph(frame, scale_args: str, pix_fmt: str):
    graph = av.filter.Graph()
    # the buffer is told the frame's colours: frames that match it pass without a reconfiguration each
    chain = [graph.add("buffer", video_size=f"{frame.width}x{frame.height}", pix_fmt=str(int(frame.format)),
                       time_base="1/1000", pixel_aspect="1/1", colorspace=str(int(frame.colorspace)),
                       range=str(int(frame.color_range))),
             graph.add("scale", scale_args + ":threads=1"),  # one thread: prep runs one process per core
             graph.add("format", pix_fmts=pix_fmt), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    return graph


def chroma_siting(frame) -> str:
    """Where the decoder says `frame`'s chroma samples sit (H.264: left of the luma pair, VP9: centred, ...). PyAV
    does not expose it but its reformat() honours it, while the scale filter takes it as an argument: the answer
    is the position under which the filter upsamples the chroma as reformat() does."""
    fmt = frame.format
    if fmt.chroma_width(frame.width) == frame.width and fmt.chroma_height(frame.height) == frame.height:
        return "center"  # 4:4:4, RGB or grey: nothing to place
    w, h = (frame.width + 1) // 2, (frame.height + 1) // 2  # half size: still sensitive, a quarter of the work
    want = _planes(frame.reformat(width=w, height=h, format="yuv444p", interpolation="BILINEAR", threads=1))

    def distance(siting: str) -> int:
        graph = _scale_graph(frame, f"w={w}:h={h}:flags=bilinear:in_chroma_loc={siting}:out_chroma_loc={siting}",
                             "yuv444p")
        graph.push(frame)
        got = _planes(graph.pull())
        return sum(int(np.abs(a.astype(np.int16) - b).sum()) for a, b in zip(want[1:], got[1:]))

    distances = {}
    for siting in _SITINGS:  # the likely ones first; an exact match ends the search
        distances[siting] = distance(siting)
        if not distances[siting]:
            return siting
    return min(distances, key=distances.get)


def _planes(frame) -> list[np.ndarray]:
    """The frame's planes as 2D views (no copy; rows keep FFmpeg's padding as the stride)."""
    return [np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:p.height, :p.width] for p in frame.planes]


# what an FFmpeg error class means for a video file, said beside FFmpeg's own words
_MEANING = {"InvalidDataError": "not a video file, or a damaged or truncated one",
            "DecoderNotFoundError": "no decoder for its codec in this FFmpeg build",
            "DemuxerNotFoundError": "a container format this FFmpeg build cannot read",
            "EOFError": "it ends before its first frame: truncated"}


def in_words(e: Exception) -> str:
    """An FFmpeg or OS error in words: its message without the errno number or the path (the reject row names the
    file), and what the error means for a video: 'invalid data found when processing input (not a video file, ...)'
    rather than "[Errno 1094995529] Invalid data found when processing input: 'a.mp4'"."""
    words = getattr(e, "strerror", None)
    if not isinstance(words, str) or not words:
        return f"{type(e).__name__}: {_short(e)}"
    words = words[0].lower() + words[1:]
    meaning = _MEANING.get(type(e).__name__)
    return f"{words} ({meaning})" if meaning else words


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__
