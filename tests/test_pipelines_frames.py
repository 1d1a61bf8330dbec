"""The frame path's one-sample-per-frame graph (one decoder for all B x T frames of a batch), checked against the
clip-per-sample graph it replaced, and the host / decoder settings. CPU mode; the GPU half is marked gpu."""
import dataclasses

import numpy as np
import pytest
import torch

from pipelines import AugmentConfig, build_loader
from pipelines.augment import PARAMS, RAND_AUGMENT_OPS, param_count, train_params
from pipelines.resources import host_threads, image_decoder_args, largest_frame, resolve_threads
from pipelines.sampling import ClipSpec, clip_indices, sample_rng
from prep import open_dataset

from helpers import NCTHW, NTCHW, run_epoch, synthetic_store


@pytest.fixture(scope="module")
def frames_data(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("frames"), "h264", "frames")


# --------------------------------------------------------------------------------------------- the reference graph
# The graph as it was before the frame path went to one sample per frame: one sample per clip, T decoder operators
# of B images each, stacked to FHWC, then the same transforms on the clip. Kept here, verbatim in what it computes,
# so that the new graph is held to the same pixels.


class _ClipPerSample:
    """The old source protocol over the new source: (T JPEG buffers, meta, params) per clip."""

    def __init__(self, source):
        self.source = source

    def __call__(self, info):
        plan = self.source.plan
        if info.idx_in_epoch >= plan.num_batches * plan.batch_size:
            raise StopIteration
        epoch = self.source.first_epoch + info.epoch_idx
        video, view = plan.item(info.idx_in_epoch, epoch)
        return self.source.sample(video, view, epoch)


def _reference_graph(source, opts, frames: int):
    from nvidia.dali import fn, types

    *jpegs, meta, params = fn.external_source(source=_ClipPerSample(source), num_outputs=frames + 2, batch=False)
    if opts.training:  # the CPU path decoded the crop box only
        decoded = [fn.decoders.image_slice(j, rel_start=params[0:2], rel_end=params[2:4], output_type=types.RGB)
                   for j in jpegs]
        clip = fn.resize(fn.stack(*decoded, axis_name="F"), size=(opts.crop_size,) * 2, antialias=True)
        if any(opts.augment.jitter):
            clip = fn.color_twist(clip, brightness=params[5], contrast=params[6], saturation=params[7],
                                  hue=params[8])
        mirror, crop = fn.cast(params[4], dtype=types.INT32), {}
    else:
        # the test protocol's view as the source computes it: resize (w, h), integer corner, mirror (params 0..4)
        clip = fn.stack(*[fn.decoders.image(j, output_type=types.RGB) for j in jpegs], axis_name="F")
        clip = fn.resize(clip, resize_x=params[0], resize_y=params[1], antialias=True)
        side = opts.eval_crop or opts.crop_size
        clip = fn.slice(clip, start=fn.cast(fn.stack(params[2], params[3]), dtype=types.INT32), shape=[side, side],
                        axis_names="WH")
        mirror, crop = fn.cast(params[4], dtype=types.INT32), {}
    clip = fn.crop_mirror_normalize(clip, mean=[255.0 * m for m in opts.mean], std=[255.0 * s for s in opts.std],
                                    mirror=mirror, output_layout="CFHW" if opts.layout == "NCTHW" else "FCHW",
                                    dtype=opts.dali_dtype, **crop)
    return clip, meta


def _reference_epoch(loader, epoch: int) -> np.ndarray:
    from nvidia.dali import pipeline_def

    source = loader.clip_source(first_epoch=epoch)

    @pipeline_def(batch_size=loader.plan.batch_size, num_threads=1, device_id=None, seed=0)
    def graph():
        return _reference_graph(source, loader.graph, loader.spec.num_frames)

    pipe = graph()
    pipe.build()
    clips = [np.array(pipe.run()[0].as_tensor()) for _ in range(len(loader))]
    return np.concatenate(clips)[: loader.num_samples]


@pytest.mark.parametrize("contract, training, views, augment", [
    (NCTHW, True, {}, AugmentConfig(flip=True, jitter=(0.4, 0.4, 0.4, 0.1), jitter_prob=0.7)),
    (NTCHW, True, {}, AugmentConfig(train_crop="resized", flip=True)),
    (NCTHW, False, {"clips": 2, "crops": 3}, AugmentConfig()),
    (NTCHW, False, {"crops": 3}, AugmentConfig(eval_scale=1.5, eval_crop="full")),
])
def test_per_frame_graph_gives_the_clip_graphs_pixels(frames_data, contract, training, views, augment):
    split = "train" if training else "val"
    loader = build_loader(frames_data, split, contract, 4, training, py_workers=1, seed=3, augment=augment, **views)
    # the reference resizes with fn.resize: so must the new graph, to be held to its pixels (the warp that
    # replaced it on the CPU is held to fn.resize within noise in test_pipelines_resize)
    loader.graph = dataclasses.replace(loader.graph, exact_resize=True)
    new = run_epoch(loader, 2)["clips"]
    old = _reference_epoch(loader, 2)
    assert new.shape == old.shape and new.std() > 0.1
    np.testing.assert_array_equal(new, old)


def _decoders(pipe) -> list[str]:
    """The decoder operators of a built pipeline, as their specs print (DALI's internal op list)."""
    specs = [str(op.spec) for op in pipe._ops]
    return [s for s in specs if s.splitlines()[0].startswith("OpSpec for decoders__")]


def test_one_decoder_sees_every_frame_of_the_batch(frames_data):
    loader = build_loader(frames_data, "train", NCTHW, 4, True, py_workers=1)
    loader._ensure_pipeline(0)
    assert loader._pipe.max_batch_size == 4 * NCTHW.num_frames
    assert len(_decoders(loader._pipe)) == 1


def test_ncthw_clips_are_a_channels_last_view(frames_data):
    loader = build_loader(frames_data, "val", NCTHW, 4, False, py_workers=1)
    clips = next(iter(loader))["clips"]
    assert clips.shape == (4, 3, 4, 32, 32)
    assert clips.is_contiguous(memory_format=torch.channels_last_3d)  # what 3D convolutions want, no copy made
    ntchw = next(iter(build_loader(frames_data, "val", NTCHW, 4, False, py_workers=1)))["clips"]
    assert ntchw.shape == (4, 3, 3, 24, 24) and ntchw.is_contiguous()


# --------------------------------------------------------------------------------------------- RandAugment per clip


def _drawn_ops(data, loader, epoch: int, index: int) -> np.ndarray:
    row = data.record(index)
    rng = sample_rng(loader.plan.seed, epoch, index, 0)
    clip_indices(row["num_frames"], ClipSpec.of(NCTHW), True, rng)
    return train_params(rng, *row["size"], loader.augment)[PARAMS:]


@pytest.mark.slow  # DALI's conditionals (AutoGraph) take ~10 s to trace RandAugment
def test_randaugment_applies_the_drawn_operation_to_every_frame(pattern_data):
    """Still videos: every frame of a clip must come out the same; a clip whose drawn operation is the identity
    equals the clip without RandAugment, one whose operation is geometric (translate, shear, rotate) does not."""
    data = open_dataset(pattern_data, "train")
    with_ra = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1, seed=5,
                           augment=AugmentConfig(rand_augment=1, rand_augment_m=20))
    plain = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1, seed=5)
    seen = set()
    for epoch in range(6):
        a, b = run_epoch(with_ra, epoch), run_epoch(plain, epoch)
        assert a["index"].tolist() == b["index"].tolist()
        for clip, ref, index in zip(a["clips"], b["clips"], a["index"]):
            for t in range(1, clip.shape[1]):
                np.testing.assert_array_equal(clip[:, t], clip[:, 0])
            op, sign = _drawn_ops(data, with_ra, epoch, int(index)).astype(int)
            seen.add(op)
            if op == RAND_AUGMENT_OPS - 1:  # identity
                np.testing.assert_array_equal(clip, ref)
            elif op <= 4:
                assert np.abs(clip - ref).mean() > 0.05, (op, sign)
    assert len(seen) > 5  # the choices do vary from clip to clip


def test_randaugment_choices_extend_the_parameters_without_changing_them():
    plain, ra = AugmentConfig(flip=True), AugmentConfig(flip=True, rand_augment=3)
    for seed in range(20):
        a = train_params(np.random.default_rng(seed), 64, 48, plain)
        b = train_params(np.random.default_rng(seed), 64, 48, ra)
        assert len(a) == param_count(plain) == PARAMS and len(b) == param_count(ra) == PARAMS + 6
        np.testing.assert_array_equal(a, b[:PARAMS])
        ops, signs = b[PARAMS:PARAMS + 3], b[PARAMS + 3:]
        assert set(ops) <= set(range(RAND_AUGMENT_OPS)) and set(signs) <= {0, 1}


def test_rand_augment_suite_matches_dali():
    from nvidia.dali.auto_aug.rand_augment import get_rand_augment_suite

    names = [aug.name for aug in get_rand_augment_suite()]
    assert len(names) == RAND_AUGMENT_OPS and names[-1].endswith("identity")
    assert all(any(k in n for k in ("translate", "shear", "rotate")) for n in names[:5])


# ------------------------------------------------------------------------------------ host and decoder settings


def test_host_threads_take_a_share_of_the_cores():
    assert host_threads(cores=16, local_ranks=1) == (16, 4)
    assert host_threads(cores=64, local_ranks=8) == (8, 2)
    assert host_threads(cores=2, local_ranks=1) == (2, 1)
    assert host_threads(cores=4, local_ranks=8) == (1, 1)  # never zero
    assert host_threads(cores=256, local_ranks=1) == (256, 8)  # workers capped


def test_host_threads_follow_affinity_and_local_world(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(24)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert host_threads() == (6, 1)
    assert resolve_threads(None, 0) == (6, 1) and resolve_threads(3, None) == (3, 1) and resolve_threads(5, 7) == (5, 7)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "not a number")
    assert host_threads() == (24, 6)


def test_loader_defaults_to_the_share(frames_data, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    loader = build_loader(frames_data, "train", NCTHW, 2, True)
    assert (loader.num_threads, loader.py_workers) == (4, 1)


def test_decoder_args_only_on_the_gpu_decoder():
    assert image_decoder_args("cpu", 0.9, (340, 256)) == {}
    assert image_decoder_args("mixed", 0.9, (340, 256)) == {
        "hw_decoder_load": 0.9, "preallocate_width_hint": 340, "preallocate_height_hint": 256}
    assert image_decoder_args("mixed", 0.5, (0, 0)) == {"hw_decoder_load": 0.5}
    with pytest.raises(ValueError, match="hw_decoder_load"):
        image_decoder_args("cpu", 1.5)


def test_preallocation_covers_the_largest_stored_frame(frames_data):
    rows = [{"size": [340, 256]}, {"size": [256, 455]}, {"size": [320, 240]}, {}]
    assert largest_frame(rows) == (340, 455) and largest_frame([]) == (0, 0)
    loader = build_loader(frames_data, "train", NCTHW, 2, True, py_workers=1)
    assert loader.graph.preallocate == (64, 48) and loader.graph.hw_decoder_load == 0.9
    with pytest.raises(ValueError, match="hw_decoder_load"):
        build_loader(frames_data, "train", NCTHW, 2, True, hw_decoder_load=-0.1)


@pytest.mark.gpu
def test_gpu_graph_has_one_hardware_decoder_with_its_hints(gpu_data):
    frames, _ = gpu_data
    loader = build_loader(frames, "train", NCTHW, 4, True, device_id=0, py_workers=1, hw_decoder_load=0.8)
    batch = next(iter(loader))
    assert batch["clips"].is_cuda and batch["clips"].shape == (4, 3, 4, 32, 32)
    (spec,) = _decoders(loader._pipe)
    width, height = largest_frame(loader.dataset.rows)
    assert min(width, height) >= 256
    for arg in ("device: mixed", "hw_decoder_load: 0.8", f"preallocate_width_hint: {width}",
                f"preallocate_height_hint: {height}"):
        assert arg in spec, arg


def test_config_keys_of_the_host_and_decoder_settings():
    from train.config import ConfigError, load_config

    cfg = load_config(["--data", "d", "--model", "tsn_tiny"])
    assert (cfg.threads, cfg.py_workers, cfg.hw_decoder_load) == (0, 0, 0.9)
    assert (cfg.preallocate_width_hint, cfg.preallocate_height_hint) == (0, 0)
    cfg = load_config(["--data", "d", "--model", "tsn_tiny", "--hw-decoder-load", "0.75",
                       "--preallocate-width-hint", "640", "--threads", "6"])
    assert (cfg.hw_decoder_load, cfg.preallocate_width_hint, cfg.threads) == (0.75, 640, 6)
    for bad in (["--hw-decoder-load", "1.2"], ["--threads", "-1"], ["--preallocate-height-hint", "-5"]):
        with pytest.raises(ConfigError, match=bad[0][2:].replace("-", "_")):
            load_config(["--data", "d", "--model", "tsn_tiny", *bad])


def test_loader_takes_explicit_preallocation_per_side(frames_data):
    loader = build_loader(frames_data, "train", NCTHW, 2, True, py_workers=1, preallocate=(640, 0))
    assert loader.graph.preallocate == (640, 48)  # an unset side falls back to the largest stored frame


@pytest.mark.gpu
def test_gpu_training_clips_match_the_cpu_path_and_share_their_augmentation(gpu_pattern_data):
    """On nvJPEG: the same crops, flips and colours as the CPU path for the same seeds (which decodes the crop box
    only, hence the tolerance), and with RandAugment still one transform per clip."""
    augment = AugmentConfig(flip=True, jitter=(0.3, 0.3, 0.3, 0.05), jitter_prob=1.0)
    gpu = run_epoch(build_loader(gpu_pattern_data, "train", NCTHW, 2, True, device_id=0, py_workers=1, seed=4,
                                 augment=augment), 1)
    cpu = run_epoch(build_loader(gpu_pattern_data, "train", NCTHW, 2, True, py_workers=1, seed=4, augment=augment), 1)
    assert gpu["index"].tolist() == cpu["index"].tolist()
    assert np.abs(gpu["clips"] - cpu["clips"]).mean() < 0.05
    ra = build_loader(gpu_pattern_data, "train", NCTHW, 2, True, device_id=0, py_workers=1, seed=4,
                      augment=AugmentConfig(rand_augment=2, rand_augment_m=15))
    batch = next(iter(ra))
    assert batch["clips"].is_cuda and batch["clips"].is_contiguous(memory_format=torch.channels_last_3d)
    for clip in run_epoch(ra, 1)["clips"]:
        for t in range(1, clip.shape[1]):
            np.testing.assert_array_equal(clip[:, t], clip[:, 0])
