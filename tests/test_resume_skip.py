"""A resumed epoch starts after the batches trained before it: the loader's plan is a function of the position, so
`set_epoch(epoch, skip_batches=k)` yields exactly the uninterrupted epoch's batches from k on, and never reads the
videos of the first k (a run resumed at 90 % of a Kinetics epoch used to decode those 90 % again and drop them)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from helpers import damage_video
from models.registry import InputContract
from pipelines import build_loader
from prep import open_dataset

CONTRACT = InputContract("NCTHW", num_frames=4, crop_size=32)
SKIP = 3


def _loader(root):
    return build_loader(open_dataset(str(root), "train"), "train", CONTRACT, batch_size=4, training=True,
                        py_workers=1, num_threads=1, seed=3)


def _batches(loader, epoch, skip=0):
    loader.set_epoch(epoch, skip_batches=skip)
    return [{k: v.float().numpy() if k == "clips" else v.numpy() for k, v in b.items()} for b in loader]


def test_a_resumed_epoch_yields_the_rest_of_the_epoch_and_never_reads_the_batches_before(data, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(data, root)
    whole = _batches(_loader(root), epoch=1)
    before = {int(i) for b in whole[:SKIP] for i in b["index"]}
    after = {int(i) for b in whole[SKIP:] for i in b["index"]}
    unread = sorted(before - after)
    assert unread, "the plan read every video of the first batches again later: pick another seed"
    for video in unread:  # read, they would be counted damaged and replaced
        damage_video(str(root), video)

    loader = _loader(root)
    rest = _batches(loader, epoch=1, skip=SKIP)
    assert len(rest) == len(whole) - SKIP
    for got, want in zip(rest, whole[SKIP:]):
        assert np.array_equal(got["index"], want["index"]) and np.array_equal(got["labels"], want["labels"])
        assert np.array_equal(got["clips"], want["clips"])
    assert loader.stats["damaged"] == 0
    assert loader.epoch == 2
    following = _batches(loader, epoch=2)  # the next epoch is whole again
    assert len(following) == len(whole) and loader.stats["damaged"] > 0  # and it does meet the damaged videos


def test_skipping_more_batches_than_an_epoch_has_is_refused(data):
    loader = _loader(data)
    with pytest.raises(ValueError, match="cannot skip"):
        loader.set_epoch(0, skip_batches=len(loader) + 1)
    loader.set_epoch(0, skip_batches=len(loader))
    assert list(loader) == [] and loader.epoch == 1
