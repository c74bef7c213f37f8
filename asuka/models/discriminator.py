"""Discriminators used as adversarial critics during training.

This module ships to the Hub as remote code: it imports only torch and diffusers.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class PatchDiscriminator(ModelMixin, ConfigMixin):
    """A PatchGAN-style discriminator (strided convs, one logit per patch), as used in LDM VAE training.

    `training/train_decoder.py --discriminator_weight` trains it next to the `AsukaDecoder` (hinge loss).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for index in range(1, num_layers + 1):
            out_channels = base_channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride, 1),
                nn.GroupNorm(min(32, out_channels // 4), out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image in [-1, 1] -> (B, 1, h, w) real/fake logits, one per patch."""
        return self.layers(image)
