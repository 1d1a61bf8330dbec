"""Model zoo: every family registers itself on import (as in timm)."""
from .registry import (  # noqa: F401
    InputContract,
    create_model,
    is_model,
    list_models,
    register_alias,
    register_model,
)

from .checkpoints import CheckpointError, from_checkpoint, read_checkpoint, register_origin  # noqa: F401,E402

# registration by import
from . import temporal2d, sifar, resnet3d, slowfast, x3d, s3d, sts, aim, ila  # noqa: F401,E402
