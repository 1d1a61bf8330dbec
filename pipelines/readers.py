"""Clip readers, one per store kind (`prep --store frames | video`): what the source reads for a clip, how many
DALI samples a clip is, and the decoder operator of the graph. The loader picks the reader once (`reader_of`);
the source and the graph call it and never ask which kind it is.

frames: JPEG frames. One DALI sample per FRAME (a batch of B clips of T frames is a batch of B x T JPEGs, so one
        decoder operator sees all of them: nvJPEG and the hardware JPEG decoder work in batches), each carrying
        its clip's meta and parameters. On the CPU, training decodes only each frame's crop box.
video:  the encoded video. One sample per clip: the bytes and the clip's T frame indices; NVDEC (or DALI's CPU
        decoder for VP8/VP9/MJPEG) decodes an FHWC clip.
"""
from __future__ import annotations

import numpy as np

from prep import PreppedDataset

from .augment_units import Values
from .gops import CONTAINERS, cut_stream

CPU_VIDEO_CODECS = ("vp8", "vp9", "mjpeg")  # all the PyPI DALI build's CPU video decoder handles


class FrameReader:
    name = "frames"
    num_outputs = 3  # JPEG, meta, params
    per_frame = True  # a DALI sample is one HWC frame
    can_crop_on_decode = True  # libjpeg-turbo decodes a window of the JPEG (`decode`'s box)

    def samples_per_clip(self, num_frames: int) -> int:
        return num_frames

    def check(self, ds: PreppedDataset, device_id: int | None) -> None:
        """Every decoder reads JPEG frames."""

    def read(self, data: PreppedDataset, index: int, row: dict, frames: np.ndarray, verify: bool) -> tuple:
        """The clip's T JPEG buffers."""
        return tuple(np.frombuffer(j, dtype=np.uint8) for j in data.frames(index, frames, verify=verify))

    def sample(self, clip: tuple, frame: int) -> tuple:
        """Sample `frame` of a clip read as (*payload, meta, params): that frame's JPEG, meta, params."""
        *jpegs, meta, params = clip
        return jpegs[frame], meta, params

    def split(self, outputs) -> tuple:
        """The external source's outputs as (payload, meta, params)."""
        jpeg, meta, params = outputs
        return jpeg, meta, params

    def decode(self, jpeg, device: str, image_args: dict, box: Values | None = None):
        """One decoder for every frame of the batch -> HWC uint8 frames. `box` (the clip's crop box slot): only that
        window of each JPEG is decoded (libjpeg-turbo partial decoding: a multi-scale crop of a 16:9 frame is a
        quarter to a half of it). `image_args`: resources.image_decoder_args."""
        from nvidia.dali import fn, types

        if box is not None:  # x0, y0 and x1, y1: the slice's default "WH" order
            return fn.decoders.image_slice(jpeg, rel_start=box.span(0, 2), rel_end=box.span(2, 4), device=device,
                                           output_type=types.RGB, **image_args)
        return fn.decoders.image(jpeg, device=device, output_type=types.RGB, **image_args)


class VideoReader:
    name = "video"
    num_outputs = 4  # encoded video, frame indices (int32), meta, params
    per_frame = False  # a DALI sample is one FHWC clip
    can_crop_on_decode = False

    def samples_per_clip(self, num_frames: int) -> int:
        return 1

    def check(self, ds: PreppedDataset, device_id: int | None) -> None:
        """The stored codecs are ones the chosen decoder handles: one line before any work, not a failed run."""
        if device_id is None:
            codecs = sorted({str(r.get("codec")) for r in ds.rows} - set(CPU_VIDEO_CODECS))
            if codecs:
                raise ValueError(f"{ds.root} holds {'/'.join(codecs)} videos, which DALI decodes only on a GPU (its "
                                 f"CPU video decoder handles {', '.join(CPU_VIDEO_CODECS)}): pass device_id, or prep "
                                 "with --store frames")
            return
        from prep.video_store import check_store

        check_store(ds.root, ds.rows)  # NVDEC fails a whole run on a stream it cannot decode: refuse up front

    def read(self, data: PreppedDataset, index: int, row: dict, frames: np.ndarray, verify: bool) -> tuple:
        """The encoded video and the clip's frame indices in it."""
        encoded, frames = data.video(index, verify=verify), frames.astype(np.int32)
        if row.get("gop") and row.get("codec") in CONTAINERS:  # re-encoded: hand the decoder only what it needs
            encoded, frames = cut_stream(encoded, frames, row["gop"], row["codec"])
        return np.frombuffer(encoded, dtype=np.uint8), frames

    def sample(self, clip: tuple, frame: int) -> tuple:
        return clip

    def split(self, outputs) -> tuple:
        """The external source's outputs as (payload, meta, params); the payload: (encoded video, frame indices)."""
        encoded, indices, meta, params = outputs
        return (encoded, indices), meta, params

    def decode(self, payload, device: str, image_args: dict, box: Values | None = None):
        """One decoder for the batch's clips -> FHWC uint8 clips; the whole frames (no `box`, no `image_args`)."""
        from nvidia.dali import fn

        encoded, indices = payload
        # edge padding only guards against a stored frame count that overstates the decodable frames
        return fn.decoders.video(encoded, frames=indices, device=device, pad_mode="edge")


ClipReader = FrameReader | VideoReader
READERS = {reader.name: reader for reader in (FrameReader(), VideoReader())}


def reader_of(kind: str) -> ClipReader:
    """The reader of a store kind ("frames" | "video", prep's --store)."""
    if kind not in READERS:
        raise ValueError(f"store kind must be one of {tuple(READERS)}, got {kind!r}")
    return READERS[kind]
