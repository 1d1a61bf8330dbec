"""DALI pipelines from prepped shards to training and evaluation batches (CPU mode with device_id=None).

    from pipelines import build_loader, AugmentConfig, sampling
    loader = build_loader(data, split, contract, batch_size, training, clips=1, crops=1, device_id=None,
                          rank=0, world_size=1, seed=0, num_threads=None, py_workers=None, augment=None,
                          dtype=torch.float32, path="auto")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:  # "clips" (contract layout, dtype), "labels", "index", "view": int64
            ...

num_threads / py_workers None: this rank's share of the usable cores (resources.host_threads). NCTHW clips come
as a channels_last_3d view of DALI's per-frame output (call .contiguous() for the standard layout).

Training: reshuffled per (seed, epoch), disjoint slices per rank padded by wrap-around, partial batch
dropped. Evaluation: every (video, view) pair exactly once across ranks, views = clips x crops, the last
batch may be smaller. `loader.stats` counts damaged stored videos met and the samples replaced.

`import pipelines` itself loads nothing: a light module (pipelines.protocols, pipelines.sampling) is imported
without torch or DALI, and each name below is imported from its module on first use. The toolkit's own modules
import from the defining module (pipelines.loader, pipelines.augment, pipelines.images).
"""
import importlib

_DEFINED_IN = {"build_loader": "loader", "VideoLoader": "loader", "AugmentConfig": "augment",
               "ImageLoader": "images", "open_image_folder": "images"}

__all__ = ["build_loader", "AugmentConfig", "VideoLoader", "ImageLoader", "open_image_folder", "sampling"]


def __getattr__(name: str):
    if name in _DEFINED_IN:
        return getattr(importlib.import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)
    if name == "sampling":
        return importlib.import_module(f"{__name__}.sampling")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
