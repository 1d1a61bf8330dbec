"""Cutting a re-encoded video down to the frames a clip needs, before DALI decodes it.

DALI 2.4's video decoder, handed a whole stream and `frames=`, decodes every frame from the first one up to the
last index asked for: it does not seek to keyframes (measured on its CPU decoder: frame 290 of a 300-frame
stream costs as much whatever its keyframe interval, docs/benchmarks.md). A `--store video --reencode` stream
has a keyframe every `gop` frames and no B-frames (prep.video_store), so a frame depends only on the frames between it
and the keyframe before it. The source therefore remuxes (no decoding) a stream of just those frames for each
sampled index: the decoder then decodes at most `gop` frames per sampled frame, wherever it lies in the video.
"""
from __future__ import annotations

import io

import av
import numpy as np

from prep import DamagedEntry

CONTAINERS = {"h264": "mp4", "vp9": "webm"}  # what prep.video_store.reencode writes


def needed_frames(indices, gop: int) -> np.ndarray:
    """Sorted frame numbers a clip needs: each sampled frame and the frames from its keyframe up to it."""
    needed = set()
    for i in indices:
        needed.update(range(int(i) - int(i) % gop, int(i) + 1))
    return np.array(sorted(needed), dtype=np.int64)


def cut_stream(data: bytes, indices, gop: int, codec: str) -> tuple[bytes, np.ndarray]:
    """(a stream of only the needed frames, the clip's indices into it). DamagedEntry if it cannot be cut."""
    keep = needed_frames(indices, gop)
    position = {int(k): n for n, k in enumerate(keep)}
    out = io.BytesIO()
    try:
        with av.open(io.BytesIO(data)) as src:
            stream = src.streams.video[0]
            with av.open(out, "w", format=CONTAINERS[codec]) as dst:
                copy = dst.add_stream_from_template(stream)
                _copy_packets(src, stream, dst, copy, position)
    except (av.error.FFmpegError, KeyError, ValueError) as e:
        raise DamagedEntry(f"cannot cut the stored {codec} stream to the clip's frames: {e}") from None
    return out.getvalue(), np.array([position[int(i)] for i in indices], dtype=np.int32)


def _copy_packets(src, stream, dst, copy, position: dict) -> None:
    """The packets of the kept frames (packet k is frame k: no B-frames), timed back to back from zero."""
    frame = kept = 0
    step = None
    for packet in src.demux(stream):
        if not packet.size:  # the demuxer's final empty packet
            continue
        if frame in position:
            step = step or packet.duration or 1
            packet.pts = packet.dts = kept * step
            packet.stream = copy
            dst.mux(packet)
            kept += 1
        frame += 1
    if kept != len(position):
        raise ValueError(f"the stream holds {frame} frames, fewer than the clip needs")
