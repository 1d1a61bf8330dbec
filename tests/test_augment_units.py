"""The augmentation units (pipelines.augment_units): each unit owns its config keys, checks them itself, draws
exactly its named slot of the parameter vector, and the graph reads the vector by slot name. Pure numpy: the pixel
tests of test_pipelines_* hold the DALI graph to its pixels."""
import dataclasses
import typing

import numpy as np
import pytest

from pipelines.augment import EVAL_LAYOUT, PARAMS, TRAIN_UNITS, AugmentConfig, train_params, view_params
from pipelines.augment_units import EvalView, Flip, ParamLayout, RandAugment, RandomErase, TrainCrop

RECIPES = [{}, dict(flip=True, jitter=(0.4, 0.4, 0.4, 0.1), grayscale=0.2),
           dict(train_crop="random", scale_jitter=(40, 80), erase=0.6, erase_mode="const"),
           dict(train_crop="resized", flip=True, rand_augment=3, erase=0.3)]


def _keys(unit) -> set:
    return {f.name for f in dataclasses.fields(unit)}


def test_every_config_key_belongs_to_exactly_one_unit():
    owners = [*TRAIN_UNITS, EvalView]
    keys = [k for unit in owners for k in _keys(unit)]
    assert len(keys) == len(set(keys)), "a key declared by two units"
    assert set(keys) == _keys(AugmentConfig)
    # the typed config checks (train/config_types) read these hints: the units' class attributes are no keys
    assert set(typing.get_type_hints(AugmentConfig)) == set(keys)


def test_config_builds_its_units_with_its_own_values():
    cfg = AugmentConfig(flip=True, flip_label_map="ssv2", erase=0.25, rand_augment=2, train_crop="center")
    flip, erase, ra, crop = (cfg.unit(kind) for kind in (Flip, RandomErase, RandAugment, TrainCrop))
    assert (flip.flip, flip.flip_label_map, erase.erase, ra.rand_augment, crop.train_crop) == \
        (True, "ssv2", 0.25, 2, "center")
    assert [type(u) for u in cfg.units] == list(TRAIN_UNITS)


BAD_KEYS = [(Flip, dict(flip_label_map="ssv2")), (RandomErase, dict(erase=1.5)), (TrainCrop, dict(scale_jitter=(10, 20))),
            (RandAugment, dict(rand_augment_m=31))]


@pytest.mark.parametrize("unit, bad", BAD_KEYS)
def test_a_unit_checks_its_own_keys_as_the_config_does(unit, bad):
    with pytest.raises(ValueError) as alone:
        unit(**bad)
    with pytest.raises(ValueError) as in_config:
        AugmentConfig(**bad)
    assert str(alone.value) == str(in_config.value)


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_unit_draws_exactly_its_slot_in_order(recipe):
    cfg = AugmentConfig(**recipe)
    slots = [cfg.layout[unit.slot] for unit in cfg.units]
    assert [s.start for s in slots] == list(np.cumsum([0] + [s.width for s in slots])[:-1])
    assert cfg.layout.size == sum(s.width for s in slots) == PARAMS + 2 * cfg.rand_augment
    for seed in range(20):
        vector = train_params(np.random.default_rng(seed), 96, 64, cfg, 32)
        rng = np.random.default_rng(seed)  # the same stream, drawn unit by unit
        for unit, slot in zip(cfg.units, slots):
            np.testing.assert_array_equal(vector[slot.start:slot.start + slot.width],
                                          np.float32(unit.draw(rng, 96, 64, 32)))


def test_a_draw_of_the_wrong_width_is_refused_naming_its_slot():
    layout = ParamLayout([("box", 4), ("mirror", 1)])
    with pytest.raises(ValueError, match="slot 'mirror' holds 1 values, got 2"):
        layout.pack({"box": np.zeros(4), "mirror": [0, 1]})


def test_the_mirror_slot_is_read_by_name_in_training_and_evaluation_vectors():
    """The graph takes the mirror flag from each kind of vector by name: a flipped training clip and a mirrored
    view carry their 1 there, and nowhere else that the other slots would read as a mirror."""
    cfg = AugmentConfig(flip=True)
    mirror = cfg.layout["mirror"]
    flips = [train_params(np.random.default_rng(s), 64, 48, cfg)[mirror.start] for s in range(50)]
    assert set(flips) == {0.0, 1.0}
    view = view_params((70, 52), (3, 4, 35, 36), True)
    assert view[EVAL_LAYOUT["mirror"].start] == 1 and len(view) == EVAL_LAYOUT.size == PARAMS
    assert EVAL_LAYOUT["resize"].width == 2 and view[EVAL_LAYOUT["corner"].start] == 3
