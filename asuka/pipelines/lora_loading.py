# Copyright 2026 The asuka authors. Apache-2.0.
"""What diffusers' LoRA loaders need on a pipeline without text encoders.

`FluxLoraLoaderMixin` and `StableDiffusionLoraLoaderMixin` load a LoRA's denoiser layers and then its text-encoder
layers into `pipe.text_encoder`. ASUKA replaces the text encoders by the aligned MAE prior, so a pipeline has none:
the text-encoder layers of a LoRA file (many FLUX and SD LoRAs train CLIP too) are skipped with a warning, and the
denoiser's are loaded as diffusers loads them.

This module ships to the Hub as remote code next to the pipelines, so it imports only diffusers.
"""

from typing import Any

from diffusers.utils import logging


logger = logging.get_logger(name=__name__)


class TextEncoderFreeLoraMixin:
    """Listed before diffusers' LoRA loader in a pipeline's bases (its `text_encoder` is None: skipped)."""

    text_encoder = None  # what the loaders read; ASUKA's conditioning has no text encoder

    @classmethod
    def load_lora_into_text_encoder(
        cls, state_dict: dict, network_alphas: dict | None, text_encoder: Any, prefix: str | None = None, **kwargs
    ) -> None:
        """diffusers' loader when there is a text encoder; without one, skip (with a warning) the text-encoder
        layers that `state_dict` holds."""
        if text_encoder is not None:
            super().load_lora_into_text_encoder(state_dict, network_alphas, text_encoder, prefix=prefix, **kwargs)
            return
        prefix = cls.text_encoder_name if prefix is None else prefix
        skipped = [key for key in state_dict if key.startswith(f"{prefix}.")]
        if skipped:
            logger.warning(
                f"{cls.__name__} has no text encoder (ASUKA conditions on the image): the LoRA's {len(skipped)} "
                f"{prefix} weights are not loaded, only its denoiser's."
            )
