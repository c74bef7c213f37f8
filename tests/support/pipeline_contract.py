"""Shared cases for the diffusers-contract tests (tests/pipelines/test_contract_*.py): one entry per public pipeline
and per backbone.

Each case names the tiny pipeline kind (and the backbone, for a second backbone of one pipeline class), a test
image size the tiny pipeline runs at without resizing, a step count that keeps the run well under a second, and the
call arguments diffusers' pipeline tests require of it.
"""

from dataclasses import dataclass

import PIL.Image

from asuka.methods import seeded_generator
from asuka.testing import make_tiny_pipeline
from tests.support.backbone_sd2 import SD2_INPAINTING
from tests.support.inputs import box_mask, random_image


# The optional `__call__` arguments diffusers' `PipelineTesterMixin` requires of every pipeline
# (`required_optional_params`), and the step-callback pair without which its callback tests do not run.
REQUIRED_OPTIONAL_PARAMS = frozenset(
    [
        "num_inference_steps",
        "num_images_per_prompt",
        "generator",
        "latents",
        "output_type",
        "return_dict",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
    ]
)


@dataclass(frozen=True)
class Case:
    kind: str
    size: tuple[int, int]  # (width, height) of the test images
    steps: int
    # What diffusers' tests of the matching pipeline require `__call__` to take (`params`) and to take one entry per
    # input of (`batch_params`), less `prompt` / `negative_prompt` (no text encoder: the conditioning is built in) and
    # `height` / `width` (the output has the input's size).
    params: frozenset[str]
    batch_params: frozenset[str] = frozenset(["image", "mask_image"])
    # The registered backbone whose tiny pipeline runs (`asuka.testing.make_tiny_pipeline`), when not the kind's.
    backbone: str | None = None

    def __str__(self) -> str:
        return self.backbone or self.kind


# StableDiffusionInpaintPipeline's test sets (TEXT_GUIDED_IMAGE_INPAINTING_PARAMS / _BATCH_PARAMS).
SD_PARAMS = frozenset(["image", "mask_image", "guidance_scale", "prompt_embeds", "negative_prompt_embeds"])

CASES = [
    Case("sd", (64, 48), 2, params=SD_PARAMS),
    # FluxFillPipeline's, whose test passes `image` and `mask_image` without listing them (its batch set is `prompt`).
    Case(
        "flux",
        (48, 32),
        2,
        params=frozenset(["image", "mask_image", "guidance_scale", "prompt_embeds", "pooled_prompt_embeds"]),
    ),
    # The text-free inpainting sets (IMAGE_INPAINTING_PARAMS / _BATCH_PARAMS), less `guidance_scale` too: StrDiffusion
    # has no guidance to scale (its structure guidance is built in).
    Case("strdiffusion", (16, 16), 3, params=frozenset(["image", "mask_image"])),
    # The throwaway third backbone of docs/architecture.md's "Adding a backbone" (tests/support/backbone_sd2.py): SD's
    # pipeline on SD-2-inpainting's shapes.
    Case("sd", (64, 48), 2, params=SD_PARAMS, backbone=SD2_INPAINTING.name),
]


def make_pipe(case: Case):
    return make_tiny_pipeline(case.backbone or case.kind)


def make_image(case: Case, seed: int = 0) -> PIL.Image.Image:
    width, height = case.size
    return random_image(height, width, seed)


def make_mask(case: Case, shift: int = 0) -> PIL.Image.Image:
    """A white rectangle in the middle (moved right by `shift` pixels) on black."""
    width, height = case.size
    return box_mask(height, width, rows=(height // 4, 3 * height // 4), cols=(width // 4 + shift, width // 2 + shift))


def run(pipe, case: Case, image=None, mask=None, **kwargs):
    """One call with the case's defaults (its image, mask, step count, seed 0, numpy output)."""
    kwargs.setdefault("num_inference_steps", case.steps)
    kwargs.setdefault("output_type", "np")
    if "generator" not in kwargs:
        kwargs["generator"] = seeded_generator(0)
    image = make_image(case) if image is None else image
    mask = make_mask(case) if mask is None else mask
    return pipe(image, mask, **kwargs).images
