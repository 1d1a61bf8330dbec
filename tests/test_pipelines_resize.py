"""The CPU training path's crop window -> crop size (augment.resize_window): OpenCV's warp where it stays within
interpolation noise of fn.resize's antialiased filter, fn.resize beyond. Compared with fn.resize (exact_resize,
the path before) in de-normalised pixel units: |a - b| * std, so 1/255 is one grey level of the uint8 frames."""
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from pipelines import AugmentConfig, build_loader
from pipelines.augment import PARAMS, WARP_MIN_SCALE, normalize
from pipelines.pipeline import GraphOptions, crop_on_decode
from pipelines.readers import READERS

from helpers import NCTHW, NTCHW, run_epoch

CROP = 224
FRAME = (454, 256)  # width, height: a Kinetics frame prepped at short side 256
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# crop windows (width, height) in pixels: upscaled, the crop size itself, TSN's multi-scale windows of a 256 short
# side (256 -> 224 is its largest shrink, 0.875), one at the limit, and windows shrunk beyond it
WITHIN = [(168, 168), (192, 224), (224, 224), (224, 256), (256, 256), (int(CROP / WARP_MIN_SCALE), 256)]
BEYOND = [(300, 256), (454, 256), (400, 200)]


def _photo_jpegs(count: int) -> list[np.ndarray]:
    """Frames of matplotlib's bundled photograph at FRAME size, JPEG quality 90 (prep's): real texture, where
    interpolation filters differ most."""
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:  # PIL closes what it opens
        photo = image.convert("RGB")
    out = []
    for k in range(count):
        y = 30 * k
        frame = photo.resize(FRAME, Image.BICUBIC, box=(0, y, 512, y + 512 * FRAME[1] / FRAME[0]))
        buf = io.BytesIO()
        frame.save(buf, format="JPEG", quality=90)
        out.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    return out


def _params(windows, mirror: float, colour=(1.0, 1.0, 1.0, 0.0)) -> list[np.ndarray]:
    """Training parameter vectors placing each (width, height) window at the frame's right-hand side."""
    width, height = FRAME
    out = []
    for w, h in windows:
        vector = np.zeros(PARAMS, np.float32)
        vector[:4] = [(width - w) / width, (height - h) / height, 1.0, 1.0]
        vector[4], vector[5:9] = mirror, colour
        out.append(vector)
    return out


def _frame_path(jpegs, params, augment: AugmentConfig, exact: bool, layout: str = "HWC") -> np.ndarray:
    """The training frame path of pipelines.pipeline (crop-window decode, train_transform, normalize) on these
    JPEGs and parameter vectors, de-normalised to [0, 1] pixel units, (N, H, W, C)."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines.augment import train_transform
    from pipelines.pipeline import decode_frames

    opts = GraphOptions(CROP, MEAN, STD, "NCTHW", True, augment, types.FLOAT, "cpu", exact_resize=exact)

    @pipeline_def(batch_size=len(jpegs), num_threads=1, device_id=None, enable_conditionals=not exact)
    def graph():
        jpeg, vector = fn.external_source(source=lambda: (jpegs, params), num_outputs=2)
        window = decode_frames(jpeg, vector, opts, cropped=True)
        frames, mirror = train_transform(window, vector, CROP, augment, cropped=True, exact_resize=exact)
        return normalize(frames, MEAN, STD, layout, types.FLOAT, mirror)

    pipe = graph()
    pipe.build()
    out = np.array(pipe.run()[0].as_tensor())
    if layout == "CHW":
        out = out.transpose(0, 2, 3, 1)
    return out * np.array(STD, np.float32) + np.array(MEAN, np.float32)


def _frame_differences(windows, mirror=0.0, colour=(1.0, 1.0, 1.0, 0.0), augment=AugmentConfig(),
                       layout="HWC") -> tuple[np.ndarray, np.ndarray]:
    """(mean |resize_window path - fn.resize path| per frame, the largest pixel difference) on photo frames, one
    per window."""
    jpegs, params = _photo_jpegs(len(windows)), _params(windows, mirror, colour)
    new = _frame_path(jpegs, params, augment, exact=False, layout=layout)
    old = _frame_path(jpegs, params, augment, exact=True, layout=layout)
    assert new.shape == old.shape == (len(windows), CROP, CROP, 3) and old.std() > 0.1
    return np.abs(new - old).reshape(len(windows), -1).mean(axis=1), np.abs(new - old).max()


@pytest.mark.parametrize("mirror", [0.0, 1.0])
def test_windows_within_the_limit_match_fn_resize_within_a_grey_level(mirror):
    diff, _ = _frame_differences(WITHIN, mirror)
    assert (diff < 1 / 255).all(), diff * 255
    assert diff[WITHIN.index((224, 224))] == 0  # a window of the crop size passes through unchanged either way
    assert diff[WITHIN.index((256, 256))] > 0.1 / 255  # the warp did run: no antialiasing when shrinking


def test_windows_shrunk_beyond_the_limit_keep_fn_resize():
    """Shrunk further, a bilinear warp without antialiasing would alias: these stay fn.resize, to the bit."""
    diff, worst = _frame_differences(BEYOND + WITHIN[:2])
    assert worst > 0 and (diff[:len(BEYOND)] == 0).all(), diff * 255


def test_colour_jitter_and_chw_layout_agree_as_well():
    colour = (1.3, 0.7, 1.4, 20.0)  # brightness, contrast, saturation, hue (degrees)
    diff, _ = _frame_differences(WITHIN, 1.0, colour, AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.1)), layout="CHW")
    assert (diff < 1 / 255).all() and diff.max() > 0, diff * 255


# --------------------------------------------------------------------------------------------- the loader


def _warps(loader) -> int:
    loader._ensure_pipeline(loader.epoch)
    return sum("WarpPerspective" in str(op.spec).splitlines()[0] for op in loader._pipe._ops)


@pytest.mark.parametrize("contract, augment", [
    (NCTHW, AugmentConfig(flip=True, jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.7)),
    (NTCHW, AugmentConfig(train_crop="resized", flip=True)),
])
def test_loader_clips_match_the_fn_resize_path(frames_data, contract, augment):  # noqa: F811
    loader = build_loader(frames_data, "train", contract, 4, True, py_workers=1, seed=3, augment=augment)
    exact = build_loader(frames_data, "train", contract, 4, True, py_workers=1, seed=3, augment=augment)
    exact.graph = dataclasses.replace(exact.graph, exact_resize=True)
    assert _warps(loader) == 1 and _warps(exact) == 0
    for epoch in range(2):
        new, old = run_epoch(loader, epoch), run_epoch(exact, epoch)
        assert new["index"].tolist() == old["index"].tolist() and new["labels"].tolist() == old["labels"].tolist()
        std = np.array(STD, np.float32).reshape((1, 3, 1, 1, 1) if contract.layout == "NCTHW" else (1, 1, 3, 1, 1))
        diff = np.abs(new["clips"] - old["clips"]) * std
        assert diff.reshape(len(diff), -1).mean(axis=1).max() < 1 / 255


def test_only_the_cpu_frame_path_decodes_the_window():
    """The GPU graph decodes whole frames and crops them in fn.resize, as before: resize_window is CPU only."""
    from nvidia.dali import types

    def opts(device, training=True):
        return GraphOptions(CROP, MEAN, STD, "NCTHW", training, AugmentConfig(), types.FLOAT, device)

    frames, video = READERS["frames"], READERS["video"]
    assert crop_on_decode(opts("cpu"), frames)
    assert not crop_on_decode(opts("mixed"), frames)
    assert not crop_on_decode(opts("cpu"), video) and not crop_on_decode(opts("cpu", training=False), frames)
