"""bench.data's baselines compute the same training clips as the DALI pipeline (so the comparison is fair)."""
import pytest
import torch

from bench.data import AUGMENT, CONTRACT, BaselineClips, bare_ratios, normalized, run_bare_decode
from pipelines import build_loader
from prep import open_dataset

from test_pipelines import _synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench-data")
    return str(base / "src-h264"), _synthetic(base, "h264", "frames")


def test_baselines_match_the_dali_training_clips(data):
    src, out = data
    ds = open_dataset(out, "train")
    loader = build_loader(ds, "train", CONTRACT, 8, True, augment=AUGMENT, py_workers=1)
    batch = next(iter(loader))  # epoch 0: the first 8 videos in the shuffled order
    # PIL and DALI resize alike (antialiased bilinear); PyAV's frames also skip prep's JPEG round trip
    for reader, tolerance in (("pil", 0.01), ("pyav", 0.05)):
        clips = BaselineClips(ds, src, reader)
        for k in range(3):
            index = int(batch["index"][k])
            clip, label = clips[index]
            assert clip.dtype == torch.uint8 and clip.shape == (3, 8, 224, 224) and label == batch["labels"][k]
            mine = next(normalized([(clip[None], torch.tensor([label]))], torch.device("cpu")))["clips"][0]
            assert (mine - batch["clips"][k]).abs().mean() < tolerance, reader
            assert (mine.flip(-1) - batch["clips"][k]).abs().mean() > 0.1  # the test would see a wrong flip


def test_bare_decode_runs_the_pipelines_source_through_one_decoder(data):
    """The GPU baseline's code path, on the CPU decoder: the same per-frame source, B x T frames per batch."""
    from types import SimpleNamespace

    _, out = data
    args = SimpleNamespace(batch_size=2, workers=1, warmup=1, batches=2)
    assert run_bare_decode(open_dataset(out, "train"), args, device="cpu") > 0


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
