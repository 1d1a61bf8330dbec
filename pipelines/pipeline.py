"""The DALI graph: parallel external source -> decode (the store kind's reader) -> augment -> normalize.

One graph for both devices: decoders run on "mixed" (nvJPEG / NVDEC) when a GPU is given, on "cpu"
otherwise; everything after them follows the data. Augmentation parameters arrive from the source as a
CPU vector per sample (argument inputs must live on the CPU).

Frame path (readers.FrameReader): one sample per FRAME. A batch of B clips of T frames is a DALI batch of B x T
JPEGs, so a single decoder operator sees all of them at once (nvJPEG and the hardware JPEG decoder work in batches;
T decoders of B images each would leave them underfed), and every frame sample carries its clip's parameters, so
all the frames of a clip are cropped, coloured and flipped alike. The loader views the B x T frames as B clips.
CPU training decodes only each frame's crop box and brings it to the crop size with `augment.resize_window`
(OpenCV's bilinear warp where it matches fn.resize within noise: per-sample branches, so enable_conditionals).
Video path (readers.VideoReader): one sample per clip, the encoded video and the clip's frame indices; NVDEC
decodes FHWC clips.
"""
from __future__ import annotations

from dataclasses import dataclass

from .augment import (AugmentConfig, eval_transform, needs_conditionals, normalised_transform, normalize, output_layout,
                      train_transform)
from .augment_units import TrainCrop
from .orphans import workers_ignore_interrupts
from .readers import READERS, ClipReader
from .resources import HW_DECODER_LOAD, image_decoder_args
from .source import ClipSource


@dataclass(frozen=True)
class GraphOptions:
    crop_size: int
    mean: tuple
    std: tuple
    layout: str  # the contract's "NCTHW" | "NTCHW"
    training: bool
    augment: AugmentConfig
    dali_dtype: object  # nvidia.dali.types.DALIDataType of the clips
    decoder_device: str  # "mixed" | "cpu"
    hw_decoder_load: float = HW_DECODER_LOAD  # the hardware JPEG decoder's share (mixed only)
    preallocate: tuple | None = None  # (width, height) of the largest stored frame: nvJPEG's preallocation hint
    # CPU training windows all through fn.resize's antialiased filter, as before `augment.resize_window`'s warp:
    # the pixels of earlier releases, at over twice the resize time
    exact_resize: bool = False
    eval_crop: int = 0  # evaluation: the side of the test protocol's square crops (0: crop_size)


def crop_on_decode(opts: GraphOptions, reader: ClipReader) -> bool:
    """Whether the decoder cuts out the training crop box: on the CPU, where the reader can (on the GPU the whole
    frame goes to the hardware JPEG decoder, which we have not measured with ROIs)."""
    return opts.training and reader.can_crop_on_decode and opts.decoder_device == "cpu"


def _decoder_args(opts: GraphOptions) -> dict:
    return image_decoder_args(opts.decoder_device, opts.hw_decoder_load, opts.preallocate)


def _crop_box(opts: GraphOptions, params, cropped: bool):
    """The crop box slot of the parameter vector when the decoder cuts the box out, else None."""
    return opts.augment.layout.values(params, TrainCrop.slot) if cropped else None


def decode_frames(jpeg, params, opts: GraphOptions, cropped: bool):
    """The frame reader's decoder under graph options `opts` (bench.stages times it alone)."""
    return READERS["frames"].decode(jpeg, opts.decoder_device, _decoder_args(opts), _crop_box(opts, params, cropped))


def clip_graph(source: ClipSource, opts: GraphOptions, prefetch: int):
    """The pipeline's outputs: frames (frame path) or clips (video path) normalized in the layout of
    `augment.output_layout`, in the model's dtype, and meta = [label, index, view] per sample."""
    from nvidia.dali import fn

    cropped = crop_on_decode(opts, source.reader)
    outputs = fn.external_source(source=source, num_outputs=source.num_outputs, batch=False, parallel=True,
                                 prefetch_queue_depth=prefetch)
    payload, meta, params = source.reader.split(outputs)
    data = source.reader.decode(payload, opts.decoder_device, _decoder_args(opts), _crop_box(opts, params, cropped))
    if opts.training:
        data, mirror = train_transform(data, params, opts.crop_size, opts.augment, cropped, opts.exact_resize)
    else:
        data, mirror = eval_transform(data, params, opts.eval_crop or opts.crop_size)
    layout = output_layout(opts.layout, per_frame=source.reader.per_frame)
    data = normalize(data, opts.mean, opts.std, layout, opts.dali_dtype, mirror)
    if opts.training:  # random erasing after normalisation, as timm: the noise is in normalised units
        data = normalised_transform(data, params, opts.augment, opts.dali_dtype, layout)
    # a copy, so no output aliases an external-source buffer (see DALI-NOTES: 2.1 executor issue)
    meta = meta.gpu() if opts.decoder_device == "mixed" else fn.copy(meta)
    return data, meta


def build_pipeline(source: ClipSource, opts: GraphOptions, batch_size: int, num_threads: int, py_workers: int,
                   device_id: int | None, seed: int, prefetch: int = 2, py_start_method: str = "fork"):
    """A built DALI pipeline whose Python workers are running. `batch_size` counts clips; the frame path's DALI
    batch holds batch_size x frames samples."""
    from nvidia.dali import pipeline_def

    # nvidia.dali.auto_aug needs them, and augment.resize_window's per-sample choice of warp or resize
    conditionals = opts.training and (needs_conditionals(opts.augment) or
                                      (crop_on_decode(opts, source.reader) and not opts.exact_resize))

    @pipeline_def(enable_conditionals=conditionals)
    def graph():
        return clip_graph(source, opts, prefetch)

    pipe = graph(batch_size=batch_size * source.samples_per_clip, num_threads=num_threads, device_id=device_id,
                 seed=seed, py_num_workers=py_workers, py_start_method=py_start_method, prefetch_queue_depth=prefetch)
    with workers_ignore_interrupts():  # the workers start here
        pipe.build()
    return pipe
