"""The tiny `AsukaMAE` configuration shared by every tiny pipeline and the MAE tests."""

from asuka.models import AsukaMAE


# 32² input, 8² patches (16 tokens); the encoder and the decoder alike have two blocks of width 32 with two heads;
# the prior is taken after decoder block 1.
_BLOCKS = dict(embed_dim=32, depth=2, num_heads=2)
TINY_MAE_CONFIG = dict(
    image_size=32,
    patch_size=8,
    prior_layer=1,
    **_BLOCKS,
    **{f"decoder_{key}": value for key, value in _BLOCKS.items()},
)


def make_tiny_mae(**overrides) -> AsukaMAE:
    """A tiny random `AsukaMAE` (seed it with `torch.manual_seed` first); keyword arguments replace config values."""
    return AsukaMAE(**{**TINY_MAE_CONFIG, **overrides})
