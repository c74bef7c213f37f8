"""The tiny `AsukaMAE` configuration shared by every tiny pipeline and the MAE tests."""

from asuka.models import AsukaMAE


#: 32² input, 8² patches (16 tokens), two encoder and two decoder blocks; the prior is taken after decoder block 1.
TINY_MAE_CONFIG = dict(
    image_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    decoder_embed_dim=32,
    decoder_depth=2,
    decoder_num_heads=2,
    prior_layer=1,
)


def make_tiny_mae(**overrides) -> AsukaMAE:
    """A tiny random `AsukaMAE` (seed it with `torch.manual_seed` first); keyword arguments replace config values."""
    return AsukaMAE(**{**TINY_MAE_CONFIG, **overrides})
