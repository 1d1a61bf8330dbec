"""The clip reader per store kind (pipelines.readers): the source asks its reader what a clip is and how many samples
it makes, and never which kind it is, so a reader of another kind plugs in unchanged."""
import types

import numpy as np
import pytest

from models.registry import InputContract
from pipelines.augment import AugmentConfig
from pipelines.readers import READERS, reader_of
from pipelines.sampling import ClipSpec, EpochPlan
from pipelines.source import ClipSource, DamageLog
from prep import open_dataset

CONTRACT = InputContract("NCTHW", 4, 32)


class IndexReader:
    """A reader of a third kind: a clip is its frame indices, one sample per clip, in two outputs."""
    name = "indices"
    num_outputs = 3
    per_frame = False
    can_crop_on_decode = False

    def __init__(self):
        self.reads = []

    def samples_per_clip(self, num_frames: int) -> int:
        return 1

    def read(self, data, index, row, frames, verify):
        self.reads.append(index)
        return (np.asarray(frames, np.int32),)

    def sample(self, clip, frame):
        return clip


def _source(data, reader, tmp_path) -> ClipSource:
    ds = open_dataset(str(data), "train")
    return ClipSource(ds, EpochPlan(len(ds), 2, True), ClipSpec.of(CONTRACT), AugmentConfig(), reader,
                      DamageLog(str(tmp_path / "damage.jsonl")))


def _info(idx: int):
    return types.SimpleNamespace(idx_in_epoch=idx, epoch_idx=0)


def test_the_source_takes_its_outputs_and_samples_from_the_reader(data, tmp_path):
    reader = IndexReader()
    source = _source(data, reader, tmp_path)
    assert (source.num_outputs, source.samples_per_clip) == (3, 1)
    frames, meta, params = source(_info(0))
    frames_ref = _source(data, READERS["frames"], tmp_path)
    *jpegs, meta_ref, params_ref = frames_ref.sample(int(meta[1]), 0, 0)
    assert len(jpegs) == len(frames) == 4 and reader.reads == [meta[1]]
    np.testing.assert_array_equal(meta, meta_ref)
    np.testing.assert_array_equal(params, params_ref)


def test_the_frame_reader_serves_one_frame_per_sample_from_one_read(data, tmp_path):
    source = _source(data, READERS["frames"], tmp_path)
    assert (source.num_outputs, source.samples_per_clip) == (3, 4)
    *jpegs, meta, _ = source.sample(*source.plan.item(0, 0, source._order(0)), 0)
    for frame in range(4):
        jpeg, sample_meta, _ = source(_info(frame))
        np.testing.assert_array_equal(jpeg, jpegs[frame])
        np.testing.assert_array_equal(sample_meta, meta)


def test_an_unknown_store_kind_is_refused_in_one_line():
    assert reader_of("video") is READERS["video"] and READERS["video"].samples_per_clip(8) == 1
    with pytest.raises(ValueError, match=r"store kind must be one of \('frames', 'video'\), got 'jpeg'"):
        reader_of("jpeg")
