"""A tiny peft LoRA on a tiny pipeline's denoiser, saved as trainers save one (for the LoRA tests)."""

import copy

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict


# kind: (denoiser, the projections the LoRA adapts)
CASES = {
    "flux": ("transformer", ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "ff.net.2"]),
    "sd": ("unet", ["to_q", "to_k", "to_v", "to_out.0"]),
}


def save_tiny_lora(pipe, kind: str, folder) -> torch.nn.Module:
    """A random rank-4 peft LoRA on a copy of `pipe`'s denoiser, saved with the pipeline class's `save_lora_weights`
    into `folder`; returns the copy, the adapter active (the reference)."""
    denoiser_name, targets = CASES[kind]
    adapted = copy.deepcopy(getattr(pipe, denoiser_name))
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    adapted.add_adapter(config)
    type(pipe).save_lora_weights(
        folder,
        **{
            f"{denoiser_name}_lora_layers": get_peft_model_state_dict(adapted),
            f"{denoiser_name}_lora_adapter_metadata": config.to_dict(),  # its alpha, as trainers save it
        },
    )
    return adapted
