"""pipelines: DALI loaders on tiny prepped datasets, CPU mode (device_id=None)."""
import multiprocessing
import pickle
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.registry import InputContract
from pipelines import AugmentConfig, build_loader
from pipelines.sampling import EpochPlan
from prep import open_dataset

from helpers import GPU_SIZE, NCTHW, NTCHW, damage_video, prep_store, run_epoch, synthetic_store


def _check_batch(batch, shape, dtype):
    assert batch["clips"].shape == shape and batch["clips"].dtype == dtype
    assert batch["clips"].device == torch.device("cpu")
    for key in ("labels", "index", "view"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == shape[:1]


def test_frames_training_ncthw_float32(frames_data):
    loader = build_loader(frames_data, "train", NCTHW, 4, True, py_workers=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and loader.num_videos == 8 and loader.num_views == 1
    _check_batch(batches[0], (4, 3, 4, 32, 32), torch.float32)
    assert all(b["view"].eq(0).all() for b in batches)
    clips = batches[0]["clips"]
    assert clips.abs().max() < 3 and clips.std() > 0.1  # normalized pixels, not raw bytes or zeros
    assert loader.stats["damaged"] == 0 and loader.stats["replaced"] == 0


def test_frames_ntchw_bfloat16_with_jitter(frames_data):
    augment = AugmentConfig(train_crop="resized", jitter=(0.4, 0.4, 0.4, 0.1), flip=True)
    loader = build_loader(frames_data, "train", NTCHW, 4, True, py_workers=1, augment=augment, dtype=torch.bfloat16)
    batch = next(iter(loader))
    _check_batch(batch, (4, 3, 3, 24, 24), torch.bfloat16)
    run_epoch(loader, 1)


@pytest.mark.slow  # DALI's conditionals (AutoGraph) take ~10 s to trace RandAugment the first time
def test_randaugment_keeps_one_transform_per_clip(pattern_data):
    augment = AugmentConfig(rand_augment=3, rand_augment_m=20)
    loader = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1, augment=augment)
    clips = np.concatenate([run_epoch(loader, e)["clips"] for e in range(2)])
    assert clips.shape == (8, 3, 4, 32, 32)
    for clip in clips:
        for t in range(1, clip.shape[1]):
            np.testing.assert_array_equal(clip[:, t], clip[:, 0])


def test_frames_eval_ntchw_float16(frames_data):
    loader = build_loader(frames_data, "val", NTCHW, 5, False, clips=2, crops=3, py_workers=1, dtype=torch.float16)
    out = run_epoch(loader)
    assert out["clips"].shape == (24, 3, 3, 24, 24) and loader.num_views == 6


def test_video_path_vp9_training_and_eval(vp9_data):
    train = build_loader(vp9_data, "train", NTCHW, 4, True, py_workers=1, dtype=torch.float16)
    assert train.path == "video"
    batch = next(iter(train))
    _check_batch(batch, (4, 3, 3, 24, 24), torch.float16)
    run_epoch(train, 1)
    val = build_loader(vp9_data, "val", NCTHW, 3, False, crops=3, py_workers=1)
    out = run_epoch(val)
    assert out["clips"].shape == (12, 3, 4, 32, 32)
    assert sorted(zip(out["index"].tolist(), out["view"].tolist())) == [(v, w) for v in range(4) for w in range(3)]


def test_video_path_decodes_the_frames_the_frames_path_reads(vp9_data, base):
    """Same source videos stored both ways: the evaluation clips agree up to JPEG loss, and far better than
    with the frames of the neighbouring clip (so a frame-index mix-up would show)."""
    src = str(base / "src-vp9")
    as_frames = prep_store(src, [f"val={src}/val.txt"], str(base / "vp9-frames"), "frames")
    contract = InputContract("NCTHW", num_frames=4, crop_size=32, sampling="dense", frame_stride=3)
    outs = [run_epoch(build_loader(d, "val", contract, 4, False, clips=2, py_workers=1))["clips"]
            for d in (vp9_data, as_frames)]
    same = np.abs(outs[0] - outs[1]).mean()
    shifted = np.abs(outs[0][:, :, 1:] - outs[1][:, :, :-1]).mean()
    assert same < 0.05 and same < shifted / 3, (same, shifted)


def test_h264_video_store_is_refused_on_cpu(base, frames_data):
    src = str(base / "src-h264")
    out = prep_store(src, [f"train={src}/train.txt"], str(base / "h264-video"), "video")
    with pytest.raises(ValueError, match="h264.*GPU"):
        build_loader(out, "train", NCTHW, 2, True)


def test_path_and_argument_errors(frames_data):
    with pytest.raises(ValueError, match="--store video"):
        build_loader(frames_data, "train", NCTHW, 2, True, path="video")
    with pytest.raises(ValueError, match="one clip"):
        build_loader(frames_data, "train", NCTHW, 2, True, crops=3)
    with pytest.raises(ValueError, match="crops"):
        build_loader(frames_data, "val", NCTHW, 2, False, crops=4)
    with pytest.raises(ValueError, match="batch"):
        build_loader(frames_data, "train", NCTHW, 9, True)
    with pytest.raises(ValueError, match="dtype"):
        build_loader(frames_data, "train", NCTHW, 2, True, dtype=torch.int8)
    with pytest.raises(ValueError, match="not 'train'"):
        build_loader(open_dataset(frames_data, "val"), "train", NCTHW, 2, True)


def test_one_crop_for_every_frame_of_a_clip(pattern_data):
    augment = AugmentConfig(jitter=(0.4, 0.4, 0.4, 0.05), jitter_prob=1.0)
    loader = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1, augment=augment)
    clips = np.concatenate([run_epoch(loader, e)["clips"] for e in range(3)])  # (12, C, T, H, W)
    for clip in clips:
        for t in range(1, clip.shape[1]):
            np.testing.assert_array_equal(clip[:, t], clip[:, 0])
    # the test can fail: crops and colours do differ between clips
    assert len({clip[:, 0].round(3).tobytes() for clip in clips}) > 6


def _red_rises_left_to_right(clip: np.ndarray) -> bool:
    red = clip[0, 0]  # channel 0 of frame 0 of a CFHW clip: (H, W)
    half = red.shape[1] // 2
    return red[:, :half].mean() < red[:, half:].mean()


def test_flip_off_never_mirrors_and_flip_on_does(pattern_data):
    plain = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1)
    clips = np.concatenate([run_epoch(plain, e)["clips"] for e in range(4)])
    assert all(_red_rises_left_to_right(c) for c in clips)
    flipping = build_loader(pattern_data, "train", NCTHW, 2, True, py_workers=1, augment=AugmentConfig(flip=True))
    clips = np.concatenate([run_epoch(flipping, e)["clips"] for e in range(4)])
    rising = [_red_rises_left_to_right(c) for c in clips]
    assert any(rising) and not all(rising)


def test_ten_crops_are_five_and_their_mirror_images(pattern_data):
    loader = build_loader(pattern_data, "train", NCTHW, 4, False, crops=10, py_workers=1)
    out = run_epoch(loader)
    assert len(out["view"]) == 40
    for video in range(4):
        views = {int(v): c for v, c, i in zip(out["view"], out["clips"], out["index"]) if i == video}
        assert sorted(views) == list(range(10))
        for k in range(5):
            assert _red_rises_left_to_right(views[k]) and not _red_rises_left_to_right(views[k + 5])
            np.testing.assert_array_equal(views[k + 5], views[k][..., ::-1])
        assert not np.array_equal(views[0], views[1])  # different corners


def test_two_ranks_eval_every_view_once_and_training_disjoint(frames_data):
    pairs = []
    for rank in range(2):
        out = run_epoch(build_loader(frames_data, "val", NCTHW, 2, False, clips=1, crops=3, rank=rank,
                                     world_size=2, py_workers=1))
        pairs += list(zip(out["index"].tolist(), out["view"].tolist()))
    assert sorted(pairs) == [(v, w) for v in range(4) for w in range(3)]
    seen = []
    for rank in range(2):
        loader = build_loader(frames_data, "train", NCTHW, 2, True, rank=rank, world_size=2, seed=3, py_workers=1)
        out = run_epoch(loader, 5)
        assert out["index"].tolist() == [v for v, _ in EpochPlan(8, 2, True, 1, rank, 2, 3).items(5)]
        seen.append(set(out["index"].tolist()))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(8))


def test_eval_is_deterministic_and_complete_with_partial_last_batch(frames_data):
    loader = build_loader(frames_data, "val", NCTHW, 5, False, clips=2, crops=3, py_workers=1)
    assert len(loader) == 5  # 4 videos x 6 views = 24 = 4 x 5 + 4
    first, second = run_epoch(loader, 0), run_epoch(loader, 1)
    assert sorted(zip(first["index"].tolist(), first["view"].tolist())) == [(v, w) for v in range(4) for w in range(6)]
    again = run_epoch(build_loader(frames_data, "val", NCTHW, 5, False, clips=2, crops=3, py_workers=2))
    for other in (second, again):
        for key in first:
            np.testing.assert_array_equal(first[key], other[key])


def test_training_reshuffles_per_epoch_and_replays_an_epoch(frames_data):
    loader = build_loader(frames_data, "train", NCTHW, 2, True, py_workers=1, seed=7)
    epochs = [run_epoch(loader)["index"].tolist() for _ in range(2)]  # without set_epoch: 0 then 1
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1]) == list(range(8))
    assert loader.epoch == 2
    next(iter(loader))  # abandon epoch 2 after one batch: the next pass restarts it whole
    assert run_epoch(loader)["index"].tolist() == [v for v, _ in EpochPlan(8, 2, True, seed=7).items(2)]
    replay = run_epoch(loader, 0)  # a rebuild for an earlier epoch
    assert replay["index"].tolist() == epochs[0]
    fresh = build_loader(frames_data, "train", NCTHW, 2, True, py_workers=1, seed=7)
    np.testing.assert_array_equal(run_epoch(fresh, 1)["index"], epochs[1])


def test_batches_kept_across_epochs_stay_intact(frames_data):
    """Batches reach torch without a copy (DLPack): holding them must not pin or expose reused buffers."""
    loader = build_loader(frames_data, "train", NCTHW, 4, True, py_workers=1)
    kept = list(loader)
    copies = [b["clips"].clone() for b in kept]
    later = list(loader) + list(loader)
    for batch, copy in zip(kept, copies):
        assert torch.equal(batch["clips"], copy)
    assert not any(torch.equal(kept[0]["clips"], b["clips"]) for b in later)


def test_damaged_entry_is_counted_and_replaced_with_its_own_label(frames_data, tmp_path):
    damaged = str(tmp_path / "damaged")
    shutil.copytree(frames_data, damaged)
    damage_video(damaged, 3)
    loader = build_loader(damaged, "train", NCTHW, 4, True, py_workers=2)
    out = run_epoch(loader, 0)  # run_epoch checks every label against its video's record
    assert 3 not in out["index"].tolist()
    assert sorted(out["index"].tolist()) == sorted([0, 1, 2, 4, 4, 5, 6, 7])  # the next video stands in
    assert loader.stats["damaged"] == 1 and loader.stats["replaced"] == 1 and loader.stats["damaged_videos"] == [3]
    run_epoch(loader, 1)
    assert loader.stats["replaced"] == 2


def test_missing_entry_is_replaced(frames_data, tmp_path):
    """A manifest row whose key is not in the shard (e.g. a shard from another run) is skipped the same way."""
    ds = open_dataset(frames_data, "val")
    ds.rows = [dict(r) for r in ds.rows]
    ds.rows[1]["key"] = "no-such-key"
    out = run_epoch(build_loader(ds, "val", NCTHW, 2, False, py_workers=1))
    # in evaluation the stand-in keeps the missing video's index and label, marked view -1 (not scored)
    assert out["index"].tolist() == [0, 1, 2, 3] and out["view"].tolist() == [0, -1, 0, 0]
    assert out["labels"].tolist() == [ds.record(i)["label"] for i in (0, 1, 2, 3)]
    train = run_epoch(build_loader(ds, "val", NCTHW, 2, True, py_workers=1))
    assert 1 not in train["index"].tolist()  # training serves the next readable video under its own label


def _call_pickled(blob: bytes, info):
    return pickle.loads(blob)(info)


def test_source_is_picklable_and_stateless(frames_data):
    """One sample per frame: sample k * T + f is frame f of clip k, with the clip's meta and parameters."""
    loader = build_loader(frames_data, "train", NCTHW, 2, True)
    source = loader.clip_source(first_epoch=4)
    frames = NCTHW.num_frames
    assert source.samples_per_clip == frames and source.num_outputs == 3
    info = SimpleNamespace(idx_in_epoch=3 * frames + 2, epoch_idx=1, idx_in_batch=2, iteration=1)
    # the pickled copy runs in another process, as in spawned DALI workers (and one LMDB env per process)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        b = pool.apply(_call_pickled, (pickle.dumps(source), info))
    a = source(info)
    assert len(a) == 3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    video = EpochPlan(8, 2, True, seed=0).items(5)[3][0]
    assert a[1].tolist() == [open_dataset(frames_data, "train").record(video)["label"], video, 0]
    *jpegs, meta, params = source.sample(video, 0, 5)  # the whole clip, as one read
    np.testing.assert_array_equal(a[0], jpegs[2])
    np.testing.assert_array_equal(a[2], params)
    others = [source(SimpleNamespace(idx_in_epoch=3 * frames + f, epoch_idx=1, idx_in_batch=f, iteration=1))
              for f in range(frames)]
    assert all(np.array_equal(o[2], params) and np.array_equal(o[1], meta) for o in others)
    assert [o[0].tobytes() for o in others] == [j.tobytes() for j in jpegs]
    with pytest.raises(StopIteration):
        source(SimpleNamespace(idx_in_epoch=8 * frames, epoch_idx=0, idx_in_batch=0, iteration=4))


@pytest.mark.gpu
def test_mixed_decoding_on_gpu_matches_cpu(gpu_data):
    for data in gpu_data:
        gpu = build_loader(data, "val", NCTHW, 3, False, crops=3, device_id=0, py_workers=1)
        batch = next(iter(gpu))
        assert all(t.device == torch.device("cuda", 0) for t in batch.values())
        on_gpu = run_epoch(gpu)
        on_cpu = run_epoch(build_loader(data, "val", NCTHW, 3, False, crops=3, py_workers=1))
        np.testing.assert_array_equal(on_gpu["index"], on_cpu["index"])
        assert np.abs(on_gpu["clips"] - on_cpu["clips"]).mean() < 0.05  # nvJPEG/NVDEC vs CPU decoders


@pytest.mark.gpu
def test_h264_video_store_decodes_on_gpu(base):
    out = synthetic_store(base, "h264", "video", GPU_SIZE)
    assert min(open_dataset(out, "train").record(0)["size"]) == GPU_SIZE[0]
    loader = build_loader(out, "train", NTCHW, 4, True, device_id=0, py_workers=1, dtype=torch.bfloat16)
    batch = next(iter(loader))
    assert batch["clips"].shape == (4, 3, 3, 24, 24) and batch["clips"].dtype == torch.bfloat16
    assert batch["clips"].is_cuda and batch["clips"].float().std() > 0.1


# ------------------------------------------------------------------ evaluation geometry (eval_scale, eval_crop)
# pattern_data's frames are 64x48 with red = x * 255 / 63 and green = y * 255 / 47: a crop's pixels tell which
# source columns and rows it shows.

def _source_span(clip: np.ndarray, contract: InputContract) -> tuple[tuple[float, float], tuple[float, float]]:
    """((x of the first column, x of the last), (y of the first row, y of the last)) in source pixels, from a
    CFHW clip's first frame."""
    mean, std = (np.array(v).reshape(3, 1, 1) * 255 for v in (contract.mean, contract.std))
    rgb = clip[:, 0] * std + mean
    x, y = rgb[0] * 63 / 255, rgb[1] * 47 / 255
    return (x[:, 0].mean(), x[:, -1].mean()), (y[0].mean(), y[-1].mean())


def _eval_views(data, augment, crops=1) -> dict:
    out = run_epoch(build_loader(data, "train", NCTHW, 4, False, crops=crops, py_workers=1, augment=augment))
    return {int(v): c for v, c, i in zip(out["view"], out["clips"], out["index"]) if i == 0}


@pytest.mark.parametrize("scale, xs, ys", [
    (1.5, (16, 47), (8, 39)),  # short side 48: no resize, the 32 px centre crop shows 32 source pixels
    (1.0, (8.5, 55), (0.25, 46.75)),  # short side 32: the crop spans the whole height, 1.5 source px per pixel
])
def test_eval_scale_sets_the_short_side_before_the_centre_crop(pattern_data, scale, xs, ys):
    clip = _eval_views(pattern_data, AugmentConfig(eval_scale=scale))[0]
    assert clip.shape == (3, 4, 32, 32)
    (x0, x1), (y0, y1) = _source_span(clip, NCTHW)
    np.testing.assert_allclose([x0, x1, y0, y1], [*xs, *ys], atol=1.5)


def test_full_resolution_crops_are_the_whole_short_side(pattern_data):
    """eval_crop "full": three 48x48 crops of the unresized 64x48 frame, at the left, the centre and the right."""
    views = _eval_views(pattern_data, AugmentConfig(eval_scale=1.5, eval_crop="full"), crops=3)
    assert sorted(views) == [0, 1, 2]
    for view, left in zip(range(3), (0, 8, 16)):
        assert views[view].shape == (3, 4, 48, 48)
        (x0, x1), (y0, y1) = _source_span(views[view], NCTHW)
        np.testing.assert_allclose([x0, x1, y0, y1], [left, left + 47, 0, 47], atol=1.5)


def test_full_resolution_at_scale_one_is_the_contract_crop(pattern_data):
    full = _eval_views(pattern_data, AugmentConfig(eval_scale=1.0, eval_crop="full"))[0]
    plain = _eval_views(pattern_data, AugmentConfig(eval_scale=1.0))[0]
    np.testing.assert_array_equal(full, plain)


def test_eval_crop_is_checked():
    with pytest.raises(ValueError, match="eval_crop"):
        AugmentConfig(eval_crop="whole")
    assert AugmentConfig(eval_scale=256 / 224, eval_crop="full").eval_crop_side(224) == 256
    assert AugmentConfig(eval_scale=256 / 224).eval_crop_side(224) == 224


def test_image_evaluation_takes_the_full_short_side(tmp_path):
    """The image pipeline (pre-training checkpoints) follows the same options: a 64x48 image, short side kept,
    one centred 48x48 crop."""
    from PIL import Image

    from pipelines.images import ImageLoader, open_image_folder

    ys, xs = np.mgrid[0:48, 0:64]
    image = np.stack([xs * 255 // 63, ys * 255 // 47, np.full_like(xs, 128)], -1).astype(np.uint8)
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "val" / "a" / "0.png")
    contract = InputContract("NCTHW", num_frames=1, crop_size=32)
    folder = open_image_folder(tmp_path, "val", progress=False)
    augment = AugmentConfig(eval_scale=1.5, eval_crop="full", jitter=(0.4, 0.4, 0.4, 0.1))  # jitter: training only
    clip = next(iter(ImageLoader(folder, contract, 1, False, augment=augment)))["clips"][0].numpy()
    assert clip.shape == (3, 1, 48, 48)
    (x0, x1), (y0, y1) = _source_span(clip, contract)
    np.testing.assert_allclose([x0, x1, y0, y1], [8, 55, 0, 47], atol=1.0)
