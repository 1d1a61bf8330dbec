"""bench.data's baselines compute the same training clips as the DALI pipeline (so the comparison is fair), and its
CPU-time accounting counts the worker processes."""
import multiprocessing
import time
from types import SimpleNamespace

import pytest
import torch

from bench.baselines import BASELINES, SEEDS, IBMClips, MMActionClips, missing
from bench.data import (AUGMENT, CONTRACT, BaselineClips, bare_ratios, bound_frames, crop_decode_rate,
                        measure_batches, normalized, references, run_bare_decode, table, tree_cpu_seconds)
from pipelines import build_loader
from prep import open_dataset

from helpers import skip_unless_ci, synthetic_store


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench-data")
    # the pil encoder takes its RGB from the same swscale conversion as PyAV's to_ndarray("rgb24") (prep's default
    # converts exactly, about 1 level per channel above swscale's), so the "pyav" comparison sees only the
    # sampling, crop, flip and JPEG round trip it is there to check
    return str(base / "src-h264"), synthetic_store(base, "h264", "frames", encoder="pil")


@pytest.fixture(scope="module")
def dali_batch(data):
    loader = build_loader(open_dataset(data[1], "train"), "train", CONTRACT, 8, True, augment=AUGMENT, py_workers=1)
    try:
        return next(iter(loader))  # epoch 0: the first 8 videos in the shuffled order
    finally:
        loader.close()


def _needs(name):
    """A baseline whose library is absent skips, naming it (only that baseline); under CI=true it fails: make test
    installs requirements-bench.txt."""
    why = missing(name) or _torchcodec_without_ffmpeg(name)
    if why:
        skip_unless_ci(why)


def _torchcodec_without_ffmpeg(name) -> str | None:
    """torchcodec imports without FFmpeg's shared libraries (no pip package ships them) and fails at the first
    decode: a reason to skip, found before."""
    if "torchcodec" not in name:
        return None
    import torchcodec

    if torchcodec.ffmpeg_major_version is None:
        return ("skipped: torchcodec finds no FFmpeg shared libraries; install the system's FFmpeg (Debian: apt-get "
                "install ffmpeg, which make test does where it runs as root)")
    return None


CLIPS = {  # name -> (dataset factory, mean-absolute tolerance against the DALI clip, in normalized units)
    # PIL and DALI resize alike (antialiased bilinear); IBM's integer crop box is the pipeline's own
    "pil": (lambda ds, src: BaselineClips(ds, src, "pil"), 0.01),
    "ibm": (lambda ds, src: IBMClips(ds), 0.01),
    # PyAV's frames also skip prep's JPEG round trip
    "pyav": (lambda ds, src: BaselineClips(ds, src, "pyav"), 0.05),
}
VIDEO_CLIPS = {  # name -> dataset factory of the baselines that decode the same source videos as "pyav"
    "decord": lambda ds, src: BaselineClips(ds, src, "decord"),
    "torchcodec": lambda ds, src: BaselineClips(ds, src, "torchcodec"),
    "mmaction-decord": lambda ds, src: MMActionClips(ds, src, "decord"),
    "mmaction-pyav": lambda ds, src: MMActionClips(ds, src, "pyav"),
}


def _normalized(clip, label):
    return next(normalized([(clip[None], torch.tensor([label]))], torch.device("cpu")))["clips"][0]


@pytest.mark.parametrize("name", list(CLIPS))
def test_baselines_match_the_dali_training_clips(data, dali_batch, name):
    _needs(name)
    src, out = data
    make, tolerance = CLIPS[name]
    clips = make(open_dataset(out, "train"), src)
    for k in range(3):
        index = int(dali_batch["index"][k])
        clip, label = clips[index]
        assert clip.shape == (3, 8, 224, 224) and label == dali_batch["labels"][k]
        # IBM's loader normalises in its workers (float32 out); the others ship uint8
        assert clip.dtype == (torch.float32 if name == "ibm" else torch.uint8)
        mine = _normalized(clip, label)
        assert (mine - dali_batch["clips"][k]).abs().mean() < tolerance, name
        assert (mine.flip(-1) - dali_batch["clips"][k]).abs().mean() > 0.1  # the test would see a wrong flip


@pytest.mark.parametrize("name", list(VIDEO_CLIPS))
def test_video_baselines_match_the_pyav_clips(data, dali_batch, name):
    """The same source frames as the PyAV baseline, so only the readers' and resizes' differences remain (mmaction2
    resizes twice with OpenCV's bilinear): checked against PyAV rather than through prep's JPEG round trip."""
    _needs(name)
    src, out = data
    ds = open_dataset(out, "train")
    clips, reference = VIDEO_CLIPS[name](ds, src), BaselineClips(ds, src, "pyav")
    for k in range(3):
        index = int(dali_batch["index"][k])
        (clip, label), (expected, _) = clips[index], reference[index]
        assert clip.dtype == torch.uint8 and clip.shape == (3, 8, 224, 224) and label == dali_batch["labels"][k]
        mine, expected = _normalized(clip, label), _normalized(expected, label)
        assert (mine - expected).abs().mean() < 0.015, name
        assert (mine.flip(-1) - expected).abs().mean() > 0.1


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_batches_like_the_pipeline(data, dali_batch, name):
    """Through the DataLoader and the main-process normalisation, as bench.data times them."""
    _needs(name)
    src, out = data
    loader = torch.utils.data.DataLoader(BASELINES[name][3](open_dataset(out, "train"), src), batch_size=2,
                                         num_workers=0)
    batch = next(normalized(loader, torch.device("cpu")))
    assert batch["clips"].shape[1:] == dali_batch["clips"].shape[1:], name
    assert batch["clips"].dtype == dali_batch["clips"].dtype == torch.float32, name
    assert batch["labels"].dtype == dali_batch["labels"].dtype, name


def test_the_seeds_row_is_a_registered_seeds_baseline():
    assert BASELINES[SEEDS][1] == "seeds"


class _Burn(torch.utils.data.Dataset):
    """Each item costs `seconds` of CPU in whichever process makes it."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __len__(self):
        return 64

    def __getitem__(self, i):
        start = time.process_time()
        while time.process_time() - start < self.seconds:
            pass
        return torch.zeros(1)


def test_cpu_time_counts_the_dataloader_workers():
    items, burn, workers = 10, 0.05, 2
    loader = iter(torch.utils.data.DataLoader(_Burn(burn), batch_size=1, num_workers=workers, prefetch_factor=1))
    next(loader)  # workers started
    before = tree_cpu_seconds()
    for _ in range(items):
        next(loader)
    used = tree_cpu_seconds() - before
    del loader
    # at most `workers` items were made before the window, and `workers` more may be in the making after it
    assert (items - workers) * burn * 0.9 <= used <= (items + workers) * burn + 0.3


def test_cpu_time_counts_a_worker_that_exits_in_the_window_once():
    before = tree_cpu_seconds()
    child = multiprocessing.get_context("fork").Process(target=_Burn(0.3).__getitem__, args=(0,))
    child.start()
    child.join()
    used = tree_cpu_seconds() - before
    assert 0.27 <= used <= 0.5  # counted (from RUSAGE_CHILDREN once reaped), and not twice


def test_measure_batches_rates_frames_per_cpu_second_of_the_workers():
    loader = torch.utils.data.DataLoader(_Burn(0.04), batch_size=2, num_workers=2, prefetch_factor=1)
    batches = ({"clips": x} for x in loader)
    rate = measure_batches(batches, warmup=1, count=8, max_seconds=60)
    # 0.08 s of worker CPU per batch of 2 clips of 8 frames: 200 frames per CPU-second, less the main process's
    # (up to 2 batches made before the window: 16 x 8 / (6 x 0.08) = 267)
    assert 100 < rate.frames_per_cpu_s <= 270


def test_crop_decode_bound_decodes_the_training_frames(data):
    _, out = data
    jpegs, boxes = bound_frames(open_dataset(out, "train"), clips=4)
    assert len(jpegs) == len(boxes) == 4 * CONTRACT.num_frames
    assert ((boxes[:, :2] < boxes[:, 2:]) & (boxes >= 0).all(1, keepdims=True)).all()
    assert crop_decode_rate(jpegs, boxes, batch=8, seconds=0.05).frames_per_cpu_s > 0


def test_bare_decode_runs_the_pipelines_source_through_one_decoder(data):
    """The GPU baseline's code path, on the CPU decoder: the same per-frame source, B x T frames per batch."""
    _, out = data
    args = SimpleNamespace(batch_size=2, workers=1, warmup=1, batches=2, max_seconds=60, min_batches=1)
    rate = run_bare_decode(open_dataset(out, "train"), args, device="cpu")
    assert rate.clips_per_s > 0 and rate.frames_per_cpu_s > 0


def _row(dataset, method, role, rate, cpu_rate):
    return {"dataset": dataset, "method": method, "role": role, "rate": rate, "cpu_rate": cpu_rate, "note": ""}


def test_ratios_divide_by_the_seeds_the_fastest_baseline_and_the_bound():
    seeds = BASELINES[SEEDS][0]
    rows = [_row("k", "ours", "ours", 60.0, 1200.0), _row("k", seeds, "seeds", 40.0, 600.0),
            _row("k", "lean", "baseline", 50.0, 400.0), _row("k", "bound", "bound", 300.0, 2400.0),
            _row("k", "absent", "skipped", None, None)]
    ref = references(rows, "k")
    assert ref["seeds"]["method"] == seeds and ref["bound"]["method"] == "bound"
    assert ref["fastest_wall"]["method"] == "lean" and ref["fastest_cpu"]["method"] == seeds
    text, speedup = table(rows, 8)
    ours = next(line for line in text.splitlines() if line.startswith("k         ours"))
    # per CPU-second 2x the seeds (also the fastest by CPU), wall 1.5x the seeds and 1.2x the fastest, 50% of bound
    assert ours.split()[4:9] == ["2.00x", "1.50x", "2.00x", "1.20x", "50%"]
    assert speedup == pytest.approx(1.2)


def test_bare_ratio_is_the_gpu_row_over_the_bare_row():
    rows = [{"dataset": "k", "role": "gpu", "rate": 80.0}, {"dataset": "k", "role": "bare", "rate": 100.0},
            {"dataset": "k", "role": "baseline", "rate": 10.0}, {"dataset": "s", "role": "ours", "rate": 5.0},
            {"dataset": "s", "role": "baseline", "rate": 4.0}]
    assert bare_ratios(rows) == {"k": 0.8}


def test_frames_dalis_video_decoder_decodes_per_clip():
    from bench.store import decoded_per_clip

    indices = [3, 10, 20, 20]
    assert decoded_per_clip({"store": "frames"}, indices) == 4
    assert decoded_per_clip({"store": "video", "codec": "h264"}, indices) == 21  # no seeking: 0 .. last
    assert decoded_per_clip({"store": "video", "codec": "h264", "gop": 8}, indices) == 4 + 3 + 5  # cut per keyframe
