"""Model components (all `ModelMixin, ConfigMixin`)."""

from .aligner import AsukaAligner, AsukaAlignerOutput
from .decoder import AsukaDecoder
from .mae import AsukaMAE

__all__ = ["AsukaAligner", "AsukaAlignerOutput", "AsukaDecoder", "AsukaMAE"]
