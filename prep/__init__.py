"""Offline prep: decode each video once into a few large shards (`python -m prep --help`)."""
from .dataset import DamagedEntry, DamagedShard, PreppedDataset, open_dataset  # noqa: F401
