import os

import pytest
import torch



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


# tests run on the CPU whatever the machine; keep them from fighting over 2 cores
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
