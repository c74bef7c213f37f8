"""Running a plain diffusers backbone (SD-1.5 / FLUX.1-Fill inpainting) with the ASUKA pipelines' working-size rule.

The baselines must see exactly what the ASUKA pipeline they are compared with sees: the whole image when it fits
the working resolution, otherwise a crop around the hole; scaled so the long side is the working resolution (unless
it already has a valid size), and the result pasted back so that, with ``keep_unmasked``, only the hole changes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from asuka.methods.registry import InpaintRequest, InpaintResult


#: ``generate(image, mask, width, height)``: the backbone's output for a working-size image and ``L`` mask,
#: as a (1, 3, height, width) tensor in [0, 1].
Generate = Callable[[Image.Image, Image.Image, int, int], torch.Tensor]


def run_baseline(generate: Generate, request: InpaintRequest, working_resolution: int, multiple: int) -> InpaintResult:
    """Inpaint ``request`` with ``generate`` on the working region the ASUKA pipelines would use.

    ``multiple`` is the side multiple the backbone needs (the VAE's scale factor, times 2 for FLUX's packing).
    """
    # Imported here so that listing the methods does not import diffusers' pipelines.
    from asuka.pipelines.inpaint_steps import (
        crop_to_working,
        paste_from_working,
        plan_working_region,
        standardise_inputs,
        to_output_type,
    )

    image, hole = standardise_inputs(request.image, request.mask)
    if not hole.any():  # nothing to inpaint: the input, as the ASUKA pipelines return it
        return InpaintResult(image=to_output_type(image, "pil")[0])
    region = plan_working_region(hole, working_resolution, multiple)
    work_image, work_hole = crop_to_working(image, hole, region)
    work_mask = Image.fromarray((work_hole[0, 0].numpy() * 255).astype(np.uint8), mode="L")
    generated = generate(to_output_type(work_image, "pil")[0], work_mask, *region.size)
    result = paste_from_working(generated.float().cpu(), image, hole, region, request.keep_unmasked)
    return InpaintResult(image=to_output_type(result, "pil")[0])
