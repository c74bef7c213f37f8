"""Running a plain diffusers backbone (SD-1.5 / FLUX.1-Fill inpainting) with the ASUKA pipelines' working-size rule.

The baselines must see exactly what the ASUKA pipeline they are compared with sees: the whole image when it fits
the working resolution, otherwise a crop around the hole; scaled so the long side is the working resolution (unless
it already has a valid size), and the result pasted back so that, with `keep_unmasked`, only the hole changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from asuka.methods.running import InpaintRequest, InpaintResult, ProgressCallback, seeded_generator, step_callback


def run_baseline(
    pipeline: Any,
    request: InpaintRequest,
    progress: ProgressCallback | None,
    *,
    prompt: dict[str, Any],
    working_resolution: int,
    multiple: int,
) -> InpaintResult:
    """Inpaint `request` with the diffusers inpainting `pipeline` on the working region the ASUKA pipelines
    would use.

    `prompt` holds the pipeline's prompt arguments (an empty prompt, or embeddings standing in for it);
    `multiple` is the side multiple the backbone needs (the VAE's scale factor, times 2 for FLUX's packing).
    `request.guidance_scale` is set ([`asuka.methods.run_method`] fills in the method's default).
    """
    # Imported here so that listing the methods does not import diffusers' pipelines.
    from asuka.pipelines.inpaint_steps import (
        cut_working_region,
        paste_from_working,
        standardise_inputs,
        to_output_type,
    )

    image, hole = standardise_inputs(request.image, request.mask)
    if not hole.any():  # nothing to inpaint: the input, as the ASUKA pipelines return it
        return InpaintResult(image=to_output_type(image, "pil")[0])
    region, work_image, work_hole = cut_working_region(image, hole, working_resolution, multiple)
    work_mask = Image.fromarray((work_hole[0, 0].numpy() * 255).astype(np.uint8), mode="L")
    width, height = region.size
    generated = pipeline(
        **prompt,
        image=to_output_type(work_image, "pil")[0],
        mask_image=work_mask,
        height=height,
        width=width,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        generator=seeded_generator(request.seed),
        output_type="pt",
        callback_on_step_end=step_callback(progress, request.steps),
        callback_on_step_end_tensor_inputs=[],  # progress needs only the step index
    ).images
    result = paste_from_working(generated.float().cpu(), image, hole, region, request.keep_unmasked)
    return InpaintResult(image=to_output_type(result, "pil")[0])
