"""The recipe augmentations (scale jitter, random grayscale, random erasing) on the GPU ("mixed") graph against the
CPU graph: the source draws every clip's parameters from its own generator, so for one seed both graphs crop the
same boxes, gray the same clips and erase the same boxes; the pixels differ only by the decoders (nvJPEG / NVDEC
against the CPU ones) and by where the crop happens (the CPU frame path crops while decoding, the GPU one in the
resize), the tolerance of test_pipelines' decoding comparison. gpu-marked: bench.gpu_check's `tests` step runs them.
"""
import numpy as np
import pytest
import torch

from pipelines import AugmentConfig, build_loader

from helpers import NCTHW, run_epoch

# crop 32 of a short side drawn in [40, 80]: boxes of 102..205 stored pixels; erase boxes on whole pixels of 32
RECIPE = dict(train_crop="random", scale_jitter=(40, 80), grayscale=0.5, erase=0.5, erase_mode="const", flip=True)
SEED = 5
STORES = ["frames", "video"]


def _epoch(data, device_id, dtype=torch.float32, **augment) -> dict:
    loader = build_loader(data, "train", NCTHW, 4, True, device_id=device_id, py_workers=1, seed=SEED, dtype=dtype,
                          augment=AugmentConfig(**{**RECIPE, **augment}))
    first = next(iter(loader))["clips"]
    assert first.is_cuda == (device_id is not None) and first.dtype == dtype
    return run_epoch(loader, 0)


def _gray(clips: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per clip: whether its kept pixels are gray (R = G = B in 0..255 units, to the decoders' rounding)."""
    mean, std = (np.array(v).reshape(1, 3, 1, 1, 1) * 255 for v in (NCTHW.mean, NCTHW.std))
    rgb = clips * std + mean
    spread = (np.abs(rgb[:, 0] - rgb[:, 1]) + np.abs(rgb[:, 1] - rgb[:, 2])) * keep[:, 0]
    return spread.sum(axis=(1, 2, 3)) / keep[:, 0].sum(axis=(1, 2, 3)) < 2


def _check_same_augmentation(gpu: dict, cpu: dict, gpu_zero: np.ndarray) -> np.ndarray:
    """The two epochs saw the same clips, erased (zeros in `cpu`) and grayed alike; returns the erased mask."""
    assert gpu["index"].tolist() == cpu["index"].tolist() and gpu["labels"].tolist() == cpu["labels"].tolist()
    erased = cpu["clips"] == 0  # const erasing writes 0 in normalised units, which no normalised pixel is
    assert (erased == erased[:, :1]).all()  # the same box in every channel ...
    assert (erased == erased[:, :, :1]).all()  # ... and every frame of a clip
    np.testing.assert_array_equal(gpu_zero, erased)
    some = erased.any(axis=(1, 2, 3, 4))
    assert 0 < some.sum() < len(some)  # SEED erases some clips and not others
    gray = _gray(cpu["clips"], ~erased)
    np.testing.assert_array_equal(_gray(gpu["clips"], ~erased), gray)
    assert 0 < gray.sum() < len(gray)  # and grays some
    return erased


@pytest.mark.gpu
@pytest.mark.parametrize("store", STORES)
def test_recipe_augmentations_on_the_mixed_graph_match_the_cpu_graph(gpu_data, store):
    data = gpu_data[STORES.index(store)]
    gpu, cpu = _epoch(data, 0), _epoch(data, None)
    erased = _check_same_augmentation(gpu, cpu, gpu["clips"] == 0)
    assert np.abs(gpu["clips"] - cpu["clips"])[~erased].mean() < 0.05  # the jittered crops: the same boxes


@pytest.mark.gpu
@pytest.mark.parametrize("store", STORES)
def test_pixel_erasing_on_the_mixed_graph_fills_the_cpu_box_with_noise(gpu_data, store):
    """Half precision out of DALI (what bf16/fp16 training asks for) and normal noise drawn on the GPU."""
    data = gpu_data[STORES.index(store)]
    gpu, cpu = _epoch(data, 0, torch.float16, erase_mode="pixel"), _epoch(data, None)  # the CPU's const box
    erased = cpu["clips"] == 0
    _check_same_augmentation(gpu, cpu, erased)  # the noise has no zeros to find: the box comes from the CPU
    noise = gpu["clips"][erased]
    assert abs(noise.mean()) < 0.2 and 0.8 < noise.std() < 1.2
    assert np.abs(gpu["clips"] - cpu["clips"])[~erased].mean() < 0.05
