"""Tiny random StrDiffusionPipeline for tests and the app's `--tiny` mode."""

from typing import Any

import torch

from asuka.models.strdiffusion import StrDiffusionDiscriminator, StrDiffusionUNet
from asuka.pipelines.pipeline_strdiffusion import StrDiffusionPipeline
from asuka.schedulers.ir_sde import IRSDEScheduler


TINY_UNET = dict(base_channels=4, depth=2, spade_hidden_channels=4, attention_heads=1, attention_head_dim=4)


def make_tiny_strdiffusion_pipeline(
    seed: int = 0, num_train_timesteps: int = 10, **kwargs: Any
) -> StrDiffusionPipeline:
    """StrDiffusionPipeline with tiny seeded networks (T=10, working resolution 16 unless overridden).

    `kwargs` override pipeline config entries (e.g. `resolution=None`, quirk flags)."""
    torch.manual_seed(seed)
    texture = StrDiffusionUNet(in_channels=3, structure_channels=1, **TINY_UNET).eval()
    structure = StrDiffusionUNet(in_channels=1, structure_channels=0, **TINY_UNET).eval()
    discriminator = StrDiffusionDiscriminator(base_channels=4, t_emb_dim=16).eval()
    kwargs.setdefault("resolution", 16)
    pipe = StrDiffusionPipeline(
        texture_unet=texture,
        structure_unet=structure,
        discriminator=discriminator,
        scheduler=IRSDEScheduler(num_train_timesteps=num_train_timesteps),
        **kwargs,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
