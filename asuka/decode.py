"""ASUKA's mask-conditioned decoder as a drop-in for any latent inpainting pipeline: `decode_with_asuka_decoder`.

The documented import path (docs/flux.md); the code lives beside the pipelines' own decode step, in
`asuka/pipelines/decode.py`, so that one function unpacks, unscales and decodes for all of them.
"""

from asuka.pipelines.decode import decode_with_asuka_decoder


__all__ = ["decode_with_asuka_decoder"]
