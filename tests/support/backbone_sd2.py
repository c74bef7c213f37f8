"""A throwaway third backbone that walks docs/architecture.md's "Adding a backbone": SD-2-inpainting's shapes.

SD-2-inpainting has SD-1.5's architecture (a 9-channel `UNet2DConditionModel` under `AsukaPipeline`) with a
1024-wide OpenCLIP context, linear attention projections and, here, v-prediction. Its spec is SD-1.5's with its
own name, repo, licence and tiny factory; everything else the seam reads from its components' configs. Importing
this module registers it (the contract tests run on it; tests/pipelines/test_backbone_sd2.py trains and exports it).
"""

import dataclasses

from asuka.pipelines import AsukaPipeline
from asuka.pipelines.backbones import SD15_INPAINTING, Licence, register_backbone
from asuka.testing.sd import make_tiny_sd_components, make_tiny_sd_pipeline


# OpenCLIP ViT-H's width, the cross-attention context of SD-2's UNet.
CONTEXT_WIDTH = 1024
SD2_REPO = "stabilityai/stable-diffusion-2-inpainting"

SD2_INPAINTING = register_backbone(
    dataclasses.replace(
        SD15_INPAINTING,
        name="sd-2-inpainting",
        repo=SD2_REPO,
        licence=Licence(
            "openrail++",
            "CreativeML Open RAIL++-M",
            f"https://huggingface.co/{SD2_REPO}/blob/main/LICENSE-MODEL",
        ),
        tiny_factory="tests.support.backbone_sd2:make_tiny_sd2_pipeline",
    )
)


def make_tiny_sd2_components(seed: int = 0) -> dict:
    """Tiny SD-2-inpainting components: a 1024-wide context, linear projections, v-prediction."""
    return make_tiny_sd_components(
        seed,
        context_width=CONTEXT_WIDTH,
        prediction_type="v_prediction",
        use_linear_projection=True,
        attention_head_dim=(2, 4),
    )


def make_tiny_sd2_pipeline(seed: int = 0, **overrides) -> AsukaPipeline:
    """A complete tiny `AsukaPipeline` on the SD-2 components; keyword arguments replace components."""
    return make_tiny_sd_pipeline(seed, **{**make_tiny_sd2_components(seed), **overrides})
