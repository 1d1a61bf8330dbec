"""`build_loader`: a prepped split + a model's InputContract -> an iterable of torch batches from DALI.

Epochs: the source derives its plan from DALI's epoch counter plus the epoch the pipeline was built for,
so consecutive epochs run on one pipeline (its workers stay up). The pipeline is reset when the next
epoch is asked for, not when one ends, so nothing is read past the last epoch and `stats` are exact at
epoch boundaries. `set_epoch` with any other epoch, or a new pass after an epoch
was abandoned half way, rebuilds the pipeline: DALI cannot rewind a parallel source mid-epoch.

A worker killed by a signal while it read a video (a damaged LMDB page: SIGBUS, see worker_watch.py) does not end
the run: the video is logged, counted and replaced like a damaged one from then on, and the pipeline is rebuilt
to go on from the batch it was making. A death that names no video, or more than `MAX_WORKER_DEATHS` of them, is
a DamagedShard naming the shard, so that the command's one line points to `python -m prep verify`. Not recoverable:
DALI's pool deadlocking after the death (worker_watch.StuckPool): the process says so in one line and exits 1.

Repeated augmentation (`repeats` R, training; PySlowFast's AUG.NUM_SAMPLE, mmaction's RepeatAugDataset): a
batch holds `batch_size` videos x R copies, copies of a video next to each other and labels repeated; an epoch
keeps its number of batches (every video of the rank's slice once, in R copies). Evaluation views: `clips`
(x 2 with `twice`, mmaction's twice_sample) temporal x `crops` spatial per video.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
import weakref

import numpy as np
import torch

from prep import DamagedEntry, DamagedShard, PreppedDataset, open_dataset

from . import protocols
from .augment import EVAL_CROPS, AugmentConfig
from .pipeline import GraphOptions, build_pipeline
from .readers import READERS, ClipReader, reader_of
from .resources import HW_DECODER_LOAD, image_decoder_args, largest_frame, resolve_threads
from .sampling import ClipSpec
from .shard_plan import ShardFeed, ShardPlan, plan_for
from .source import ClipSource, DamageLog
from .worker_watch import StuckPool, WorkerDeath, WorkerWatch

log = logging.getLogger("pipelines")
PATHS = ("auto", *READERS)
MAX_WORKER_DEATHS = 8  # per loader: more videos that kill their reader means a badly damaged store
_DTYPES = ("float32", "float16", "bfloat16")


def to_dali_dtype(dtype: torch.dtype):
    from nvidia.dali import types

    if dtype == torch.float32:
        return types.FLOAT
    if dtype in (torch.float16, torch.bfloat16):  # DALI has no bfloat16: half from DALI, bf16 cast in torch
        return types.FLOAT16
    raise ValueError(f"dtype must be one of torch.{', torch.'.join(_DTYPES)}, got {dtype}")


def _open(data, split: str) -> PreppedDataset:
    if not isinstance(data, PreppedDataset):
        return open_dataset(os.fspath(data), split)
    if data.split != split:
        raise ValueError(f"dataset {data!r} holds split {data.split!r}, not {split!r}: "
                         f"pass open_dataset(root, {split!r}) or the folder")
    return data


def _choose_reader(ds: PreppedDataset, path: str, device_id: int | None) -> ClipReader:
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    store = ds.store
    path = store if path == "auto" else path
    if path != store:
        raise ValueError(f"path {path!r} needs a dataset prepped with --store {path}, but {ds.root} stores {store}")
    reader = reader_of(path)
    reader.check(ds, device_id)
    return reader


def _check_counts(batch_size, clips, crops, training, num_threads, py_workers, world_size) -> None:
    if batch_size < 1 or num_threads < 1 or py_workers < 1 or world_size < 1:
        raise ValueError(f"batch_size, num_threads, py_workers and world_size must be >= 1, got {batch_size}, "
                         f"{num_threads}, {py_workers}, {world_size}")
    if clips < 1 or crops not in EVAL_CROPS:
        raise ValueError(f"clips must be >= 1 and crops one of {EVAL_CROPS}, got clips={clips}, crops={crops}")
    if training and (clips, crops) != (1, 1):
        raise ValueError(f"training reads one clip and one crop per video, got clips={clips}, crops={crops}")


def _check_sampling(training: bool, repeats: int, same_frames: bool, twice: bool, spec: ClipSpec) -> None:
    """The repeated-augmentation and twice-sampling options: each only where it does something."""
    if repeats < 1 or (repeats > 1 and not training):
        raise ValueError(f"repeats must be >= 1, and 1 for evaluation, got {repeats}")
    if same_frames and repeats == 1:
        raise ValueError("same_frames shares the frames of repeated copies: it needs repeats > 1")
    if twice and training:
        raise ValueError("twice sampling is an evaluation protocol; training draws its frames at random")


def _check_protocol(spec: ClipSpec, clips: int, crops: int, twice: bool, geometry: tuple, rows: list[dict],
                    training: bool) -> None:
    """The protocol has the loader's sampling, clip count, crops and twice, its views are the model's length, and
    its crops fit every stored video's resized frame: one line before any work, not a worker's error later."""
    protocol = protocols.get(spec.protocol)
    rule = protocols.rule_of(spec, clips, twice)
    protocol.check_length(rule, spec.num_frames)
    if training:
        return
    short, side = geometry
    sizes = {tuple(r.get("orig_size") or r["size"]) if protocol.source_size else tuple(r["size"]) for r in rows}
    for size in sorted(sizes):
        protocol.boxes(*size, crops, side, short)


class VideoLoader:
    """Iterate for one epoch of batches: dicts of "clips", "labels", "index", "view" torch tensors."""

    def __init__(self, data, split, contract, batch_size, training, clips=1, crops=1, device_id=None, rank=0,
                 world_size=1, seed=0, num_threads=None, py_workers=None, augment=None, dtype=torch.float32,
                 path="auto", verify=True, prefetch=2, py_start_method=None, hw_decoder_load=HW_DECODER_LOAD,
                 preallocate=None, frames_per_group=1, repeats=1, same_frames=False, twice=False, protocol="vidkit",
                 geometry=None):
        num_threads, py_workers = resolve_threads(num_threads, py_workers)
        _check_counts(batch_size, clips, crops, training, num_threads, py_workers, world_size)
        self.spec = ClipSpec.of(contract, int(frames_per_group), protocol)
        _check_sampling(bool(training), int(repeats), bool(same_frames), bool(twice), self.spec)
        self.dataset = _open(data, split)
        self.reader = _choose_reader(self.dataset, path, device_id)
        self.contract, self.training, self.dtype = contract, bool(training), dtype
        self.clips, self.crops, self.device_id = int(clips), int(crops), device_id
        self.twice, self.same_frames = bool(twice), bool(same_frames)
        self.augment = augment if augment is not None else AugmentConfig()
        crop = int(contract.crop_size)
        # (short side, crop side) of the test views: the caller's protocol geometry, else the augment config's
        self.geometry = tuple(int(g) for g in geometry) if geometry else (self.augment.eval_short_side(crop),
                                                                          self.augment.eval_crop_side(crop))
        try:
            _check_protocol(self.spec, self.clips, self.crops, self.twice, self.geometry, self.dataset.rows,
                            self.training)
        except protocols.ProtocolError as e:
            raise ValueError(f"protocol {protocol}: {e}") from None
        self.plan = plan_for(self.dataset, int(batch_size), self.training, self.num_views, int(rank),
                             int(world_size), int(seed), int(repeats))
        largest = largest_frame(self.dataset.rows)  # per side, 0 or None: the dataset's largest stored frame
        preallocate = tuple(int(p or d) for p, d in zip(preallocate or (0, 0), largest))
        self.graph = GraphOptions(int(contract.crop_size), tuple(contract.mean), tuple(contract.std),
                                  contract.layout, self.training, self.augment, to_dali_dtype(dtype),
                                  "cpu" if device_id is None else "mixed", float(hw_decoder_load), tuple(preallocate),
                                  eval_crop=self.geometry[1])
        image_decoder_args(self.graph.decoder_device, hw_decoder_load)  # a bad value fails here, not at build
        self.num_threads, self.py_workers, self.verify, self.prefetch = num_threads, py_workers, verify, prefetch
        # spawned workers stay clear of a CUDA context the parent holds or will hold; fork starts faster
        cuda = device_id is not None or torch.cuda.is_initialized()
        self.py_start_method = py_start_method or ("spawn" if cuda else "fork")
        self.device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
        scratch = tempfile.mkdtemp(prefix="pipelines-")
        # removed with the loader, as a TemporaryDirectory would be, without its "implicitly cleaning up" warning
        weakref.finalize(self, shutil.rmtree, scratch, ignore_errors=True)
        self.damage_log = DamageLog(os.path.join(scratch, "damaged.jsonl"))
        self._watch = WorkerWatch(scratch)
        self._unreadable: dict[int, str] = {}  # video index -> why: reading it killed a worker
        self._stuck = StuckPool(self._watch, functools.partial(death_line, self.dataset))  # not self: no cycle
        self.epoch, self._skip = 0, 0
        self._pipe = self._iterator = None
        self._pipe_epoch = 0  # the epoch the pipeline's next DALI epoch will read
        self._mid_epoch = self._ended = False
        # a streamed s3:// split: its shards are fetched ahead of the batches; DALI's queues read ahead this far
        self._feed = ShardFeed(self.dataset, self.plan, (2 * prefetch + 2) * self.plan.clips_per_batch) \
            if isinstance(self.plan, ShardPlan) else None

    # ------------------------------------------------------------------ public

    def __len__(self) -> int:
        return self.plan.num_batches

    @property
    def num_videos(self) -> int:
        return len(self.dataset)

    @property
    def num_views(self) -> int:
        """Evaluation views per video, temporal (as the protocol counts them) x crops (training: 1)."""
        if self.training:
            return 1
        rule = protocols.rule_of(self.spec, self.clips, self.twice)
        return protocols.get(self.spec.protocol).view_count(rule) * self.crops

    @property
    def path(self) -> str:
        """The store kind read: "frames" | "video"."""
        return self.reader.name

    @property
    def repeats(self) -> int:
        return self.plan.repeats

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        return self.plan.num_samples

    @property
    def stats(self) -> dict:
        return self.damage_log.stats()

    @property
    def shard_feed(self) -> ShardFeed | None:
        """A split streamed from object storage: what feeds its shards to the node cache (None otherwise)."""
        return self._feed

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The epoch the next pass reads; `skip_batches`: it starts after that many batches of the epoch (a resumed
        run's), which are never read: the plan is a function of the position, so nothing before it is decoded."""
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"cannot skip {skip_batches} batches of an epoch of {len(self)}")
        self.epoch, self._skip = int(epoch), int(skip_batches)

    def __iter__(self):
        return self._epoch_batches()

    def close(self) -> None:
        """Stop the DALI pipeline and its worker processes."""
        self._iterator = self._pipe = None
        self._mid_epoch = self._ended = False

    def __del__(self):
        self.close()
        if getattr(self, "_stuck", None) is not None:
            self._stuck.close()
        if getattr(self, "_feed", None) is not None:
            self._feed.close()

    def __repr__(self) -> str:
        return (f"VideoLoader({self.dataset.root!r}, split={self.dataset.split!r}, path={self.path}, "
                f"training={self.training}, batches={len(self)}, views={self.num_views}, device={self.device})")

    def clip_source(self, first_epoch: int, skip: int = 0) -> ClipSource:
        """What the DALI pipeline reads from `first_epoch` on, less its first `skip` samples (bench.stages draws the
        same clips from it)."""
        return ClipSource(self.dataset, self.plan, self.spec, self.augment, self.reader, self.damage_log,
                          first_epoch, self.clips, self.crops, self.verify, int(self.contract.crop_size),
                          self.twice, self.same_frames, self.geometry, watch=self._watch,
                          unreadable=dict(self._unreadable), skip=skip)

    # ------------------------------------------------------------------ internals

    def _ensure_pipeline(self, epoch: int, skip: int = 0) -> None:
        stale = self.training and self._pipe_epoch != epoch  # evaluation reads the same plan every epoch
        if self._pipe is not None and not stale and not self._mid_epoch and not skip:
            if self._ended:  # reset only now, so nothing is read ahead past the last epoch asked for
                self._iterator.reset()
                self._ended = False
            return
        if self._pipe is not None:
            log.info("rebuilding the DALI pipeline for epoch %d (%s)", epoch, "previous epoch abandoned"
                     if self._mid_epoch else "starting after batch %d" % skip if skip else "not the next epoch")
        self.close()
        self._build(epoch, skip)

    def _build(self, epoch: int, first_batch: int) -> None:
        """A pipeline whose first DALI epoch is `epoch` from batch `first_batch` on."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        seed = int(np.random.SeedSequence([self.plan.seed, self.plan.rank]).generate_state(1)[0] % (2**31 - 1))
        skip = first_batch * self.plan.clips_per_batch * self.reader.samples_per_clip(self.spec.num_frames)
        self._pipe = build_pipeline(self.clip_source(epoch, skip), self.graph, self.plan.clips_per_batch,
                                    self.num_threads, self.py_workers, self.device_id, seed, self.prefetch,
                                    self.py_start_method)
        self._pipe_epoch = epoch
        with self._stuck.in_dali():  # the iterator reads its first batches now
            self._iterator = DALIGenericIterator([self._pipe], ["clips", "meta"], auto_reset=False)

    def _epoch_batches(self):
        if len(self) == 0:
            return
        epoch, skip, self._skip = self.epoch, self._skip, 0
        if skip == len(self):  # the whole epoch was read before
            self.epoch = epoch + 1
            return
        if self._feed is not None:  # before the pipeline: DALI reads its first batches when it is built
            self._feed.start(epoch, skip * self.plan.clips_per_batch)
        try:
            self._ensure_pipeline(epoch, skip)
        except Exception:  # noqa: BLE001 - a worker killed while DALI read ahead: rebuilt by _batch_surviving
            self._after_worker_death()
        self._mid_epoch = True
        left = self.plan.num_samples - skip * self.plan.clips_per_batch
        for number in range(skip, len(self)):
            out = self._batch_surviving(epoch, number)
            if number == len(self) - 1:
                self._finish_epoch(epoch)
            batch = self._to_batch(out["clips"], out["meta"], min(left, self.plan.clips_per_batch))
            left -= self.plan.clips_per_batch
            yield batch

    def _next_batch(self, number: int):
        if self._feed is None:
            with self._stuck.in_dali():
                return next(self._iterator)[0]
        self._feed.advance(number * self.plan.clips_per_batch)
        try:
            with self._stuck.in_dali():
                return next(self._iterator)[0]
        except Exception:
            if self._feed.error() is not None:  # a worker waited for a shard the prefetcher could not fetch
                self.close()
                raise self._feed.error() from None
            raise

    def _batch_surviving(self, epoch: int, number: int):
        """Batch `number`; a worker killed reading a video: that video is unreadable from now on, and a pipeline is
        built again from this batch on."""
        while True:
            try:
                if self._pipe is None:
                    self._build(epoch, number)
                    self._mid_epoch = True
                return self._next_batch(number)
            except StopIteration:
                raise
            except Exception:  # noqa: BLE001 - re-raised unless a worker's death explains it
                self._after_worker_death()

    def _after_worker_death(self) -> None:
        """Called with a DALI failure on its way: re-raises it unless a worker was killed by a signal; else stops
        the other workers and the pipeline and marks the video it read, or raises DamagedShard."""
        death = self._watch.death()
        if death is None:
            damage = _damage_in_worker(sys.exc_info()[1])
            if damage is not None:
                raise damage from None
            if self._watch.lost_one():  # killed from outside: the others must not keep DALI's pool waiting
                self._watch.stop_workers()
                self.close()
            raise  # noqa: PLE0704 - the failure being handled
        self._watch.stop_workers()
        self.close()
        line = death_line(self.dataset, death)
        if len(self._unreadable) >= MAX_WORKER_DEATHS:
            raise DamagedShard(f"{line}; {len(self._unreadable)} other videos killed their reader before") from None
        if death.video is None or death.video in self._unreadable:
            raise DamagedShard(line) from None
        log.warning("%s: it is left out from now on", line)
        self._unreadable[death.video] = line

    def _finish_epoch(self, epoch: int) -> None:
        """Called on the last batch: DALI must now end the epoch."""
        try:
            next(self._iterator)
        except StopIteration:
            self._mid_epoch, self._ended = False, True
            self._pipe_epoch = epoch + 1
            self.epoch = epoch + 1
            return
        self.close()
        raise RuntimeError(f"DALI yielded more than the planned {len(self)} batches for the epoch")

    def _to_batch(self, data: torch.Tensor, meta: torch.Tensor, count: int) -> dict:
        """DALI's frames (B * T, ...) or clips (B, T, ...) -> clips in the contract's layout, as a view: NCTHW comes
        out channels_last_3d (see augment.output_layout), NTCHW contiguous."""
        clips = data.unflatten(0, (-1, self.spec.num_frames)) if data.dim() == 4 else data
        if self.contract.layout == "NCTHW":
            clips = clips.permute(0, 4, 1, 2, 3)
        meta = meta[:: data.shape[0] // clips.shape[0]]
        if count < clips.shape[0]:  # evaluation's padded last batch
            clips, meta = clips[:count], meta[:count]
        if self.dtype == torch.bfloat16:
            clips = clips.to(torch.bfloat16)
        return {"clips": clips, "labels": meta[:, 0].contiguous(), "index": meta[:, 1].contiguous(),
                "view": meta[:, 2].contiguous()}


def death_line(dataset: PreppedDataset, death: WorkerDeath) -> str:
    if death.video is None:
        return f"{dataset.root}: a data worker was killed by {death.signal} between reads"
    row = dataset.rows[death.video]
    shard = os.path.join(dataset.reader.dir, row["shard"])
    return f"{shard}: damaged shard: reading video {row['id']} killed a data worker ({death.signal})"


def _damage_in_worker(e: BaseException) -> DamagedEntry | None:
    """The DamagedEntry a worker raised, from DALI's wrapper: an Exception holding the worker's traceback, from a
    RuntimeError holding only the message (DALI's workers send back no other exception type)."""
    last = str(e).strip().rsplit("\n", 1)[-1]
    for kind in (DamagedShard, DamagedEntry):
        if last.startswith(f"{kind.__module__}.{kind.__name__}: ") and e.__cause__ is not None:
            return kind(str(e.__cause__))
    return None


def build_loader(data, split, contract, batch_size, training, clips=1, crops=1, device_id=None, rank=0,
                 world_size=1, seed=0, num_threads=None, py_workers=None, augment=None, dtype=torch.float32,
                 path="auto", **options) -> VideoLoader:
    """See the package docstring; num_threads / py_workers None (or 0): this rank's share of the cores
    (`resources.host_threads`). `options`: verify (check stored checksums, default True), prefetch (DALI queue
    depth, default 2), py_start_method ("fork" on the CPU, "spawn" with a GPU by default), hw_decoder_load (the
    hardware JPEG decoder's share, default 0.9), preallocate ((width, height) for nvJPEG's buffers; default the
    largest stored frame), frames_per_group (tsn frames per segment, IBM's; default 1), repeats (training:
    copies of each video per batch, default 1), same_frames (the copies share their frames, default False),
    twice (evaluation: mmaction's twice_sample, default False), protocol (whose sampling and test crops:
    a pipelines.protocols name, default "vidkit"), geometry ((short side, crop side) of the test views; default the
    augment config's eval_scale and eval_crop)."""
    return VideoLoader(data, split, contract, batch_size, training, clips, crops, device_id, rank, world_size,
                       seed, num_threads, py_workers, augment, dtype, path, **options)
