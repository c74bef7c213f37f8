"""Tiny random pipelines for tests, the app's `--tiny` mode and benchmark smoke runs.

`make_tiny_pipeline(kind)` dispatches to `asuka.testing.<module>.make_tiny_<name>_pipeline`, so each pipeline
family keeps its tiny components next to the others without a central list of configs. The tiny ASUKA pipeline of
a backbone is the one its `BackboneSpec.tiny_factory` names (`asuka.pipelines.backbones`), so a registered
backbone's name is a kind too.
"""

import importlib
from typing import Any


# The short kinds of the built-in backbones' tiny ASUKA pipelines: backbone names.
_BACKBONE_KINDS = {"sd": "sd-1.5-inpainting", "flux": "flux.1-fill"}
_KINDS = {
    "sd-backbone": "asuka.testing.sd:make_tiny_sd_backbone_pipeline",
    "flux-backbone": "asuka.testing.flux:make_tiny_flux_backbone_pipeline",
    "strdiffusion": "asuka.testing.strdiffusion:make_tiny_strdiffusion_pipeline",
}


def make_tiny_pipeline(kind: str = "sd", seed: int = 0, **kwargs: Any):
    """Build a complete pipeline of `kind` with tiny random components (well under a second on CPU).

    Kinds: `sd` (AsukaPipeline), `sd-backbone` (diffusers' StableDiffusionInpaintPipeline on the same weights),
    `flux` (AsukaFluxPipeline), `flux-backbone` (diffusers' FluxFillPipeline), `strdiffusion`, and the name of any
    registered backbone with a tiny factory.
    """
    from asuka.pipelines.backbones import backbone_names, get_backbone

    factory = _KINDS.get(kind)
    if factory is None and _BACKBONE_KINDS.get(kind, kind) in backbone_names():
        factory = get_backbone(_BACKBONE_KINDS.get(kind, kind)).tiny_factory
    if factory is None:
        raise ValueError(
            f"Unknown tiny pipeline kind {kind!r}; expected one of {sorted({*_KINDS, *_BACKBONE_KINDS})} or a "
            f"backbone with a tiny factory ({backbone_names()})."
        )
    module_name, function_name = factory.split(":")
    return getattr(importlib.import_module(module_name), function_name)(seed=seed, **kwargs)
