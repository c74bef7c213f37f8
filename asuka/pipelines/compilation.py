# Copyright 2026 The asuka authors. Apache-2.0.
"""torch.compile for the ASUKA pipelines.

The denoiser is compiled block by block with diffusers' `compile_repeated_blocks` (FLUX: its double- and
single-stream blocks; the SD UNet: its `BasicTransformerBlock`s), so one compiled block serves every copy; the MAE,
the aligners and the decoder are compiled whole. Every graph is full (`fullgraph=True`: no graph break; the
decoder's hole box, which depends on the mask's values, is the whole map under compile) and does not recompile
across the steps of a call or across calls at one working size; a new working size recompiles once, after which
dynamo's automatic dynamic shapes serve every further size. diffusers' step-cache hooks keep their decisions out of
the graph (`torch.compiler.disable`, data-dependent branches), so a pipeline with a step cache compiles with
`fullgraph=False`: each block is then a few graphs, still without recompiling.

This module ships to the Hub as remote code next to the pipelines, so it imports only torch, numpy and PIL.
"""

from typing import Any

import numpy as np
import PIL.Image
import torch


class CompileMixin:
    """`compile_components` and a `warm_up` call. A pipeline lists the ASUKA modules it compiles whole in
    `compiled_components`."""

    compiled_components: tuple[str, ...] = ()

    def compile_components(self, fullgraph: bool = True, dynamic: bool | None = None, **compile_kwargs: Any) -> list:
        """Compile the denoiser's repeated blocks and the modules of `compiled_components` in place (arguments as
        `torch.compile`'s, e.g. `mode="max-autotune"`); returns the names compiled. Compilation happens at the
        first call (see `warm_up`). With a step cache enabled, `fullgraph` must be False (its hooks break the
        graph)."""
        if fullgraph and self.step_cache_enabled:
            raise ValueError(
                "A step cache's hooks break the graph: compile with `compile_components(fullgraph=False)`, or "
                "call `disable_step_cache()` first."
            )
        self._compiled_fullgraph = fullgraph  # what `enable_step_cache` checks
        kwargs = {"fullgraph": fullgraph, "dynamic": dynamic, **compile_kwargs}
        denoiser = self.backbone_spec.denoiser
        getattr(self, denoiser).compile_repeated_blocks(**kwargs)
        compiled = [f"{denoiser} ({', '.join(getattr(self, denoiser)._repeated_blocks)})"]
        for name in self.compiled_components:
            module = getattr(self, name, None)
            if isinstance(module, torch.nn.Module):
                module.compile(**kwargs)
                compiled.append(name)
        return compiled

    def warm_up(self, width: int, height: int, num_inference_steps: int = 2, **call_kwargs: Any) -> None:
        """One call on a grey `width` x `height` image with a hole in its middle, so that the compilation (and any
        lazy set-up) happens before the first real request at that working size."""
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = 255
        image = PIL.Image.new("RGB", (width, height), (128, 128, 128))
        self(
            image, PIL.Image.fromarray(mask), num_inference_steps=num_inference_steps, output_type="np", **call_kwargs
        )
