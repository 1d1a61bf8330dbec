"""pipelines.augment: the per-clip parameters drawn in the source (pure numpy), then the recipe augmentations
(scale jitter, grayscale, random erasing, flip label map) on the CPU graph."""
import numpy as np
import pytest
import torch

from pipelines.augment import (PARAMS, AugmentConfig, center_box, multi_scale_box, random_resized_box, train_params,
                               view_params)
from pipelines import protocols
from pipelines.protocols import ProtocolError, vidkit_crops


def _pixels(box, width, height):
    return np.rint(np.asarray(box) * [width, height, width, height]).astype(int)


def test_multi_scale_box_uses_the_scales_of_the_short_side_at_fixed_offsets():
    cfg = AugmentConfig(more_fix_crop=False)
    rng = np.random.default_rng(0)
    sides = [int(256 * s) for s in cfg.scales]  # 256, 224, 192, 168
    seen = set()
    for _ in range(300):
        x0, y0, x1, y1 = _pixels(multi_scale_box(rng, 340, 256, cfg), 340, 256)
        assert 0 <= x0 < x1 <= 340 and 0 <= y0 < y1 <= 256
        w, h = x1 - x0, y1 - y0
        assert abs(sides.index(w) - sides.index(h)) <= cfg.max_distort
        assert (x0, y0) in {(qx * ((340 - w) // 4), qy * ((256 - h) // 4))
                            for qx, qy in [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]}
        seen.add((w, h))
    assert len(seen) == 10  # every pair within one step of each other


def test_multi_scale_box_anywhere_without_fix_crop():
    cfg = AugmentConfig(fix_crop=False, scales=(0.5,))
    xs = {_pixels(multi_scale_box(np.random.default_rng(s), 100, 100, cfg), 100, 100)[0] for s in range(100)}
    assert len(xs) > 20 and max(xs) <= 50


def test_random_resized_box_stays_inside_within_ratio():
    cfg = AugmentConfig(train_crop="resized", area=(0.3, 1.0))
    rng = np.random.default_rng(1)
    for _ in range(200):
        x0, y0, x1, y1 = multi = random_resized_box(rng, 320, 240, cfg)
        assert 0 <= x0 < x1 <= 1 + 1e-9 and 0 <= y0 < y1 <= 1 + 1e-9, multi
        w, h = (x1 - x0) * 320, (y1 - y0) * 240
        assert 0.3 * 320 * 240 * 0.95 <= w * h and 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_center_box_is_the_centred_square():
    assert np.allclose(center_box(200, 100), [0.25, 0, 0.75, 1])


def test_flip_policy_in_train_params():
    off = [train_params(np.random.default_rng(s), 64, 48, AugmentConfig())[4] for s in range(100)]
    on = [train_params(np.random.default_rng(s), 64, 48, AugmentConfig(flip=True))[4] for s in range(100)]
    assert set(off) == {0.0}
    assert set(on) == {0.0, 1.0}


def test_jitter_factors_are_identity_when_off_and_bounded_when_on():
    p = train_params(np.random.default_rng(0), 64, 48, AugmentConfig())
    assert p.shape == (PARAMS,) and p.dtype == np.float32 and p[5:9].tolist() == [1, 1, 1, 0]
    cfg = AugmentConfig(jitter=(0.4, 0.3, 0.2, 0.1), jitter_prob=1.0)
    for s in range(50):
        b, c, sat, hue = train_params(np.random.default_rng(s), 64, 48, cfg)[5:9]
        assert 0.6 <= b <= 1.4 and 0.7 <= c <= 1.3 and 0.8 <= sat <= 1.2 and -36 <= hue <= 36


def test_vidkit_crop_boxes():
    """DALI's positions 0, 1/2, 1 of the free space, rounded half up, in integer pixels."""
    def corners(crops, w, h):
        return [(b[0], b[1], m) for b, m in vidkit_crops(w, h, 32, crops)]

    assert corners(1, 64, 48) == [(16, 8, False)]
    assert corners(3, 64, 48) == [(0, 8, False), (16, 8, False), (32, 8, False)]  # along the width
    assert corners(3, 48, 64) == [(8, 0, False), (8, 16, False), (8, 32, False)]  # along the height
    assert corners(1, 65, 48)[0][0] == 17  # 16.5 rounds up, as DALI's crop position
    five = corners(5, 64, 48)
    assert len(set(five)) == 5 and not any(m for *_, m in five)
    ten = corners(10, 64, 48)
    assert ten[:5] == five and [p[:2] for p in ten[5:]] == [p[:2] for p in five] and all(p[2] for p in ten[5:])
    assert view_params((70, 52), (3, 4, 35, 36), True)[:5].tolist() == [70, 52, 3, 4, 1]
    with pytest.raises(ProtocolError, match="crops"):
        protocols.get("vidkit").boxes(64, 48, 4, 32, 48)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="train_crop"):
        AugmentConfig(train_crop="zoom")
    with pytest.raises(ValueError, match="eval_scale"):
        AugmentConfig(eval_scale=0.5)
    with pytest.raises(ValueError, match="jitter"):
        AugmentConfig(jitter=(0.1, 0.1))
    assert AugmentConfig().eval_short_side(224) == 256 and AugmentConfig(eval_scale=1).eval_short_side(224) == 224


# ------------------------------------------------------------------------ recipe augmentations, on the CPU graph
# The still pattern of test_pipelines (64x48, red rising left to right, green top to bottom, blue 128), NCTHW
# clips of 32x32: every crop, colour and flip shows in the pixels.

from pipelines import build_loader  # noqa: E402
from pipelines.augment import erase_box, flip_label_pairs, random_box  # noqa: E402

from helpers import NCTHW  # noqa: E402


def _pixels_of(loader, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(clips back in 0..255 units, labels) of one epoch, labels as the loader gives them."""
    loader.set_epoch(epoch)
    batches = list(loader)
    clips = np.concatenate([b["clips"].numpy() for b in batches])
    mean, std = (np.array(v).reshape(1, 3, 1, 1, 1) * 255 for v in (NCTHW.mean, NCTHW.std))
    return clips * std + mean, np.concatenate([b["labels"].numpy() for b in batches])


def _loader(data, seed=2, **augment):
    return build_loader(data, "train", NCTHW, 2, True, py_workers=1, seed=seed, augment=AugmentConfig(**augment))


def test_scale_jitter_box_shrinks_as_the_short_side_grows():
    cfg = AugmentConfig(train_crop="random", scale_jitter=(256, 320))
    sides = set()
    for s in range(200):
        x0, y0, x1, y1 = random_box(np.random.default_rng(s), 340, 256, cfg, 224)
        w, h = (x1 - x0) * 340, (y1 - y0) * 256
        assert w == pytest.approx(h) and 224 * 256 / 320 - 1e-6 <= w <= 224 + 1e-6
        assert 0 <= x0 and x1 <= 1 + 1e-9 and 0 <= y0 and y1 <= 1 + 1e-9
        sides.add(round(w, 3))
    assert len(sides) > 30
    centred = random_box(np.random.default_rng(0), 340, 256, AugmentConfig("center", scale_jitter=(512, 512)), 224,
                         centred=True)
    assert np.allclose(centred, [(170 - 56) / 340, (128 - 56) / 256, (170 + 56) / 340, (128 + 56) / 256])
    with pytest.raises(ValueError, match="scale_jitter"):
        AugmentConfig(scale_jitter=(256, 320))  # the multi-scale box is relative: rescaling would change nothing
    with pytest.raises(ValueError, match="crop_size"):
        train_params(np.random.default_rng(0), 64, 48, cfg)


def _red_span(clips: np.ndarray) -> np.ndarray:
    """Per clip: how much of the red ramp (0..255 over the 64 columns) the 32 output columns show."""
    return np.abs(clips[:, 0, :, :, -1] - clips[:, 0, :, :, 0]).mean(axis=(1, 2))


def test_scale_jitter_zooms_the_graph_crop(pattern_data):
    full, _ = _pixels_of(_loader(pattern_data, train_crop="center"), 0)  # the 48x48 centre square
    fixed, _ = _pixels_of(_loader(pattern_data, train_crop="center", scale_jitter=(48, 48)), 0)  # 32 stored px
    zoom, _ = _pixels_of(_loader(pattern_data, train_crop="center", scale_jitter=(96, 96)), 0)  # 16 stored px
    step = 255 / 63  # red per stored column
    assert _red_span(full) == pytest.approx(47 * step, abs=6)
    assert _red_span(fixed) == pytest.approx(31 * step, abs=6)
    assert _red_span(zoom) == pytest.approx(15 * step, abs=6)
    drawn, _ = _pixels_of(_loader(pattern_data, train_crop="random", scale_jitter=(48, 144)), 0)
    assert np.ptp(_red_span(drawn)) > 20  # the side is drawn per clip


def test_grayscale_makes_every_frame_of_a_clip_gray(pattern_data):
    gray, _ = _pixels_of(_loader(pattern_data, grayscale=1.0), 0)
    colour, _ = _pixels_of(_loader(pattern_data), 0)
    assert np.abs(gray[:, 0] - gray[:, 1]).max() < 2 and np.abs(gray[:, 1] - gray[:, 2]).max() < 2
    luma = 0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]  # torchvision's rgb_to_grayscale
    assert np.abs(gray[:, 0] - luma).max() < 2
    assert np.abs(colour[:, 0] - colour[:, 1]).mean() > 20
    half = [train_params(np.random.default_rng(s), 64, 48, AugmentConfig(grayscale=0.5))[7] for s in range(200)]
    assert set(half) == {0.0, 1.0} and 60 < half.count(0.0) < 140


def test_erase_box_follows_timm_ranges():
    cfg = AugmentConfig(erase=1.0)
    for s in range(100):
        x0, y0, x1, y1 = box = erase_box(np.random.default_rng(s), 224, cfg)
        assert np.allclose(np.rint(box * 224), box * 224, rtol=0, atol=1e-9) and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        area, aspect = (x1 - x0) * (y1 - y0), (y1 - y0) / (x1 - x0)
        assert 0.02 * 0.9 <= area <= 1 / 3 * 1.1 and 0.3 * 0.9 <= aspect <= 1 / 0.3 * 1.1
    off = [train_params(np.random.default_rng(s), 64, 48, AugmentConfig(erase=0.5), 32)[9:13] for s in range(100)]
    assert 20 < sum(not b.any() for b in off) < 80


@pytest.mark.parametrize("mode, dtype", [("const", torch.float32), ("pixel", torch.float32), ("pixel", torch.float16)])
def test_erase_replaces_one_box_per_clip_after_normalisation(pattern_data, mode, dtype):
    plain = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1, seed=2, dtype=dtype)
    erased = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1, seed=2, dtype=dtype,
                          augment=AugmentConfig(erase=1.0, erase_mode=mode))
    plain.set_epoch(0), erased.set_epoch(0)
    a = np.concatenate([b["clips"].float().numpy() for b in plain])
    b = np.concatenate([b["clips"].float().numpy() for b in erased])
    for clip, ref in zip(b, a):
        per_frame = (clip != ref).any(axis=0)  # (T, H, W)
        assert (per_frame == per_frame[0]).all()  # the same box in every frame of the clip
        changed = per_frame[0]  # (H, W): the erased pixels
        rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
        assert 0 < changed.sum() < changed.size
        assert changed[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # a rectangle
        inside = clip[:, :, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        if mode == "const":
            assert (inside == 0).all()
        else:  # per-pixel standard normal noise, in normalised units
            assert abs(inside.mean()) < 0.5 and 0.7 < inside.std() < 1.3
            assert (inside[:, 0] != inside[:, 1]).any()


def test_flip_swaps_the_label_of_mirrored_clips(pattern_data):
    loader = _loader(pattern_data, flip=True, flip_label_map={0: 1, 1: 0})
    swapped = kept = 0
    for epoch in range(4):
        loader.set_epoch(epoch)
        for batch in loader:
            clips = batch["clips"].numpy()
            for clip, label, index in zip(clips, batch["labels"].tolist(), batch["index"].tolist()):
                mirrored = clip[0, 0, :, 0].mean() > clip[0, 0, :, -1].mean()  # red falls left to right
                stored = loader.dataset.record(index)["label"]
                assert label == (1 - stored if mirrored else stored)
                swapped, kept = swapped + mirrored, kept + (not mirrored)
    assert swapped and kept


def test_flip_label_pairs_of_ssv2_names():
    classes = ["Pushing something from left to right", "Pushing something from right to left",
               "Turning the camera left while filming something", "Turning the camera right while filming something",
               "Tearing something into two pieces", "Moving something left"]
    assert flip_label_pairs("ssv2", classes) == {0: 1, 1: 0, 2: 3, 3: 2}
    assert flip_label_pairs({"3": "4"}, classes) == {3: 4} and flip_label_pairs(None, classes) == {}
    with pytest.raises(ValueError, match="flip"):
        AugmentConfig(flip_label_map="ssv2")
    with pytest.raises(ValueError, match="flip_label_map"):
        AugmentConfig(flip=True, flip_label_map=["ssv2"])


def test_image_loader_refuses_the_video_only_options():
    from pipelines import ImageLoader

    for augment in (AugmentConfig(grayscale=0.2), AugmentConfig(erase=0.25),
                    AugmentConfig(flip=True, flip_label_map="ssv2")):
        with pytest.raises(ValueError, match="videos only"):
            ImageLoader(None, NCTHW, 2, True, augment=augment)
