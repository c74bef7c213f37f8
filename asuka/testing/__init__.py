"""Tiny random pipelines for tests, the app's `--tiny` mode and benchmark smoke runs.

`make_tiny_pipeline(kind)` dispatches to `asuka.testing.<module>.make_tiny_<name>_pipeline`, so each pipeline
family keeps its tiny components next to the others without a central list of configs.
"""

import importlib
from typing import Any


_KINDS = {
    "sd": ("asuka.testing.sd", "make_tiny_sd_pipeline"),
    "sd-backbone": ("asuka.testing.sd", "make_tiny_sd_backbone_pipeline"),
    "flux": ("asuka.testing.flux", "make_tiny_flux_pipeline"),
    "flux-backbone": ("asuka.testing.flux", "make_tiny_flux_backbone_pipeline"),
    "strdiffusion": ("asuka.testing.strdiffusion", "make_tiny_strdiffusion_pipeline"),
}


def make_tiny_pipeline(kind: str = "sd", seed: int = 0, **kwargs: Any):
    """Build a complete pipeline of `kind` with tiny random components (well under a second on CPU).

    Kinds: `sd` (AsukaPipeline), `sd-backbone` (diffusers' StableDiffusionInpaintPipeline on the same weights),
    `flux` (AsukaFluxPipeline), `flux-backbone` (diffusers' FluxFillPipeline), `strdiffusion`.
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown tiny pipeline kind {kind!r}; expected one of {sorted(_KINDS)}.")
    module_name, function_name = _KINDS[kind]
    return getattr(importlib.import_module(module_name), function_name)(seed=seed, **kwargs)
