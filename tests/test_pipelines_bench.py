"""bench.data's baselines compute the same training clips as the DALI pipeline (so the comparison is fair)."""
import pytest
import torch

from bench.data import AUGMENT, CONTRACT, BaselineClips, normalized
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
