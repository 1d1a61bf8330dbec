"""What evaluation reads of a training run's config, and the values a run has when its checkpoint records none (an
authors' file) or lacks a key (written before the key existed). The trainer's config (train.config.TrainConfig)
takes these keys' defaults from here: one copy, and evaluation never imports training."""
from __future__ import annotations

import copy

RUN_DEFAULTS = {
    "task": "video",
    "data": "",
    "protocol": "vidkit",
    "frames_per_group": 1,
    "image_size": 0,
    "augment": {},
    "seed": 0,
    "threads": 0,
    "data_path": "auto",
    "hw_decoder_load": 0.9,
    "preallocate_width_hint": 0,
    "preallocate_height_hint": 0,
}


def run_config(rec) -> dict:
    """The run's resolved config for a toolkit checkpoint (its Recognized `rec`); RUN_DEFAULTS for an authors'
    file and for the keys an older checkpoint lacks."""
    return dict(copy.deepcopy(RUN_DEFAULTS), **(rec.config or {}))
