"""Pipelines (all `DiffusionPipeline`)."""

from .pipeline_asuka import AsukaPipeline
from .pipeline_asuka_flux import AsukaFluxPipeline
from .pipeline_strdiffusion import StrDiffusionPipeline, StrDiffusionPipelineOutput


__all__ = ["AsukaPipeline", "AsukaFluxPipeline", "StrDiffusionPipeline", "StrDiffusionPipelineOutput"]
