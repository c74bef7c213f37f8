"""Model components (all `ModelMixin, ConfigMixin`)."""

from .aligner import AsukaAligner, AsukaAlignerOutput
from .decoder import AsukaDecoder
from .discriminator import PatchDiscriminator
from .mae import AsukaMAE
from .strdiffusion import StrDiffusionDiscriminator, StrDiffusionUNet
from .vae_encoder import AsukaVAEEncoder


__all__ = [
    "AsukaAligner",
    "AsukaAlignerOutput",
    "AsukaDecoder",
    "AsukaMAE",
    "AsukaVAEEncoder",
    "PatchDiscriminator",
    "StrDiffusionDiscriminator",
    "StrDiffusionUNet",
]
