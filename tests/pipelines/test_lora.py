"""LoRAs on both ASUKA pipelines through diffusers' loaders: a tiny peft LoRA saved with `save_lora_weights` loads,
changes the output as the same adapter applied by peft itself does, fuses to the same output, and unloads to the
base output exactly."""

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from asuka import AsukaFluxPipeline, AsukaPipeline
from asuka.methods import seeded_generator
from asuka.testing import make_tiny_pipeline
from tests.support.inputs import box_mask, random_image
from tests.support.lora import CASES, save_tiny_lora


def run(pipe) -> np.ndarray:
    return pipe(
        random_image(32, 48),
        box_mask(32, 48, rows=(8, 20), cols=(16, 32)),
        num_inference_steps=2,
        generator=seeded_generator(0),
        output_type="np",
        keep_unmasked=False,
    ).images


@pytest.mark.parametrize("kind", list(CASES))
def test_lora_loads_changes_fuses_and_unloads(kind, tmp_path):
    pipe = make_tiny_pipeline(kind, seed=0)
    assert isinstance(pipe, AsukaFluxPipeline if kind == "flux" else AsukaPipeline)
    base = run(pipe)
    adapted = save_tiny_lora(pipe, kind, tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()

    reference = copy.deepcopy(pipe)  # the same pipeline with peft's own adapted denoiser
    setattr(reference, CASES[kind][0], adapted)
    expected = run(reference)

    pipe.load_lora_weights(tmp_path, weight_name="pytorch_lora_weights.safetensors", adapter_name="tiny")
    assert pipe.get_active_adapters() == ["tiny"]
    unfused = run(pipe)
    assert np.abs(unfused - base).max() > 1e-3  # the LoRA changes the output
    np.testing.assert_allclose(unfused, expected, atol=1e-5)

    pipe.set_adapters(["tiny"], [0.5])
    half = run(pipe)
    assert np.abs(half - base).max() > 1e-4 and np.abs(half - unfused).max() > 1e-4
    pipe.unload_lora_weights()  # the base weights were never touched
    np.testing.assert_array_equal(run(pipe), base)

    pipe.load_lora_weights(tmp_path, adapter_name="tiny")
    pipe.fuse_lora(lora_scale=1.0)
    np.testing.assert_allclose(run(pipe), unfused, atol=1e-5)
    pipe.unfuse_lora()  # W + BA - BA: equal up to rounding
    np.testing.assert_allclose(run(pipe), unfused, atol=1e-5)
    pipe.unload_lora_weights()
    np.testing.assert_allclose(run(pipe), base, atol=1e-5)


@pytest.mark.parametrize("kind", list(CASES))
def test_text_encoder_layers_of_a_lora_are_skipped_with_a_warning(kind, tmp_path, caplog):
    """A LoRA that also trained CLIP (a state dict in memory, read as a file is): ASUKA has no text encoder, so its
    denoiser layers load as without them and the rest is named in a warning."""
    pipe = make_tiny_pipeline(kind, seed=0)
    save_tiny_lora(pipe, kind, tmp_path)
    state_dict = type(pipe).lora_state_dict(tmp_path / "pytorch_lora_weights.safetensors")
    state_dict = state_dict[0] if isinstance(state_dict, tuple) else state_dict
    pipe.load_lora_weights(dict(state_dict), adapter_name="denoiser_only")
    expected = run(pipe)
    pipe.unload_lora_weights()

    clip_layer = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    with_clip = {
        **state_dict,
        f"{clip_layer}.lora_A.weight": torch.ones(4, 32),
        f"{clip_layer}.lora_B.weight": torch.ones(32, 4),
    }
    with caplog.at_level("WARNING"):
        pipe.load_lora_weights(with_clip, adapter_name="with_clip")
    assert "has no text encoder" in caplog.text and "2 text_encoder weights" in caplog.text
    np.testing.assert_array_equal(run(pipe), expected)


def test_flux_lora_in_kohya_format_lands_on_the_diffusers_layer(tmp_path):
    """A kohya-format FLUX LoRA (`lora_unet_double_blocks_0_img_attn_proj`, with its alpha), read by diffusers'
    conversion: fused, it adds up @ down * alpha / rank to the first block's attention output projection."""
    import safetensors.torch

    pipe = make_tiny_pipeline("flux", seed=0)
    layer = pipe.transformer.transformer_blocks[0].attn.to_out[0]
    before = layer.weight.detach().clone()
    generator = torch.Generator().manual_seed(0)
    down, up = (
        torch.randn(4, layer.in_features, generator=generator),
        torch.randn(layer.out_features, 4, generator=generator),
    )
    key = "lora_unet_double_blocks_0_img_attn_proj"
    safetensors.torch.save_file(
        {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(2.0)},
        tmp_path / "kohya.safetensors",
    )
    pipe.load_lora_weights(tmp_path / "kohya.safetensors", adapter_name="kohya")
    pipe.fuse_lora()
    torch.testing.assert_close(pipe.transformer.transformer_blocks[0].attn.to_out[0].weight - before, up @ down * 0.5)


def test_a_flux_dev_lora_on_the_image_embedder_is_zero_padded_to_fill_channels(tmp_path):
    """LoRAs trained on FLUX.1-dev (a turbo LoRA) adapt `x_embedder` on 64 input channels; FLUX.1-Fill's takes 384
    (noise + masked image + mask), so diffusers pads the LoRA's down projection with zeros: the extra channels
    (ASUKA's masked-image latents and mask) pass through the adapter untouched."""
    pipe = make_tiny_pipeline("flux", seed=0)
    dev_config = {**pipe.transformer.config, "in_channels": 64, "out_channels": 64}
    dev = type(pipe.transformer).from_config(dev_config)
    torch.manual_seed(4)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["x_embedder", "to_q"], init_lora_weights=False)
    dev.add_adapter(config)
    state = get_peft_model_state_dict(dev)
    AsukaFluxPipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=state, transformer_lora_adapter_metadata=config.to_dict()
    )
    base = run(pipe)
    pipe.load_lora_weights(tmp_path, adapter_name="dev")
    down = pipe.transformer.x_embedder.lora_A["dev"].weight
    assert down.shape[1] == pipe.transformer.config.in_channels == 384
    torch.testing.assert_close(down[:, :64], state["x_embedder.lora_A.weight"])
    assert not down[:, 64:].any()
    assert np.abs(run(pipe) - base).max() > 1e-3
