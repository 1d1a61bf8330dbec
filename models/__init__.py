"""Model zoo in timm's layers, one way: names and contracts (models/registry.py) <- reading and recognising files
(checkpoints.py, weights.py, each family's recognisers) <- building (factory.py: create_model, from_checkpoint).

Every family registers its models and recognisers when imported (as in timm). The registry reads the families'
sources to know which module defines which name, so `import models` and `list_models()` import neither torch nor
any family; building a model imports its family, and recognising a file imports them all. The names below that
need torch are imported on first use.
"""
import importlib
from pathlib import Path

from .registry import InputContract, is_model, list_models, register_alias, register_model  # noqa: F401

# public name -> the module that defines it (imported on first use: these modules import torch)
_ON_FIRST_USE = {
    "create_model": "factory",
    "from_checkpoint": "factory",
    "CheckpointError": "checkpoints",
    "read_checkpoint": "checkpoints",
    "register_origin": "checkpoints",
}


def __getattr__(name: str):
    """PEP 562: `models.create_model` and the other names above, and `models.<submodule>` without importing it
    first, as when the package imported everything."""
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(f".{_ON_FIRST_USE[name]}", __name__), name)
    if (Path(__file__).parent / f"{name}.py").is_file():
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["InputContract", "is_model", "list_models", "register_alias", "register_model", *_ON_FIRST_USE]
