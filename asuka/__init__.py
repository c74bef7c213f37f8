"""asuka: faithful image inpainting for the Hugging Face ecosystem.

Public entry points are imported lazily, so `import asuka.masks` does not pay for diffusers.
"""

import importlib
from typing import Any


__version__ = "0.1.0"

_LAZY = {
    "AsukaPipeline": "asuka.pipelines",
    "AsukaFluxPipeline": "asuka.pipelines",
    "StrDiffusionPipeline": "asuka.pipelines",
    "IRSDEScheduler": "asuka.schedulers",
    "StrDiffusionUNet": "asuka.models",
    "StrDiffusionDiscriminator": "asuka.models",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'asuka' has no attribute {name!r}")
