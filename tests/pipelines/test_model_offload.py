"""`enable_model_cpu_offload` on the ASUKA pipelines: every model in `model_cpu_offload_seq` is hooked and runs in
the sequence's order, the MAE included (its `prior` call goes through a forward hook), and the result is unchanged."""

import numpy as np
import pytest
import torch

from asuka.methods import seeded_generator
from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask_array, random_array


def _inputs(size: int = 64):
    return random_array(size, size), box_mask_array(
        size, size, rows=(size // 4, size // 2 + 8), cols=(size // 4, size // 2 + 8)
    )


@pytest.mark.parametrize("kind, extra", [("sd", {}), ("flux", {"with_masked_image_encoder": True})])
def test_model_cpu_offload_moves_every_component_in_order_including_the_mae(kind, extra):
    """enable_model_cpu_offload needs an accelerator in practice; with device="cpu" accelerate installs the same
    hooks, so we can check that every offloaded component's hook fires, in the sequence's order, and that the MAE's
    fires too although the pipeline calls `mae.prior`, not `forward` (this needs `apply_forward_hook`; so does the
    FLUX masked-image encoder's `encode`)."""
    image, mask = _inputs()
    kwargs = dict(num_inference_steps=2, output_type="np")
    reference = make_tiny_pipeline(kind, **extra)(image, mask, generator=seeded_generator(0), **kwargs).images
    pipe = make_tiny_pipeline(kind, **extra)
    pipe.enable_model_cpu_offload(device="cpu")
    sequence = pipe.model_cpu_offload_seq.split("->")
    modules = {name for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    assert set(sequence) == modules  # every model is offloaded, and only models
    calls = []
    for name in sequence:
        hook = getattr(pipe, name)._hf_hook
        original = hook.pre_forward

        def spy(module, *args, _name=name, _original=original, **kw):
            calls.append(_name)
            return _original(module, *args, **kw)

        hook.pre_forward = spy
    out = pipe(image, mask, generator=seeded_generator(0), **kwargs).images
    first_calls = list(dict.fromkeys(calls))
    assert first_calls == sequence
    np.testing.assert_array_equal(out, reference)
