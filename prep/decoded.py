"""What prep's decoding produces and the geometry both of its paths use: the result types (`Decoded`, `Rejected`),
the options (`DecodeOptions`), the stored frame size and the frame-rate thinning. Shared by the JPEG-frame decoder
(prep.decode) and the encoded-video store (prep.video_store), which import each other's nothing."""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from .store import FrameSpool

MIN_FRAMES_DEFAULT = 4
ENCODERS = ("yuv", "pil")


@dataclass
class Decoded:
    meta: dict
    spool: FrameSpool | None = None  # the JPEG frames (--store frames)
    video: bytes | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def frames(self) -> list[bytes] | None:
        return self.spool.all() if self.spool is not None else None


@dataclass
class Rejected:
    reason: str


@dataclass(frozen=True)
class DecodeOptions:
    short_side: int = 256  # 0 keeps the original size
    fps: float | None = None  # None keeps every frame
    quality: int = 90
    # "auto": 4:2:0 (the source's own sampling) unless the stored short side is under 128 px, where
    # halving the chroma of sharp colour edges costs ~6 dB PSNR at quality 90
    chroma: str = "auto"
    store: str = "frames"  # "frames" (JPEG) or "video" (the encoded bytes as they are)
    reencode: str = ""  # --store video: "" keeps the source bytes; "h264" | "vp9" re-encodes (prep.video_store)
    min_frames: int = MIN_FRAMES_DEFAULT
    threads: int = 1
    # "yuv": scale in YUV, libjpeg-turbo encodes the planes; "pil": the first path (RGB, Pillow, optimized Huffman
    # tables), kept to compare: its scale + encode take 2.6-4.5x the CPU time (docs/benchmarks.md)
    encoder: str = "yuv"

    def __post_init__(self):
        if self.encoder not in ENCODERS:  # here, not per video: a typo must not reject every video
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")


def target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Short side to `short_side`, the other keeping the aspect ratio, rounded to even (as ffmpeg's -2)."""
    if not short_side:
        return width, height
    if width <= height:
        return short_side, max(2, int(round(height * short_side / width / 2)) * 2)
    return max(2, int(round(width * short_side / height / 2)) * 2), short_side


def display_size(width: int, height: int, sample_aspect: Fraction) -> tuple[int, int]:
    """The size with square pixels: the width scaled by the sample aspect ratio (ffmpeg's scale=iw*sar:ih),
    rounded to even; unchanged when the pixels are square."""
    if sample_aspect == 1:
        return width, height
    return max(2, int(round(width * sample_aspect / 2)) * 2), height


def sample_aspect(stream) -> Fraction:
    """The container's sample aspect ratio if it states one, else the codec's (ffmpeg's own guess, in that order).
    Read after the first frame: the decoder learns the codec's from the bitstream."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar is not None and sar > 0:
            return Fraction(sar)
    return Fraction(1)


class FpsKeeper:
    """Keeps frames about 1/fps apart, deciding frame by frame (never duplicates one)."""

    def __init__(self, fps: float | None, source_fps: float):
        self.fps = fps if fps and fps < source_fps else None
        self.half = 0.5 / source_fps  # timestamps jitter by less than half a source frame
        self.next_t = 0.0

    def keep(self, t: float) -> bool:
        if self.fps is None:
            return True
        if t + self.half < self.next_t:
            return False
        self.next_t = (int((t + self.half) * self.fps) + 1) / self.fps
        return True


def keep_by_fps(times: list[float], fps: float | None, source_fps: float) -> list[int]:
    """Indices of the frames to keep so that the kept ones are about 1/fps apart (never duplicated)."""
    keeper = FpsKeeper(fps, source_fps)
    return [i for i, t in enumerate(times) if keeper.keep(t)]
