"""The external-source callback: what DALI's Python workers run for every sample.

`ClipSource` is stateless in the sense DALI needs: the sample at (epoch_idx, idx_in_epoch) is a pure
function of the source's fixed fields, so it can run in any worker process, in any order, forked or
spawned (it pickles). Its only mutable fields are per-process caches: the epoch's shuffle and the last clip.

The clip reader of the store kind (`readers`) reads a clip and says how many samples it makes. Frame path: one
sample per frame (sample s of the epoch is frame s mod T of clip s // T, see readers.py). The clip is read once per
process: consecutive samples go to the same worker (DALI hands each worker a contiguous range of the batch), so a
one-clip cache serves the other T - 1 frames, and every frame of a clip comes from the same read, damaged-video
replacement included.

Repeated augmentation (training, `plan.repeats` R > 1): the R copies of a video are R positions in a row; copy c
draws its frames and augmentation from `sample_rng(seed, epoch, video, c)` (copy 0's stream is the one without
repeats), so a copy depends only on (seed, epoch, video, copy) and a resumed epoch reads it again bit for bit.
With `same_frames` (mmaction's sample_once, PySlowFast's one decode per video) every copy takes copy 0's frames
and only its augmentation is its own.

A damaged or missing stored entry is replaced by the next readable video of the split, which keeps its own
label and index; every replacement is logged and appended to a `DamageLog` file that all workers share (once per
clip: by the sample that carries the clip's first frame). A video whose read killed a worker (worker_watch.py) is
in `unreadable` from then on: it is replaced like a damaged one, without being read again.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import lmdb
import numpy as np
import pyarrow as pa

from prep import DamagedEntry, PreppedDataset
from prep.dataset import UNLABELLED

from . import protocols
from .augment import AugmentConfig, flip_label_pairs, train_params, view_params
from .augment_units import Flip
from .orphans import die_with_parent, ignore_interrupts
from .readers import ClipReader
from .sampling import ClipSpec, EpochPlan, sample_rng, view_of
from .worker_watch import WorkerWatch

log = logging.getLogger("pipelines")
# what a damaged, missing or unreadable stored entry raises (OSError: a shard file gone or unreadable)
STORAGE_ERRORS = (DamagedEntry, OSError, lmdb.Error, pa.ArrowException)


class DamageLog:
    """One JSON line per replaced sample, appended from any process: a single O_APPEND write of a short
    line is atomic on a local file system, so no lock is needed."""

    def __init__(self, path: str):
        self.path = path

    def add(self, video: int, replacement: int, damaged: list[int], reason: str) -> None:
        line = json.dumps({"video": video, "replacement": replacement, "damaged": damaged, "reason": reason[:300]})
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def entries(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def stats(self) -> dict:
        """damaged: distinct damaged videos met so far; replaced: samples served by a replacement."""
        entries = self.entries()
        damaged = sorted({v for e in entries for v in e["damaged"]})
        return {"damaged": len(damaged), "replaced": len(entries), "damaged_videos": damaged}


@dataclass
class ClipSource:
    """Callable for `fn.external_source(batch=False, parallel=True)`.

    Returns, per sample, the `reader`'s payload (readers.FrameReader: one frame's JPEG buffer, T samples per clip;
    readers.VideoReader: the encoded video and the T frame indices, int32, one sample per clip), meta, params.
    meta = int64 [label (UNLABELLED for an unlabelled video), video index, view (training: the copy)];
    params = the clip's augmentation vector (`augment.param_count` floats). `clips` x (2 with `twice`) x `crops`
    evaluation views per video."""

    data: PreppedDataset
    plan: EpochPlan
    spec: ClipSpec
    augment: AugmentConfig
    reader: ClipReader
    damage_log: DamageLog
    first_epoch: int = 0
    clips: int = 1
    crops: int = 1
    verify: bool = True
    crop_size: int = 0  # the model's: the "random" crop, scale jitter and random erasing need it
    twice: bool = False  # evaluation: mmaction's twice_sample, 2 x clips temporal views
    same_frames: bool = False  # training with repeats: the copies share copy 0's frames
    geometry: tuple = (0, 0)  # evaluation: (short side, crop side) of the test protocol's views
    watch: WorkerWatch | None = None  # in a worker, each read is recorded there first
    unreadable: dict = field(default_factory=dict)  # video index -> why: its read killed a worker
    skip: int = 0  # samples of the first DALI epoch delivered before (a resumed epoch, a pipeline rebuilt)
    _flip_map: dict | None = field(default=None, repr=False)
    _orders: dict = field(default_factory=dict, repr=False)
    _last: tuple = field(default=(None, None), repr=False)  # ((epoch, position), resolved clip) of the last read
    _owner: int = field(default_factory=os.getpid, repr=False)  # the training process that built the pipeline

    def __setstate__(self, state):
        # a spawned DALI worker unpickles the source before its first sample (see orphans.ignore_interrupts)
        if os.getpid() != state["_owner"]:
            ignore_interrupts()
        self.__dict__.update(state)

    @property
    def num_outputs(self) -> int:
        return self.reader.num_outputs

    @property
    def samples_per_clip(self) -> int:
        return self.reader.samples_per_clip(self.spec.num_frames)

    def __call__(self, sample_info):
        if os.getpid() != self._owner:  # in a DALI worker: do not outlive a trainer killed with SIGKILL
            die_with_parent(self._owner)
        skip = self.skip if sample_info.epoch_idx == 0 else 0
        position, frame = divmod(sample_info.idx_in_epoch + skip, self.samples_per_clip)
        if position >= self.plan.num_positions:
            raise StopIteration
        epoch = self.first_epoch + sample_info.epoch_idx
        video, view = self.plan.item(position, epoch, self._order(epoch))
        if self._last[0] != (epoch, position):
            self._last = ((epoch, position), self._resolve(video, view, epoch))
        out, replaced = self._last[1]
        if replaced and frame == 0:
            self._report(video, *replaced)
        return self.reader.sample(out, frame)

    def _order(self, epoch: int):
        if not self.plan.training:
            return None
        if epoch not in self._orders:
            self._orders.clear()  # one epoch at a time: keeps memory at one permutation
            self._orders[epoch] = self.plan.order(epoch)
        return self._orders[epoch]

    def sample(self, video: int, view: int, epoch: int) -> tuple:
        """The whole clip of (video, view), or of the next readable video if that one is damaged: the reader's
        payload (the T JPEG buffers; the encoded video and its frame indices), meta, params."""
        out, replaced = self._resolve(video, view, epoch)
        if replaced:
            self._report(video, *replaced)
        return out

    def _resolve(self, video: int, view: int, epoch: int) -> tuple[tuple, tuple | None]:
        """(clip, None), or (the stand-in's clip, (stand-in, damaged videos, reason)) when `video` is damaged."""
        n = len(self.data)
        damaged, reason = [], ""
        for step in range(n):
            index = (video + step) % n
            try:
                out = self._read_watched(index, view, epoch)
            except STORAGE_ERRORS as e:
                damaged.append(index)
                reason = reason or f"{type(e).__name__}: {e}"
                continue
            if not damaged:
                return out, None
            if not self.plan.training:
                out = _placeholder(out, video, _label(self.data.rows[video]))
            return out, (index, damaged, reason)
        # a DamagedEntry, which the loader takes out of DALI's wrapper: the command's one line, not a traceback
        raise DamagedEntry(f"every video of split {self.data.split!r} of {self.data.root} is damaged or unreadable, "
                           f"e.g. {reason}")

    def _read_watched(self, index: int, view: int, epoch: int) -> tuple:
        if index in self.unreadable:
            raise DamagedEntry(self.unreadable[index])
        if self.watch is None or os.getpid() == self._owner:  # the loader's own process keeps its faulthandler
            return self._read(index, view, epoch)
        self.watch.reading(index)
        try:
            return self._read(index, view, epoch)
        finally:
            self.watch.done()

    def _flip_labels(self) -> dict[int, int]:
        if self._flip_map is None:
            self._flip_map = flip_label_pairs(self.augment.flip_label_map, self.data.classes)
        return self._flip_map

    def _report(self, video: int, index: int, damaged: list[int], reason: str) -> None:
        log.warning("damaged stored video %s replaced by %s: %s",
                    self.data.rows[video]["id"], self.data.rows[index]["id"], reason)
        self.damage_log.add(video, index, damaged, reason)

    def _read(self, index: int, view: int, epoch: int) -> tuple:
        row = self.data.rows[index]
        width, height = row["size"]
        protocol, rule = protocols.get(self.spec.protocol), protocols.rule_of(self.spec, self.clips, self.twice)
        if self.plan.training:
            rng = sample_rng(self.plan.seed, epoch, index, view)
            frames = protocol.train_clip(row["num_frames"], rule, rng)
            if self.same_frames and view > 0:  # copy 0's frames; this copy's stream still drew its own, so its
                # augmentation is the one it has without same_frames
                frames = protocol.train_clip(row["num_frames"], rule, sample_rng(self.plan.seed, epoch, index))
            params = train_params(rng, width, height, self.augment, self.crop_size)
        else:
            frames, params = self._test_view(row, view, protocol, rule)
        label = _label(row)
        if self.plan.training and self.augment.layout.values(params, Flip.slot).at():
            label = self._flip_labels().get(label, label)  # a mirrored clip: left <-> right classes swap
        meta = np.array([label, index, view], dtype=np.int64)
        return (*self.reader.read(self.data, index, row, frames, self.verify), meta, params)

    def _test_view(self, row: dict, view: int, protocol, rule) -> tuple:
        """(frame indices, parameter vector) of evaluation view `view`: temporal view clip x crop. The protocol's
        resize is of the source video's frame size where the authors resize decoded video (mmaction, ILA), of the
        stored frames otherwise; either way the stored frames are resized straight to it."""
        clip, crop = view_of(view, self.crops)
        clips = protocol.test_clips(row["num_frames"], rule)
        reference = row.get("orig_size") if protocol.source_size and row.get("orig_size") else row["size"]
        short, side = self.geometry
        box = protocol.boxes(*reference, self.crops, side, short)[crop]
        return clips[clip % len(clips)], view_params(box.resize, box.box, box.flip)


def _label(row: dict) -> int:
    return UNLABELLED if row["label"] is None else row["label"]


def _placeholder(sample: tuple, video: int, label: int) -> tuple:
    """In evaluation a damaged view is not scored: the readable sample only fills the batch slot, marked
    with view -1 under the damaged video's index and label so that the scorer skips it and reports the video."""
    meta = sample[-2].copy()
    meta[0], meta[1], meta[2] = label, video, -1
    return (*sample[:-2], meta, sample[-1])
