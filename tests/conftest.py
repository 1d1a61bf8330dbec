"""Fixtures shared by several test modules (their plain helpers are in helpers.py)."""
import os

import pytest
import torch

from helpers import CPU, GPU_SIZE, still_pattern, synthetic_store, tsn_checkpoint
from prep.synthetic import CLASS_NAMES
from s3fixture import s3, s3_env  # noqa: F401  (fixtures: the session's S3 server and a client pointing at it)
from train.engine import Trainer


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A tiny prepped synthetic video set (40 videos of 8 frames at 32 px), shared read-only by the train tests."""
    from prep.__main__ import main as prep_main

    out = tmp_path_factory.mktemp("synthetic")
    assert prep_main(["synthetic", "--out", str(out), "--videos", "40", "--frames", "8", "--size", "32",
                      "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.fixture
def compute_dtypes():
    """dtypes(model, *inputs): the dtypes the model's convolutions and linear layers compute in (forward hooks)."""
    def dtypes(model: torch.nn.Module, *inputs) -> set:
        seen = set()
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))]
        hooks = [m.register_forward_hook(lambda mod, args, out: seen.add(out.dtype)) for m in layers]
        try:
            model(*inputs)
        finally:
            for h in hooks:
                h.remove()
        return seen

    return dtypes


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """The folder of the pipelines' synthetic stores: each is made once per session, whichever module asks first."""
    return tmp_path_factory.mktemp("pipelines")


@pytest.fixture(scope="session")
def frames_data(base):
    """12 moving-object videos (8 train, 4 val, 4 classes), 20 frames of 64x48, stored as JPEG frames."""
    return synthetic_store(base, "h264", "frames")


@pytest.fixture(scope="session")
def vp9_data(base):
    return synthetic_store(base, "vp9", "video")


@pytest.fixture(scope="session")
def gpu_data(base):
    """(JPEG-frame store, VP9 video store) of the same 12 videos at 320x256, for the gpu-marked tests."""
    return synthetic_store(base, "vp9", "frames", GPU_SIZE), synthetic_store(base, "vp9", "video", GPU_SIZE)


@pytest.fixture(scope="session")
def pattern_data(base):
    """The still pattern at 64x48."""
    return still_pattern(base)


@pytest.fixture(scope="session")
def gpu_pattern_data(base):
    """The still pattern at 320x256, for the gpu-marked tests."""
    return still_pattern(base, GPU_SIZE)


@pytest.fixture(scope="module")
def tsn_tiny_ckpt(tmp_path_factory):
    """A toolkit checkpoint of tsn_tiny (4 frames, 32 px crops) for the first 4 synthetic classes, that records no
    dataset. One per module: commands write their reports beside it."""
    return tsn_checkpoint(tmp_path_factory.mktemp("run") / "best.pt", "", CLASS_NAMES[:4])


@pytest.fixture
def make_trainer():
    """Trainers built in-process; their loaders and TensorBoard writers are closed after the test."""
    made = []

    def make(cfg) -> Trainer:
        made.append(Trainer(cfg, CPU))
        return made[-1]

    yield make
    for t in made:
        for loader in (t.train_loader, t.val_loader):
            if loader is not None:
                loader.close()
        t.writer.close()


# tests run on the CPU whatever the machine; keep them from fighting over 2 cores
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _ordinary_scheduling(request):
    """A test must leave the process under the ordinary scheduling policy: a real-time one (SVT-AV1's encoder sets
    SCHED_FIFO 99 when run as root: helpers.ordinary_scheduling) is inherited by every child the suite starts later,
    and two training subprocesses at real-time priority starved the machine until their timeout."""
    yield
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        pytest.fail(f"{request.node.nodeid} left the test process with a real-time scheduling policy (put back to "
                    "SCHED_OTHER): run its encoders inside helpers.ordinary_scheduling()")
