"""pipelines.augment: the per-clip parameters drawn in the source (pure numpy, no DALI)."""
import numpy as np
import pytest

from pipelines.augment import (PARAMS, AugmentConfig, center_box, eval_params, eval_positions, multi_scale_box,
                               random_resized_box, train_params)


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
    assert p.shape == (PARAMS,) and p.dtype == np.float32 and p[5:].tolist() == [1, 1, 1, 0]
    cfg = AugmentConfig(jitter=(0.4, 0.3, 0.2, 0.1), jitter_prob=1.0)
    for s in range(50):
        b, c, sat, hue = train_params(np.random.default_rng(s), 64, 48, cfg)[5:]
        assert 0.6 <= b <= 1.4 and 0.7 <= c <= 1.3 and 0.8 <= sat <= 1.2 and -36 <= hue <= 36


def test_eval_positions():
    assert eval_positions(1, 64, 48) == [(0.5, 0.5, 0.0)]
    assert [p[:2] for p in eval_positions(3, 64, 48)] == [(0.0, 0.5), (0.5, 0.5), (1.0, 0.5)]  # along the width
    assert [p[:2] for p in eval_positions(3, 48, 64)] == [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)]  # along the height
    five = eval_positions(5, 64, 48)
    assert len(set(five)) == 5 and all(m == 0 for *_, m in five)
    ten = eval_positions(10, 64, 48)
    assert ten[:5] == five and [p[:2] for p in ten[5:]] == [p[:2] for p in five] and all(p[2] == 1 for p in ten[5:])
    assert eval_params(7, 10, 64, 48)[:3].tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="crops"):
        eval_positions(4, 64, 48)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="train_crop"):
        AugmentConfig(train_crop="random")
    with pytest.raises(ValueError, match="eval_scale"):
        AugmentConfig(eval_scale=0.5)
    with pytest.raises(ValueError, match="jitter"):
        AugmentConfig(jitter=(0.1, 0.1))
    assert AugmentConfig().eval_short_side(224) == 256 and AugmentConfig(eval_scale=1).eval_short_side(224) == 224
