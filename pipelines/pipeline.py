"""The DALI graph: parallel external source -> decode (JPEG frames or encoded video) -> augment -> normalize.

One graph for both devices: decoders run on "mixed" (nvJPEG / NVDEC) when a GPU is given, on "cpu"
otherwise; everything after them follows the data. Augmentation parameters arrive from the source as a
CPU vector per sample (argument inputs must live on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

from .augment import AugmentConfig, eval_transform, normalize, train_transform
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


def _decode(source: ClipSource, decoder_device: str, prefetch: int, crop_on_decode: bool):
    """(FHWC uint8 clip, meta, params); with crop_on_decode, JPEG frames are decoded inside the training crop
    box only (libjpeg-turbo partial decoding: a multi-scale crop of a 16:9 frame is a quarter to a half of it)."""
    from nvidia.dali import fn, types

    outputs = fn.external_source(source=source, num_outputs=source.num_outputs, batch=False, parallel=True,
                                 prefetch_queue_depth=prefetch)
    if source.path == "frames":
        *jpegs, meta, params = outputs
        if crop_on_decode:  # params[0:4] = x0, y0, x1, y1, the slice's default "WH" order
            frames = [fn.decoders.image_slice(j, rel_start=params[0:2], rel_end=params[2:4], device=decoder_device,
                                              output_type=types.RGB) for j in jpegs]
        else:
            frames = [fn.decoders.image(j, device=decoder_device, output_type=types.RGB) for j in jpegs]
        return fn.stack(*frames, axis_name="F"), meta, params
    encoded, indices, meta, params = outputs
    # edge padding only guards against a stored frame count that overstates the decodable frames
    return fn.decoders.video(encoded, frames=indices, device=decoder_device, pad_mode="edge"), meta, params


def clip_graph(source: ClipSource, opts: GraphOptions, prefetch: int):
    """The pipeline's outputs: clips in the model's layout and dtype, and meta = [label, index, view]."""
    from nvidia.dali import fn

    # on the GPU the whole frame goes to the hardware JPEG decoder, which we have not measured with ROIs
    crop_on_decode = opts.training and source.path == "frames" and opts.decoder_device == "cpu"
    clip, meta, params = _decode(source, opts.decoder_device, prefetch, crop_on_decode)
    if opts.training:
        clip, mirror = train_transform(clip, params, opts.crop_size, opts.augment, cropped=crop_on_decode)
        crop = {}
    else:
        clip, crop = eval_transform(clip, params, opts.crop_size, opts.augment)
        mirror = crop.pop("mirror")
    clip = normalize(clip, opts.mean, opts.std, opts.layout, opts.dali_dtype, mirror, **crop)
    # a copy, so no output aliases an external-source buffer (see DALI-NOTES: 2.1 executor issue)
    meta = meta.gpu() if opts.decoder_device == "mixed" else fn.copy(meta)
    return clip, meta


def build_pipeline(source: ClipSource, opts: GraphOptions, batch_size: int, num_threads: int, py_workers: int,
                   device_id: int | None, seed: int, prefetch: int = 2, py_start_method: str = "fork"):
    """A built DALI pipeline whose Python workers are running."""
    from nvidia.dali import pipeline_def

    conditionals = opts.training and opts.augment.rand_augment > 0  # nvidia.dali.auto_aug needs them

    @pipeline_def(enable_conditionals=conditionals)
    def graph():
        return clip_graph(source, opts, prefetch)

    pipe = graph(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                 py_num_workers=py_workers, py_start_method=py_start_method, prefetch_queue_depth=prefetch)
    pipe.build()
    return pipe
