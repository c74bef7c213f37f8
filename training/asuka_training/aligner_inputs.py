"""The aligner step's inputs of one batch, encoded on the fly or read from precomputed samples.

Per (image, mask) pair the aligner step needs the VAE latents of the image and of the masked image, the mask, and
the frozen MAE's prior: of the masked image, or, with the reconstructed-prior probability p, of the whole image.
`EncodedInputs` computes them from a batch's pixels; `StoredInputs` reads what `training/prepare_aligner_inputs.py`
stored (`precomputed.PrecomputedDataset`): each VAE posterior's mean and standard deviation, not one sample, and
both priors. `aligner_batch` draws from either in one order (image latents, masked-image latents, which samples take
the whole-image prior), each latent as `mean + std * randn` from the global generator, as diffusers'
`latent_dist.sample()` draws it, so a run from stored samples equals the run that encodes on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


# The stored fields of one sample: the two VAE posteriors and the two MAE priors.
POSTERIOR_FIELDS = ("latent_mean", "latent_std", "masked_latent_mean", "masked_latent_std")
PRIOR_FIELDS = ("prior", "prior_full")


def masked_image_encoder_of(folder: str) -> torch.nn.Module | None:
    """The pipeline folder's own encoder of the masked image (`masked_image_encoder/`, an `AsukaVAEEncoder`, as the
    ASUKA-FLUX release has and `AsukaFluxPipeline` uses), or None: the VAE encodes it."""
    if not Path(folder, "masked_image_encoder", "config.json").is_file():
        return None
    from asuka.models import AsukaVAEEncoder

    return AsukaVAEEncoder.from_pretrained(folder, subfolder="masked_image_encoder")


def vae_posteriors(
    vae: torch.nn.Module,
    pixels: torch.Tensor,
    mask: torch.Tensor,
    masked_image_encoder: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Mean and standard deviation of the VAE posterior of `pixels` (B, 3, R, R) in [0, 1] and of the masked image
    (the hole, `mask` > 0.5, set to 0 in [-1, 1]; encoded by `masked_image_encoder` where given):
    `POSTERIOR_FIELDS`, unscaled."""
    image = pixels * 2 - 1
    posteriors = {}
    for name, inputs, encoder in (
        ("latent", image, vae),
        ("masked_latent", image * (mask < 0.5), masked_image_encoder or vae),
    ):
        distribution = encoder.encode(inputs).latent_dist
        posteriors[f"{name}_mean"], posteriors[f"{name}_std"] = distribution.mean, distribution.std
    return posteriors


def mae_priors(mae: torch.nn.Module, pixels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The MAE prior of the masked image ("prior") and of the whole image ("prior_full", the reconstructed prior)."""
    return {"prior": mae.prior(pixels, mask), "prior_full": mae.prior(pixels, torch.zeros_like(mask))}


def sample_latents(vae_config: Any, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A latent drawn from the posterior (mean, std) as diffusers' `latent_dist.sample()` draws it (`mean + std *
    randn` from the global generator), shifted and scaled by the VAE config for the denoiser, in the memory format
    of `mean` (noise drawn like it, `randn_like`, falls in that order)."""
    from diffusers.utils.torch_utils import randn_tensor

    sample = mean + std * randn_tensor(shape=mean.shape, generator=None, device=mean.device, dtype=mean.dtype)
    shift = getattr(vae_config, "shift_factor", None) or 0.0
    return (sample - shift) * vae_config.scaling_factor


class EncodedInputs:
    """The inputs computed from the batch's "pixel_values" and "mask" by the frozen VAE (and masked-image encoder)
    and MAE, on `device` in `dtype`."""

    def __init__(
        self,
        vae: torch.nn.Module,
        mae: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        masked_image_encoder: torch.nn.Module | None = None,
    ) -> None:
        self.vae, self.mae, self.device, self.dtype = vae, mae, device, dtype
        self.masked_image_encoder = masked_image_encoder

    def _pixels_and_mask(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(batch[name].to(self.device, self.dtype) for name in ("pixel_values", "mask"))

    def posteriors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return vae_posteriors(self.vae, *self._pixels_and_mask(batch), self.masked_image_encoder)

    def prior(self, batch: dict[str, torch.Tensor], use_full_image: torch.Tensor) -> torch.Tensor:
        """One MAE call: the samples of `use_full_image` see no hole."""
        pixels, mask = self._pixels_and_mask(batch)
        return self.mae.prior(pixels, mask * (~use_full_image).to(mask.dtype).view(-1, 1, 1, 1))


def latent_memory_format(vae: torch.nn.Module, batch_size: int, height: int, width: int) -> torch.memory_format:
    """The memory format of the posterior the VAE gives for a batch of `batch_size` images of `height` x `width`,
    on its device in its dtype: channels-last where its attention block's reshape leaves the convolutions so, which
    depends on the batch size (one image: contiguous)."""
    image = torch.zeros(batch_size, 3, height, width, device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        like = torch.empty_like(vae.encode(image).latent_dist.mean)  # the layout an element-wise result takes
    if not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class StoredInputs:
    """The inputs read from a batch of precomputed samples (`POSTERIOR_FIELDS`, `PRIOR_FIELDS`, "mask"), moved to
    `device` in `dtype`.

    With the frozen `vae`, the posteriors take the memory format of its own for the batch's shape
    (`latent_memory_format`, probed once per shape), so the noise drawn like the latents (`randn_like`) falls as in
    the run that encodes them.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, vae: torch.nn.Module | None = None) -> None:
        self.device, self.dtype, self.vae = device, dtype, vae
        self.memory_formats: dict[tuple[int, ...], torch.memory_format] = {}

    def memory_format(self, batch_size: int, height: int, width: int) -> torch.memory_format:
        if self.vae is None:
            return torch.contiguous_format
        shape = (batch_size, height, width)
        if shape not in self.memory_formats:
            self.memory_formats[shape] = latent_memory_format(self.vae, *shape)
        return self.memory_formats[shape]

    def posteriors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        layout = self.memory_format(len(batch["mask"]), *batch["mask"].shape[-2:])
        return {name: batch[name].to(self.device, self.dtype, memory_format=layout) for name in POSTERIOR_FIELDS}

    def prior(self, batch: dict[str, torch.Tensor], use_full_image: torch.Tensor) -> torch.Tensor:
        full, masked = (batch[name].to(self.device, self.dtype) for name in ("prior_full", "prior"))
        return torch.where(use_full_image.to(self.device).view(-1, 1, 1), full, masked)


@dataclass
class AlignerBatch:
    """What the aligner step of one batch consumes: scaled latents of the image and of the masked image, the pixel
    mask (B, 1, R, R; 1 = hole), the MAE prior and which samples took the whole-image prior."""

    latents: torch.Tensor
    masked_latents: torch.Tensor
    mask: torch.Tensor
    prior: torch.Tensor
    use_full_image: torch.Tensor


@torch.no_grad()
def aligner_batch(
    source: EncodedInputs | StoredInputs, batch: dict[str, torch.Tensor], vae_config: Any, p: float
) -> AlignerBatch:
    """The aligner step's inputs from `source`; with probability `p` a sample takes the reconstructed prior.

    The random draws come in one order for both sources: the image latents, the masked-image latents, then the
    whole-image choice.
    """
    posteriors = source.posteriors(batch)
    latents = sample_latents(vae_config, posteriors["latent_mean"], posteriors["latent_std"])
    masked_latents = sample_latents(vae_config, posteriors["masked_latent_mean"], posteriors["masked_latent_std"])
    use_full_image = torch.rand(latents.shape[0], device=latents.device) < p
    mask = batch["mask"].to(latents.device, latents.dtype)
    return AlignerBatch(latents, masked_latents, mask, source.prior(batch, use_full_image), use_full_image)
