"""Pipelines (all `DiffusionPipeline`)."""

from .pipeline_asuka import AsukaPipeline

__all__ = ["AsukaPipeline"]
